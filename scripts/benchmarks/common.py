"""What every benchmark script records next to its figures: the machine, the date, the commit, the command.

Each run appends one JSON line to docs/benchmarks/runs.jsonl (``record_run``): the history, machine-readable.
docs/benchmarks.md is curated by hand: a script prints the table rows to paste there, it never edits it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from classifier.cpus import usable_cpus

ROOT = Path(__file__).resolve().parents[2]  # the repository
BANKING77_TEST = ROOT.parent / "shared" / "data" / "banking77" / "test.csv"
RUNS_FILE = ROOT / "docs" / "benchmarks" / "runs.jsonl"


def inference_arguments(description: str, latency_samples: int, rounds: int) -> argparse.ArgumentParser:
    """The arguments the inference benchmarks share: a bundle, test tickets, timing sizes, output file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("bundle", type=Path, help="a trained (for the ONNX rows: exported) bundle")
    parser.add_argument("--data", type=Path, default=BANKING77_TEST, help="labelled test tickets")
    parser.add_argument("--latency-samples", type=int, default=latency_samples, help="texts timed one by one")
    parser.add_argument("--rounds", type=int, default=rounds, help="alternating timing rounds (time_interleaved)")
    return record_arguments(parser)


def small_data_runs_arguments(description: str) -> argparse.Namespace:
    """The arguments of the scripts that read small_data.py's run folders: the folders, and where to record."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("runs", nargs="+", type=Path,
                        help="folders small_data.py wrote (runs/small-data/NAME/SIZE), with bundle/ and what the "
                             "script reads beside it")
    return record_arguments(parser).parse_args()


def record_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--runs-file`` and ``--no-record``: where ``record_run`` appends this run, or nowhere."""
    parser.add_argument("--runs-file", type=Path, default=RUNS_FILE,
                        help="append this run's record (one JSON line) here; default: docs/benchmarks/runs.jsonl")
    parser.add_argument("--no-record", action="store_true", help="print the results only, record nothing")
    return parser


def publish_inference(args: argparse.Namespace, area: str, body: str, figures: dict[str, Any],
                      options: str = "", notes: str = "") -> None:
    """``publish`` for an inference benchmark, with the command spelt out in full (``options``: the
    script's own options, as given), so that a later change of a default does not change what it ran."""
    command = (f"python {script_path()} {args.bundle} --data {args.data} --latency-samples {args.latency_samples} "
               f"--rounds {args.rounds}{' ' + options if options else ''}")
    publish(args, area, body, figures, command, notes)


def publish(args: argparse.Namespace, area: str, body: str, figures: dict[str, Any], command: str | None = None,
            notes: str = "") -> dict[str, Any]:
    """Print a run's results, record it (unless ``--no-record``) and print its rows for docs/benchmarks.md."""
    print(body)
    command = command or command_line()
    record = make_record(area, figures, command, notes)
    if not getattr(args, "no_record", False):
        append_record(record, getattr(args, "runs_file", RUNS_FILE))
        print(f"\nrecorded in {getattr(args, 'runs_file', RUNS_FILE)}")
    print("\nRows for docs/benchmarks.md (keep the figures that matter, fill in the target):\n")
    print(markdown_rows(record))
    return record


def script_path() -> str:
    """The running script, relative to the repository when it is inside it."""
    script = Path(sys.argv[0]).resolve()
    return str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else str(script)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, as typed from the repository root."""
    return f"python {script_path()} " + shlex.join(sys.argv[1:] if argv is None else argv)


def record_run(area: str, figures: dict[str, Any], command: str, notes: str = "",
               runs_file: Path = RUNS_FILE) -> dict[str, Any]:
    """Append one run to ``runs_file`` (docs/benchmarks/runs.jsonl): one JSON object on one line, with the
    date (ISO, UTC), the commit (``-dirty`` when tracked files differ from it), this machine, the command,
    the figures ({name: value}, units in the names) and notes. Returns the record."""
    record = make_record(area, figures, command, notes)
    append_record(record, runs_file)
    return record


def make_record(area: str, figures: dict[str, Any], command: str, notes: str = "") -> dict[str, Any]:
    return {"area": area, "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": git_commit(),
            "machine": machine_description(), "command": command, "figures": figures, "notes": notes}


def append_record(record: dict[str, Any], runs_file: Path) -> None:
    runs_file.parent.mkdir(parents=True, exist_ok=True)
    with open(runs_file, "a", encoding="utf-8") as out:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")


def git_commit() -> str | None:
    """``git rev-parse --short HEAD``, plus ``-dirty`` when a tracked file differs from it (the runs file
    itself aside: recording a run must not make the next one dirty); None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                  f":(exclude){RUNS_FILE.relative_to(ROOT)}"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if changed else "")


