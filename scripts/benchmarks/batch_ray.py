"""Batch classification at scale: ``predict --file`` against Ray (1 and 2 actors, and two nodes), side by side.

    nice -n 5 python scripts/benchmarks/batch_ray.py runs/quickstart --tickets 1000000

Writes ``--tickets`` synthetic tickets (data/tickets.csv's subject and body pairs resampled, seeded, each with
a unique id) into ``--files`` CSV files, then classifies all of them four ways, one after another:

- ``--file``: ``ticketclf predict BUNDLE --file F`` for each file in turn (one process on all cores, its JSON
  lines written to a file);
- Ray, 1 actor and 2 actors: ``ticketclf predict BUNDLE --input DIR --output OUT --actors N`` on a local Ray;
- Ray on two nodes: the same with ``--ray``, on a cluster of two 1-CPU nodes on loopback addresses
  (scripts/benchmarks/ray_cluster.py).

For each: wall time (Ray's start included), tickets/s, tickets/s per core given to it (--file: its threads,
one per core; Ray: one per actor), CPU time per 1,000 tickets (user + system of all its processes: on a machine
shared with other work, the measure of efficiency that other work does not change), peak memory (the sum of
the RSS of its processes, sampled every 0.25 s: the command, what it started, and the cluster's nodes; shared
pages such as Ray's object store count once per process), time to the first output (first line; first shard
file), and whether its labels agree with --file's.
Appends the run to docs/benchmarks/runs.jsonl (area "batch-ray").
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import ray_cluster
from common import ROOT, publish, record_arguments, table_figures

from classifier.batch import read_output
from classifier.cpus import usable_cpus

SAMPLE = ROOT / "data" / "tickets.csv"
TICKETCLF = [sys.executable, "-m", "classifier.cli", "predict"]


@dataclass
class Result:
    name: str
    cores: int
    seconds: float
    usage: Usage
    labels: Counter[str]


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="batch-ray-"))
    try:
        inputs = write_tickets(work / "inputs", args.tickets, args.files)
        results = [run_file(args.bundle, inputs, work / "file-output")]
        for actors in (1, 2):
            results.append(run_ray(f"Ray, {actors} actor{'s' * (actors > 1)}", args.bundle, inputs,
                                   work / f"ray-{actors}", actors=actors))
        with ray_cluster.loopback_cluster() as cluster:
            results.append(run_ray("Ray, two loopback nodes (1 CPU each)", args.bundle, inputs, work / "cluster",
                                   actors=2, cluster=cluster))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = table(results, args.tickets)
    scale = results[2].seconds and results[1].seconds / results[2].seconds
    per_core = (args.tickets / results[2].seconds / 2) / (args.tickets / results[0].seconds / results[0].cores)
    per_cpu_second = results[0].usage.cpu_seconds / results[2].usage.cpu_seconds
    body += (f"\n\n2 actors against 1: {scale:.2f}x (target >= 1.7x); Ray at 2 actors per core against --file per "
             f"core: {per_core:.2f} (target >= 0.90); tickets per CPU second, Ray at 2 actors against --file: "
             f"{per_cpu_second:.2f}")
    figures = table_figures(body) | {"speed-up 2 actors over 1 [x]": round(scale, 2),
                                     "Ray per core over --file per core": round(per_core, 3),
                                     "Ray tickets per CPU second over --file's": round(per_cpu_second, 3)}
    publish(args, "batch-ray", body, figures, notes=f"{args.tickets} tickets in {args.files} CSV files; "
            f"bundle {args.bundle}")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="an exported bundle trained on the sample (scripts/quickstart.sh)")
    parser.add_argument("--tickets", type=int, default=1_000_000, help="synthetic tickets to classify")
    parser.add_argument("--files", type=int, default=8, help="CSV files they are written to (each must stay "
                        "under predict --file's 256 MiB)")
    return record_arguments(parser).parse_args()


def write_tickets(folder: Path, count: int, files: int) -> Path:
    """``count`` tickets resampled from the sample's (subject, body) pairs, ids S0000001, ... in ``files`` CSVs."""
    with open(SAMPLE, newline="", encoding="utf-8") as handle:
        pairs = [(row["subject"], row["body"]) for row in csv.DictReader(handle)]
    chosen = random.Random(0).choices(pairs, k=count)
    folder.mkdir(parents=True)
    per_file = -(-count // files)
    for index in range(files):
        with open(folder / f"tickets-{index:02d}.csv", "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["id", "subject", "body"])
            start = index * per_file
            writer.writerows((f"S{number + 1:07d}", *chosen[number]) for number in range(start, min(start + per_file,
                                                                                                     count)))
    return folder


def run_file(bundle: Path, inputs: Path, output: Path) -> Result:
    """``predict --file`` on each file in turn, its JSON lines into ``output``."""
    output.mkdir()
    started = time.perf_counter()
    usage = Usage()
    for path in sorted(inputs.iterdir()):
        lines = output / f"{path.stem}.jsonl"
        with open(lines, "w") as out:
            process = subprocess.Popen([*TICKETCLF, str(bundle), "--file", str(path)], stdout=out, cwd=ROOT)
            seen = watch(process, lambda lines=lines: lines.stat().st_size > 0)
        if process.returncode != 0:
            raise SystemExit(f"predict --file {path} failed ({process.returncode})")
        usage.peak_mib = max(usage.peak_mib, seen.peak_mib)
        usage.first_output_s = usage.first_output_s or seen.first_output_s
        usage.cpu.update(seen.cpu)
    seconds = time.perf_counter() - started
    labels: Counter[str] = Counter()
    for path in output.iterdir():
        with open(path) as records:
            labels.update(json.loads(line)["label"] for line in records)
    return Result("`predict --file`, one process per file", usable_cpus(), seconds, usage, labels)


def run_ray(name: str, bundle: Path, inputs: Path, output: Path, actors: int,
            cluster: ray_cluster.Cluster | None = None) -> Result:
    command = [*TICKETCLF, str(bundle), "--input", str(inputs), "--output", str(output), "--actors", str(actors)]
    command += ["--ray", cluster.address] if cluster else []
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **ray_cluster.ENV}, stdout=subprocess.PIPE,
                               text=True)
    shards = output / "shards"
    usage = watch(process, lambda: shards.is_dir() and any(not p.name.startswith(".") for p in shards.iterdir()),
                  cluster_folder=cluster.folder if cluster else None)
    summary = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise SystemExit(f"{name} failed ({process.returncode})")
    seconds = time.perf_counter() - started
    print(summary, file=sys.stderr)
    return Result(name, actors, seconds, usage, Counter(record["label"] for record in read_output(output)))


