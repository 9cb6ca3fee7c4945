"""Hostile inputs: the time a request or a ticket costs, and the memory a hostile file costs, end to end.

    python scripts/benchmarks/hostile_inputs.py runs/banking77-default

In this process (best of 3 calls each): a request body of 80,000 JSON keys with the last one repeated, one
of 20,000 distinct keys beside its text, and one ticket of '<a' repeated (300,008 characters), sent to the
Flask app through its test client; the HTML cleaning of 1,000,008 characters of '<a', '</' and '<!--'; the
text cleaning of 500,000 newlines.

In child processes, each measured alone (peak RSS by GNU time, wall time, exit code and the last line
of its standard error): ``ticketclf predict --file`` on 5,000 tickets of about 8,000 characters, and
``ticketclf train``, ``evaluate`` and ``predict --file`` on the audit's cases of issue 19: a CSV with one
50 MB cell, a gzip file that inflates to 1 GiB, and JSON nested 100,000 deep (the target: under 1.5 GB
and a result or a one-line message), after the same commands on the same files without the hostile
cell, the floor that no bound on the input can lower.

The bundle must be exported (its text field and label column name the files' columns); ``--data`` gives
the evaluation's ordinary tickets, the bundled sample the training's. Files are written under ``--work``
(kept when given; the gzip bomb is reused from there). The run is appended to docs/benchmarks/runs.jsonl
(area "hostile-inputs").
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import logging
import os
import random
import shlex
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository

from common import BANKING77_TEST, publish, record_arguments, table_figures  # noqa: E402

from classifier.bundle import read_manifest  # noqa: E402
from classifier.text import clean_text  # noqa: E402

SAMPLE = ROOT / "data" / "tickets.csv"
TIME = "/usr/bin/time"
GROUPS = ("requests", "cleaning", "long-tickets", "audit")
MEMORY_TARGET_MIB = 1.5e9 / 2**20  # issue 19: 1.5 GB
LONG_TICKET_WORDS = ("card payment refund transfer account blocked pending charged twice exchange rate top up "
                     "atm cash withdrawal").split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="an exported bundle")
    parser.add_argument("--data", type=Path, default=BANKING77_TEST,
                        help="labelled tickets in the bundle's columns, the evaluation's ordinary rows")
    parser.add_argument("--work", type=Path, help="where the files are written (default: a temporary folder)")
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"which cases to run, of {', '.join(GROUPS)}")
    parser.add_argument("--keys", type=int, default=80_000, help="JSON keys in the hostile request")
    parser.add_argument("--html-chars", type=int, default=1_000_000, help="characters of each hostile HTML pattern")
    parser.add_argument("--newlines", type=int, default=500_000, help="newlines in the text-cleaning case")
    parser.add_argument("--long-tickets", type=int, default=5_000, help="tickets of about 8,000 characters")
    parser.add_argument("--cell-mb", type=int, default=50, help="MB of text in the one long cell")
    parser.add_argument("--bomb-mib", type=int, default=1024, help="MiB the gzip bomb inflates to")
    parser.add_argument("--depth", type=int, default=100_000, help="nesting of the deep JSON file")
    parser.add_argument("--epochs", default="1", help="training epochs in the long-cell case")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a child process may run")
    args = record_arguments(parser).parse_args()
    groups = [group.strip() for group in args.groups.split(",") if group.strip()]
    if unknown := set(groups) - set(GROUPS):
        parser.error(f"unknown groups {sorted(unknown)}; choose from {', '.join(GROUPS)}")
    with tempfile.TemporaryDirectory(prefix="hostile-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        sections = []
        if "requests" in groups:
            sections.append(request_rows(args.bundle, args.keys))
        if "cleaning" in groups:
            sections.append(cleaning_rows(args.html_chars, args.newlines))
        if {"long-tickets", "audit"} & set(groups):
            sections.append(memory_rows(args, work, groups))
    body = "\n\n".join(sections)
    options = " ".join(f"--{name.replace('_', '-')} {shlex.quote(str(getattr(args, name)))}"
                       for name in ("data", "groups", "keys", "html_chars", "newlines", "long_tickets", "cell_mb",
                                    "bomb_mib", "depth", "epochs"))
    publish(args, "hostile-inputs", body, table_figures(body),
            f"python scripts/benchmarks/hostile_inputs.py {args.bundle} {options}")
    return 0


def best_of_3(call: Callable[[], Any]) -> tuple[float, Any]:
    """The shortest of three calls in seconds, and the last call's result."""
    times, result = [], None
    for _ in range(3):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return min(times), result


