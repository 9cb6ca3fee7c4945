"""The export's int8 decision on an exported bundle: on its validation split alone, and with the tickets of
its training file (what ``ticketclf export`` does), with the time each drift check takes.

    python scripts/benchmarks/drift_decision.py runs/banking77-default runs/quickstart

Runs ``classifier.export.check_drift`` on the bundle's ONNX models (a warm-up first, then each way twice,
alternating) and ``decide_int8`` at ``--max-accuracy-drop``; appends the run to docs/benchmarks/runs.jsonl
(area "int8-decision").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import command_line, publish, record_arguments  # noqa: E402

from classifier import bundle, export  # noqa: E402
from classifier.manifest import Drift  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", type=Path, nargs="+", help="exported bundles")
    parser.add_argument("--max-accuracy-drop", type=float, default=export.ExportOptions().max_accuracy_drop)
    args = record_arguments(parser).parse_args()
    lines, figures = [], {}
    for bundle_dir in args.bundles:
        with_file, alone = measure(bundle_dir)
        for name, (drift, seconds) in (("validation split only", alone), ("with the training file", with_file)):
            decision = export.decide_int8(drift.int8_fp32_agreeing or 0, sum(drift.agreement_tickets.values()),
                                          drift.only_fp32_right or 0, drift.only_int8_right or 0, drift.examples,
                                          args.max_accuracy_drop)
            lines.append(f"{bundle_dir.name}, {name}: {drift.agreement_tickets}, drift check {seconds:.1f} s; "
                         f"serving {decision.engine}: {decision.basis}")
            figures[f"{bundle_dir.name}, {name}"] = {"tickets": drift.agreement_tickets, "seconds": round(seconds, 1),
                                                     "engine": decision.engine, "basis": decision.basis}
    publish(args, "int8-decision", "\n".join(lines), figures, command_line())
    return 0


def measure(bundle_dir: Path) -> tuple[tuple[Drift, float], tuple[Drift, float]]:
    """(drift, best seconds) with the training file's tickets and without them."""
    manifest = bundle.read_manifest(bundle_dir)
    with_file = export._training_texts
    runs: dict[bool, list[tuple[Drift, float]]] = {True: [], False: []}
    for use_file in (False, True, False, True, False):  # the first: a warm-up, not counted
        export._training_texts = with_file if use_file else (lambda *args: [])
        started = time.perf_counter()
        drift = export.check_drift(bundle_dir, manifest, bundle.onnx_path(bundle_dir, False),
                                   bundle.onnx_path(bundle_dir, True))
        runs[use_file].append((drift, time.perf_counter() - started))
    export._training_texts = with_file
    best = {use_file: min(measured[1:] if not use_file else measured, key=lambda run: run[1])
            for use_file, measured in runs.items()}
    return best[True], best[False]


if __name__ == "__main__":
    sys.exit(main())
