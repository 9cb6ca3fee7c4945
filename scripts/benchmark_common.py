"""What every benchmark script records next to its figures: the machine, the date, the command."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's classifier package
from classifier.cpus import usable_cpus  # noqa: E402

BANKING77_TEST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "banking77" / "test.csv"


def inference_arguments(description: str, latency_samples: int) -> argparse.ArgumentParser:
    """The arguments the inference benchmarks share: a bundle, test tickets, sample count, output file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("bundle", type=Path, help="a trained (for the ONNX rows: exported) bundle")
    parser.add_argument("--data", type=Path, default=BANKING77_TEST, help="labelled test tickets")
    parser.add_argument("--latency-samples", type=int, default=latency_samples, help="texts timed one by one")
    parser.add_argument("--markdown", type=Path, help="append the results to this file")
    return parser


def machine_description() -> str:
    """CPU model, usable cores and memory, as read on this machine."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
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
