"""How tag thresholds chosen on a small validation split hold on other tickets: the rule training uses
(``classifier.fields.choose_tag_thresholds``) against a threshold of its own for every tag and a fixed 0.5.

    python scripts/benchmarks/tag_thresholds.py runs/quickstart runs/quickstart-test.csv

Scores the test file's tickets with the bundle's tags head once, then many times over draws ``--validation``
of them as a validation split, chooses thresholds on it each way, and scores the rest: micro- and macro-F1,
and how many tags a rule gives to more than half of the tickets though fewer than a fifth carry them.
Appends to docs/benchmarks/runs.jsonl (area "fields").
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import publish, record_arguments  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from classifier import fields  # noqa: E402
from classifier.evaluate import load_test_set  # noqa: E402
from classifier.numerics import sigmoid  # noqa: E402
from classifier.predict import Predictor  # noqa: E402

Rule = Callable[[np.ndarray, np.ndarray], list[float]]
RULES: dict[str, Rule] = {
    "training's rule": fields.choose_tag_thresholds,
    # the rule before: a tag's own threshold from its first validation positive
    "each tag its own": lambda scores, truth: [fields.best_f1_threshold(scores[:, j], truth[:, j], min_positives=1)
                                               for j in range(truth.shape[1])],
    "0.5 for all": lambda scores, truth: [fields.DEFAULT_TAG_THRESHOLD] * truth.shape[1],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a bundle with a tags field")
    parser.add_argument("data", type=Path, help="labelled tickets the bundle did not train on, with their tags")
    parser.add_argument("--validation", default="50,96", help="validation sizes to draw, comma-separated")
    parser.add_argument("--draws", type=int, default=300)
    args = record_arguments(parser).parse_args()
    scores, truth = tag_scores(args.bundle, args.data)
    lines, figures = [f"{len(scores)} tickets, {truth.shape[1]} tags, {int(truth.sum())} tags given"], {}
    for size in map(int, args.validation.split(",")):
        for name, (micro, macro, flooded) in compare(scores, truth, size, args.draws).items():
            lines.append(f"validation {size}, {name}: micro-F1 {micro:.3f}, macro-F1 {macro:.3f}, "
                         f"{flooded:.2f} tags flooded a draw")
            figures[f"validation {size}, {name}"] = {"micro_f1": round(micro, 4), "macro_f1": round(macro, 4),
                                                     "flooded_tags": round(flooded, 3)}
    publish(args, "fields", "\n".join(lines), figures)
    return 0


def tag_scores(bundle_dir: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The tags head's scores and the true tags of every ticket in ``data`` with known tags."""
    predictor = Predictor.load(bundle_dir)
    specs = predictor.manifest.fields or []
    index = next((i for i, spec in enumerate(specs) if spec.kind == "tags"), None)
    if index is None:
        raise SystemExit(f"{bundle_dir}: the bundle has no tags field")
    tickets, _ = load_test_set(data, predictor.manifest, None, with_fields=True)
    logits = predictor.outputs(tickets.texts, cleaned=True).fields[index]
    truth = fields.tag_matrix(tickets.fields[specs[index].name], specs[index].labels)
    known = truth[:, 0] >= 0
    return sigmoid(logits)[known], truth[known]


def compare(scores: np.ndarray, truth: np.ndarray, size: int, draws: int) -> dict[str, tuple[float, float, float]]:
    """Per rule, the mean over ``draws`` seeded draws of micro-F1, macro-F1 and flooded tags on the tickets
    left out of each validation split of ``size``."""
    rng = np.random.default_rng(0)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in RULES}
    for _ in range(draws):
        order = rng.permutation(len(scores))
        chosen_on, held = order[:size], order[size:]
        for name, rule in RULES.items():
            given = scores[held] >= np.array(rule(scores[chosen_on], truth[chosen_on]))
            flooded = int(((given.mean(axis=0) > 0.5) & (truth[held].mean(axis=0) < 0.2)).sum())
            results[name].append((f1_score(truth[held], given, average="micro", zero_division=0),
                                  f1_score(truth[held], given, average="macro", zero_division=0), flooded))
    return {name: tuple(np.mean(values, axis=0).tolist()) for name, values in results.items()}


if __name__ == "__main__":
    sys.exit(main())
