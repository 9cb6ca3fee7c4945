"""Which score ranks tickets for routing best: the served confidence, a sharper softmax, or the top-two margin.

    python scripts/benchmarks/routing_scores.py runs/small-data/*/*      # the runs small_data.py left

Each directory is one run of small_data.py (``bundle/``, and ``test.csv`` or else BANKING77's test file).
For each, the test tickets routed at 95 % precision when ranked by: the served confidence (the calibrated
blend's top probability), the top probability of the blend's logits at twice their sharpness, and the
margin between its two highest logits (a sharpness without end); the TF-IDF baseline ranked by its own
confidence and by its margin beside them. The answers stay the same; only the order of routing changes.
Appends to docs/benchmarks/runs.jsonl (area "routing-scores").
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from common import BANKING77_TEST, publish, small_data_runs_arguments, table_figures  # noqa: E402

from classifier.blend import blend  # noqa: E402
from classifier.evaluate import load_test_set, routed_at_target  # noqa: E402
from classifier.numerics import softmax  # noqa: E402
from classifier.predict import Predictor  # noqa: E402

TARGET = 0.95
SCORES = ("confidence", "sharpness x2", "margin", "TF-IDF confidence", "TF-IDF margin")


def main() -> int:
    args = small_data_runs_arguments(__doc__.splitlines()[0])
    logging.disable(logging.WARNING)  # each bundle's load notes; the table is the output
    for skipped in (run for run in args.runs if not (run / "bundle").is_dir()):
        print(f"skipped {skipped}: no bundle/ in it", file=sys.stderr)
    rows = [(run, routed_by_score(run)) for run in args.runs if (run / "bundle").is_dir()]
    lines = ["| run | test tickets | " + " | ".join(SCORES) + " |", "|" + " --- |" * (len(SCORES) + 2)]
    for run, (tickets, routed) in rows:
        lines.append(f"| {run.parent.name}/{run.name} | {tickets} | "
                     + " | ".join(str(routed.get(score, "")) for score in SCORES) + " |")
    # Over the runs every score has (TF-IDF's are missing where a bundle has no TF-IDF model), so that the
    # columns compare.
    complete = [(tickets, routed) for _, (tickets, routed) in rows if len(routed) == len(SCORES)]
    lines.append(f"| mean share routed ({len(complete)} runs with every score) | | " + " | ".join(
        f"{100 * np.mean([routed[score] / tickets for tickets, routed in complete]):.1f} %" if complete else ""
        for score in SCORES) + " |")
    body = "\n".join(lines)
    publish(args, "routing-scores", body, table_figures(body))
    return 0


def routed_by_score(run: Path) -> tuple[int, dict[str, int]]:
    """Test tickets, and how many each score routes at :data:`TARGET` precision."""
    predictor = Predictor.load(run / "bundle")
    test_file = run / "test.csv" if (run / "test.csv").exists() else BANKING77_TEST
    tickets, _ = load_test_set(test_file, predictor.manifest, None)
    known = [i for i, label in enumerate(tickets.labels) if label in predictor.labels]  # a label it never saw
    tickets = tickets.subset(known)  # is no routing decision of its own
    outputs = predictor.outputs(tickets.texts, cleaned=True, features=False)
    truth = np.array([predictor.labels.index(label) for label in tickets.labels])
    served = blend(outputs.logits.astype(np.float64),
                   None if outputs.tfidf is None else outputs.tfidf.astype(np.float64),
                   predictor.blend_weight, predictor.temperature, predictor.blend_scale)
    routed = _routed(served, truth, "")
    if outputs.tfidf is not None:
        routed |= _routed(outputs.tfidf.astype(np.float64), truth, "TF-IDF ")
    return len(truth), {score: routed[score] for score in SCORES if score in routed}


def _routed(logits: np.ndarray, truth: np.ndarray, prefix: str) -> dict[str, int]:
    correct = (logits.argmax(axis=1) == truth).astype(np.float64)
    top_two = np.sort(logits, axis=1)[:, -2:]
    scores = {"confidence": softmax(logits).max(axis=1), "margin": top_two[:, 1] - top_two[:, 0]}
    if not prefix:
        scores["sharpness x2"] = softmax(2 * logits).max(axis=1)
    return {prefix + name: int(routed_at_target(score, correct, TARGET)) for name, score in scores.items()}


if __name__ == "__main__":
    sys.exit(main())