def shown(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds >= 0.01 else f"{seconds:.4f} s"


# ---------------------------------------------------------------- in this process

def request_rows(bundle: Path, keys: int) -> str:
    """Two bodies under the 1 MiB limit that took longer than the 30 s worker timeout before (51.1 s and
    34.5 s): a duplicate-key check that counted each key, and HTMLParser on unclosed tags."""
    from service import create_app

    logging.getLogger("ticketclf.access").disabled = True  # a JSON line per request: not this script's output
    client = create_app({"BUNDLE": bundle, "THREADS": 1, "API_KEYS": "", "LOG_TEXT": False}).test_client()
    body = "{" + ",".join(f'"k{i}":0' for i in range(keys)) + f',"k{keys - 1}":1}}'
    # Distinct keys holding words beside the text: each was checked for text under another name (quadratic).
    distinct = json.dumps({"text": "refund", **{f"k{i}": "v" for i in range(keys // 4)}})
    ticket = "<p>x</p>" + "<a" * 150_000
    rows = []
    for name, data in ((f"request with {keys:,} JSON keys, the last repeated ({len(body):,} bytes)", body),
                       (f"request with {keys // 4:,} distinct JSON keys beside its text ({len(distinct):,} bytes)",
                        distinct),
                       (f"one ticket of '<a' repeated, {len(ticket):,} characters", json.dumps({"text": ticket}))):
        seconds, response = best_of_3(lambda data=data: client.post("/classify", data=data,
                                                                    content_type="application/json"))
        rows.append(f"| {name}: POST /classify | {shown(seconds)} | HTTP {response.status_code} |")
    seconds, _ = best_of_3(lambda: clean_text(ticket))
    rows.append(f"| one ticket of '<a' repeated, {len(ticket):,} characters: clean_text alone | {shown(seconds)} | |")
    return "| hostile request | time (best of 3) | answer |\n| --- | --- | --- |\n" + "\n".join(rows)


def cleaning_rows(html_chars: int, newlines: int) -> str:
    """The patterns that made cleaning quadratic before (HTMLParser on unclosed tags, line-anchored regexes)."""
    cases = {f"'{unit}' repeated": "<p>x</p>" + unit * (html_chars // len(unit)) for unit in ("<a", "</", "<!--")}
    cases[f"{newlines:,} newlines"] = "x" + "\n" * newlines + "y"
    rows = [f"| {name} | {len(text):,} | {shown(best_of_3(lambda text=text: clean_text(text))[0])} |"
            for name, text in cases.items()]
    return "| text cleaned | characters | time (best of 3) |\n| --- | --- | --- |\n" + "\n".join(rows)


# ---------------------------------------------------------------- child processes

@dataclass
class Child:
    """One command run alone: its peak RSS, time, exit code and what it said last."""

    peak_mib: float
    seconds: float
    code: int
    stderr_lines: list[str]
    stdout: Path


def run_child(arguments: list[str], stdout: Path, timeout: float) -> Child:
    """``ticketclf ARGUMENTS`` in a fresh process, its peak RSS measured by GNU time (``%M``). Not by this
    process's ``wait4`` or ``RUSAGE_CHILDREN``: Linux counts into a child's peak the memory of the process
    it was forked from, up to its exec, and this one holds a served model and the hostile files."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with open(stdout, "wb") as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".time") as measured:
        started = time.perf_counter()
        try:
            code = subprocess.run([TIME, "-f", "%M", "-o", measured.name, sys.executable, "-m", "classifier.cli",
                                   *arguments], stdout=out, stderr=err, env=env, cwd=ROOT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = -9
        seconds = time.perf_counter() - started
        err.seek(0)
        lines = err.read().decode("utf-8", "replace").splitlines()
        written = measured.read().split()  # "Command exited with non-zero status 2" first, if it did
        peak_kib = int(written[-1]) if written and written[-1].isdigit() else 0
    return Child(peak_kib / 1024, seconds, code, lines, stdout)


def memory_rows(args: argparse.Namespace, work: Path, groups: list[str]) -> str:
    if not Path(TIME).is_file():
        raise SystemExit(f"{TIME} (GNU time) measures the child processes' memory; install it (apt-get install time)")
    manifest = read_manifest(args.bundle)
    text_field = manifest.text.record_fields[0]
    label_column = (manifest.data.train.label_column if manifest.data.train else None) or "label"
    rows = []
    if "long-tickets" in groups:
        long_tickets = work / "long_tickets.csv"
        write_long_tickets(long_tickets, text_field, args.long_tickets)
        child = run_child(["predict", str(args.bundle), "--file", str(long_tickets)], work / "long.out", args.timeout)
        size = long_tickets.stat().st_size / 1e6
        rows.append(memory_row(f"predict --file, {args.long_tickets:,} tickets of about 8,000 characters "
                               f"({size:.0f} MB)", child, predictions(child), work))
    if "audit" in groups:
        files = audit_files(args, work, text_field, label_column)
        for case, (name, (train_file, test_file)) in enumerate(files.items()):
            model, report = work / f"model-{case}", work / f"report-{case}"
            commands = {
                "train": ["train", str(train_file), "--output", str(model), "--overwrite", "--epochs", args.epochs],
                "evaluate": ["evaluate", str(args.bundle), "--data", str(test_file), "--output", str(report)],
                "predict --file": ["predict", str(args.bundle), "--file", str(test_file)],
            }
            for command, arguments in commands.items():
                child = run_child(arguments, work / f"{case}-{command.split()[0]}.out", args.timeout)
                result = "" if child.code else trained(model) if command == "train" else \
                    evaluated(report) if command == "evaluate" else predictions(child)
                rows.append(memory_row(f"{command}, {name}", child, result, work))
    header = ("| case | peak RSS | wall time | outcome |\n| --- | --- | --- | --- |\n")
    return header + "\n".join(rows)


def memory_row(case: str, child: Child, result: str, work: Path) -> str:
    if child.code == 0:
        outcome = f"result: {result}"
    else:
        last = child.stderr_lines[-1].replace(f"{work}/", "") if child.stderr_lines else "(nothing on stderr)"
        lines = len(child.stderr_lines)
        outcome = f"exit {child.code}, {lines} line{'s' if lines != 1 else ''} on stderr: {last[:160]}"
    within = "" if child.peak_mib < MEMORY_TARGET_MIB else " (over 1.5 GB)"
    return f"| {case} | {child.peak_mib:,.0f} MiB{within} | {child.seconds:.1f} s | {outcome.replace('|', '/')} |"


def predictions(child: Child) -> str:
    lines = [json.loads(line) for line in child.stdout.read_text(encoding="utf-8").splitlines()]
    cut = sum(1 for line in lines if line.get("truncated"))
    return f"{len(lines):,} predictions ({cut:,} truncated)"


def trained(model: Path) -> str:
    report = json.loads((model / "reports" / "data_report.json").read_text(encoding="utf-8"))
    cut = report.get("cut_cells", [])
    return f"bundle written; data report: {len(cut)} cell{'s' if len(cut) != 1 else ''} cut to " \
           f"{report.get('cell_char_limit', 0):,} characters"


def evaluated(report: Path) -> str:
    content = json.loads((report / "report.json").read_text(encoding="utf-8"))
    return f"report written, {content['metrics']['tickets']:,} tickets, accuracy {content['metrics']['accuracy']:.3f}"


# ---------------------------------------------------------------- the files

def write_long_tickets(path: Path, text_field: str, count: int) -> None:
    """The file of the 2026-12-04 measurement: seeded, 1,400 words of a banking vocabulary per ticket."""
    rng = random.Random(0)
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["id", text_field])
        for i in range(count):
            writer.writerow([f"T-{i}", " ".join(rng.choice(LONG_TICKET_WORDS) for _ in range(1400))])


def audit_files(args: argparse.Namespace, work: Path, text_field: str,
                label_column: str) -> dict[str, tuple[Path, Path]]:
    """Each audit case as (training file, evaluation and prediction file), after the same files without the
    hostile cell: what the commands cost on ordinary tickets, which no input bound can lower."""
    with open(SAMPLE, newline="", encoding="utf-8") as handle:
        sample = list(csv.DictReader(handle))
    taken: dict[str, int] = {}
    training = []
    for row in sample:  # 20 tickets of each class: training takes seconds, reading the cell is the point
        taken[row["category"]] = taken.get(row["category"], 0) + 1
        if taken[row["category"]] <= 20:
            training.append([row["subject"], row["body"], row["category"]])
    with open(args.data, newline="", encoding="utf-8") as handle:
        ordinary = [[row[text_field], row[label_column]] for _, row in zip(range(300), csv.DictReader(handle))]
    rng = random.Random(0)
    pool = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 10))) for _ in range(50_000)]
    cell = " ".join(rng.choices(pool, k=args.cell_mb * 1_000_000 // 7))[:args.cell_mb * 1_000_000]  # most n-grams
    files = {}
    for name, extra in (("plain", []), (f"cell-{args.cell_mb}mb", [cell])):
        files[name] = (write_csv(work / f"{name}-train.csv", ["subject", "body", "category"],
                                 training + [[training[0][0], text, training[0][2]] for text in extra]),
                       write_csv(work / f"{name}.csv", [text_field, label_column],
                                 ordinary + [[text, ordinary[0][1]] for text in extra]))
    del cell
    bomb = work / f"bomb-{args.bomb_mib}mib.csv.gz"
    if not bomb.exists():
        write_bomb(bomb, [text_field, label_column], ordinary, args.bomb_mib)
    deep = work / f"deep-{args.depth}.json"
    deep.write_text(f'[{{"{text_field}": ' + "[" * args.depth + "]" * args.depth + f', "{label_column}": "x"}}]')
    cell_files = files[f"cell-{args.cell_mb}mb"]
    return {f"ordinary tickets ({len(training)} to train, {len(ordinary)} to evaluate)": files["plain"],
            f"one {args.cell_mb} MB cell ({cell_files[1].stat().st_size / 1e6:.0f} MB CSV)": cell_files,
            f"gzip bomb ({bomb.stat().st_size / 1e6:.1f} MB inflating to {args.bomb_mib:,} MiB)": (bomb, bomb),
            f"JSON nested {args.depth:,} deep": (deep, deep)}


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_bomb(path: Path, header: list[str], rows: list[list[str]], inflated_mib: int) -> None:
    """A CSV of ordinary tickets repeated: a block within gzip's 32 KiB window, so it compresses about 200 to 1."""
    lines = io.StringIO()
    csv.writer(lines).writerows(rows)
    block = lines.getvalue().encode("utf-8")[:16_384]
    block = block[:block.rindex(b"\n") + 1]  # whole rows
    with gzip.open(path, "wb", compresslevel=6) as out:
        out.write((",".join(header) + "\r\n").encode())
        for _ in range(inflated_mib * 2**20 // len(block) + 1):
            out.write(block)


if __name__ == "__main__":
    sys.exit(main())
