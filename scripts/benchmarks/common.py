"""What every benchmark script records next to its figures: the machine, the date, the command."""

from __future__ import annotations

import argparse
import os
import platform
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


def inference_arguments(description: str, latency_samples: int, rounds: int) -> argparse.ArgumentParser:
    """The arguments the inference benchmarks share: a bundle, test tickets, timing sizes, output file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("bundle", type=Path, help="a trained (for the ONNX rows: exported) bundle")
    parser.add_argument("--data", type=Path, default=BANKING77_TEST, help="labelled test tickets")
    parser.add_argument("--latency-samples", type=int, default=latency_samples, help="texts timed one by one")
    parser.add_argument("--rounds", type=int, default=rounds, help="alternating timing rounds (time_interleaved)")
    parser.add_argument("--markdown", type=Path, help="append the results to this file")
    return parser


def publish_inference(args: argparse.Namespace, title: str, body: str, options: str = "") -> None:
    """Print an inference benchmark's results; with ``--markdown``, append them with the command that
    made them (``options``: the script's own options, as given)."""
    print(body)
    if args.markdown:
        command = (f"python scripts/benchmarks/{Path(sys.argv[0]).name} {args.bundle} --latency-samples {args.latency_samples} "
                   f"--rounds {args.rounds}{' ' + options if options else ''}")
        append_section(args.markdown, title, command, body)


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
    return f"{model}, {cores} cores, {memory:.0f} GiB RAM, Python {platform.python_version()}"


def append_section(markdown: Path, title: str, command: str, body: str) -> None:
    """Append one dated, re-runnable result section to a benchmarks file."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    markdown.parent.mkdir(parents=True, exist_ok=True)
    exists = markdown.exists()
    with open(markdown, "a", encoding="utf-8") as out:
        if not exists:
            out.write("# Benchmarks\n\nEvery figure here was produced by the command shown, on the machine "
                      "shown, on the date shown. Sections are appended by the scripts; compare rows "
                      "within one section (one run), not across sections: the machines are shared.\n")
        out.write(f"\n## {title}\n\n- Date: {stamp}\n- Machine: {machine_description()}\n"
                  f"- Command: `{command}`\n\n{body}\n")