@dataclass
class Usage:
    peak_mib: float = 0.0  # the most memory its processes held at once (sum of RSS)
    first_output_s: float = 0.0
    cpu: dict[int, float] = field(default_factory=dict)  # CPU seconds (user + system) of each process, last seen

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


def watch(process: subprocess.Popen, output_seen: Callable[[], bool], cluster_folder: str | None = None) -> Usage:
    """Wait for ``process``, sampling its processes (and the cluster's) every 0.25 s: memory, CPU time (what the
    cluster had used before is not counted), and when ``output_seen()`` first held."""
    started = time.perf_counter()
    usage, done = Usage(), threading.Event()
    before = {pid: cpu for pid, (_, cpu) in family_usage(None, cluster_folder).items()}

    def sample() -> None:
        while not done.is_set():
            seen = family_usage(process.pid, cluster_folder)
            usage.peak_mib = max(usage.peak_mib, sum(rss for rss, _ in seen.values()) / 2**20)
            usage.cpu.update({pid: cpu - before.get(pid, 0.0) for pid, (_, cpu) in seen.items()})
            if not usage.first_output_s and output_seen():
                usage.first_output_s = time.perf_counter() - started
            done.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    process.wait()
    done.set()
    sampler.join()
    usage.first_output_s = usage.first_output_s or time.perf_counter() - started
    return usage


def family_usage(pid: int | None, cluster_folder: str | None) -> dict[int, tuple[int, float]]:
    """{pid: (RSS bytes, CPU seconds)} of ``pid``, its descendants and the cluster's processes."""
    family: set[psutil.Process] = set()
    try:
        if pid is not None:
            root = psutil.Process(pid)
            family = {root, *root.children(recursive=True)}
    except psutil.NoSuchProcess:
        pass
    if cluster_folder:
        family |= ray_cluster.processes_of(cluster_folder)
    seen = {}
    for member in family:
        try:
            with member.oneshot():
                times = member.cpu_times()
                seen[member.pid] = (member.memory_info().rss, times.user + times.system)
        except psutil.NoSuchProcess:
            pass
    return seen


def table(results: list[Result], tickets: int) -> str:
    reference = results[0].labels
    rows = ["| way | cores | wall time | tickets/s | tickets/s per core | CPU time per 1,000 tickets | peak memory | "
            "time to first output | labels as --file |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for result in results:
        rate = tickets / result.seconds
        same = "yes" if result.labels == reference else "NO"
        rows.append(f"| {result.name} | {result.cores} | {result.seconds:.1f} s | {rate:,.0f} tickets/s | "
                    f"{rate / result.cores:,.0f} tickets/s | {1000 * result.usage.cpu_seconds / tickets:.2f} s | "
                    f"{result.usage.peak_mib:,.0f} MiB | {result.usage.first_output_s:.1f} s | {same} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