_VALUE = re.compile(r"([+-]?\d[\d,]*(?:\.\d+)?|[+-]?\.\d+)\s*(ms|us|s|min|%|x|MiB|GiB|MB|tickets/s|req/s|points)?")


def table_figures(markdown: str) -> dict[str, Any]:
    """The figures of every table in ``markdown`` as {"row: column [unit]": value}: the row is named by its
    first cell (prefixed with the first column's header when that cell is a number, e.g. "concurrency 8"),
    a number with a unit becomes a float with the unit in the name, anything else stays text, "-" is
    left out. runs.jsonl names figures this way, so runs of one script compare by name."""
    figures: dict[str, Any] = {}
    header: list[str] | None = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None and all(set(cell) <= set("-: ") for cell in cells):
            continue
        if header is None:
            header = cells
            continue
        if all(set(cell) <= set("-: ") for cell in cells):
            continue
        row = cells[0][1:-1] if re.fullmatch(r"`[^`]*`", cells[0]) else cells[0]
        if _VALUE.fullmatch(row):
            row = f"{header[0]} {row}"
        for column, cell in zip(header[1:], cells[1:]):
            if cell in ("", "-"):
                continue
            match = _VALUE.fullmatch(cell)
            name = f"{row}: {column}"
            if match:
                number, unit = match.groups()
                value: Any = float(number.replace(",", ""))
                value = int(value) if value.is_integer() and "." not in number else value
                in_column = unit in re.findall(r"[\w%/]+", column)  # "p50 ms" names its unit already
                figures[f"{name} [{unit}]" if unit and not in_column else name] = value
            else:
                figures[name] = cell
    return figures


def markdown_rows(record: dict[str, Any]) -> str:
    """One docs/benchmarks.md row per figure: | figure | value | target | command | date | machine |."""
    date = record["date"][:16].replace("T", " ") + " UTC"
    return "\n".join(f"| {_cell(name)} | {_cell(value)} | | `{record['command']}` | {date} | {record['machine']} |"
                      for name, value in record["figures"].items())


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")  # a table cell holds no bare pipe


@dataclass
class Timings:
    """Call times in ms: each round's median per call, and every single time."""

    round_medians: dict[str, list[float]] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)

    def p50(self, name: str) -> float:
        return float(np.median(self.round_medians[name]))

    def p99(self, name: str) -> float:
        return float(np.percentile(self.times[name], 99))

    def relative(self, name: str, reference: str) -> float:
        """Median over rounds of ``name``'s time divided by ``reference``'s in the same round."""
        return float(np.median(np.array(self.round_medians[name]) / np.array(self.round_medians[reference])))


def time_interleaved(calls: dict[str, Callable[[Any], Any]], items: Sequence[Any], rounds: int,
                     warm_up: int = 20) -> Timings:
    """Time every call on every item, one call's block of items after another, for ``rounds`` rounds.

    The shared machine has slow and fast minutes; alternating the blocks spreads them over
    all calls alike, so ratios taken within a round hold even when absolute times drift. The
    order of the blocks rotates every round, so no call always follows the same other call.
    """
    for call in calls.values():  # allocators, thread pools, lazy initialisation
        for item in items[:warm_up]:
            call(item)
    timings = Timings({name: [] for name in calls}, {name: [] for name in calls})
    names = list(calls)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            call = calls[name]
            block = []
            for item in items:
                started = time.perf_counter()
                call(item)
                block.append((time.perf_counter() - started) * 1000)
            timings.round_medians[name].append(float(np.median(block)))
            timings.times[name].extend(block)
    return timings


def machine_description() -> str:
    """CPU model (with family and model numbers: a VM may name only the vendor, and CPU generations differ
    several times over in int8 speed), usable cores, memory and Python, as read on this machine."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            fields = dict(line.split(":", 1) for line in cpuinfo.read().split("\n\n")[0].splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        flags = [flag for flag in ("avx512_vnni", "amx_int8") if flag in fields.get("flags", "").split()]
        model = (f"{fields['model name']} (cpu family {fields['cpu family']}, model {fields['model']}; "
                 f"{', '.join(flags) or 'no avx512_vnni'})")
    except (OSError, KeyError):
        pass
    cores = usable_cpus()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    described = f"{model}, {cores} cores, {memory:.0f} GiB RAM, Python {platform.python_version()}"
    return f"{gpu}, torch {sys.modules['torch'].__version__} on {described}" if (gpu := _gpu()) else described


def _gpu() -> str | None:
    """The GPU that training ran on, if the script imported torch and one is there (training uses it then)."""
    torch = sys.modules.get("torch")  # not imported here: the inference scripts must stay torch-free
    if torch is None or not torch.cuda.is_available():
        return None
    return f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**20:,.0f} MiB)"

