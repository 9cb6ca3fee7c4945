"""Would a nearest-neighbour vote over the training tickets add to the served blend? (Not adopted.)

    python scripts/benchmarks/knn_expert.py runs/small-data/NAME/SIZE ...   # each with bundle/, train.csv, test.csv

(the quickstart's run too, with its bundle and split files linked into one folder under those names).

The idea: a ticket that recurs (the same issue, written again) is best answered by the labels of its nearest
training tickets. For each run, the exported model's features (the first-token states the out-of-scope
detector reads, L2-normalised) of the training split (train.csv less the bundle's validation tickets),
validation and test tickets; each test ticket's k nearest training tickets vote with weights
exp(cosine / 0.1), and the vote's log-probabilities join the served logits as a third expert,

    s * ((1 - v) * served_logits + v * log(vote)),

with v and s chosen on the validation split by log-loss, as the bundle chooses its TF-IDF weight. Printed:
test accuracy and tickets routed at 95 % precision for the served model, the TF-IDF model, the vote alone and
the three-expert blend. Appends to docs/benchmarks/runs.jsonl (area "knn-expert").
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from common import publish, small_data_runs_arguments, table_figures  # noqa: E402

from classifier.bundle import read_examples  # noqa: E402
from classifier.evaluate import load_test_set, routed_at_target  # noqa: E402
from classifier.numerics import softmax  # noqa: E402
from classifier.predict import Outputs, Predictor  # noqa: E402

TARGET = 0.95
NEIGHBOURS = (5, 10, 20)
SIMILARITY_SCALE = 0.1  # the vote's weights: exp(cosine / this)
WEIGHTS = np.round(np.linspace(0.0, 1.0, 11), 2)
SCALES = (0.8, 1.0, 1.25)


def main() -> int:
    args = small_data_runs_arguments(__doc__.splitlines()[0])
    logging.disable(logging.WARNING)  # each bundle's load notes; the table is the output
    lines = ["| run, neighbours | test tickets | served | routed | TF-IDF | TF-IDF routed | vote alone | weight v | "
             "blend | blend routed |", "|" + " --- |" * 10]
    for run in args.runs:
        lines.extend(run_rows(run))
    body = "\n".join(lines)
    publish(args, "knn-expert", body, table_figures(body))
    return 0


def run_rows(run: Path) -> list[str]:
    predictor = Predictor.load(run / "bundle")
    labels = predictor.labels
    validation_texts, validation_labels = read_examples(run / "bundle", labels)
    training, _ = load_test_set(run / "train.csv", predictor.manifest, None)
    held = set(validation_texts)
    training = training.subset([i for i, text in enumerate(training.texts) if text not in held])
    test, _ = load_test_set(run / "test.csv", predictor.manifest, None)
    test = test.subset([i for i, label in enumerate(test.labels) if label in labels])  # a label it never saw

    def scored(texts: list[str]) -> tuple[Outputs, np.ndarray]:
        outputs = predictor.outputs(texts, cleaned=True, features=True)
        assert outputs.features is not None, "this bundle's model gives no features"
        return outputs, outputs.features / np.linalg.norm(outputs.features, axis=1, keepdims=True)

    truth = {name: np.array([labels.index(label) for label in names]) for name, names in
             (("train", training.labels), ("validation", validation_labels), ("test", test.labels))}
    _, train_features = scored(training.texts)
    validation, validation_features = scored(validation_texts)
    tested, test_features = scored(test.texts)
    served = {"validation": _served(predictor, validation), "test": _served(predictor, tested)}
    tfidf = tested.tfidf.astype(np.float64) if tested.tfidf is not None else None
    rows = []
    for k in NEIGHBOURS:
        vote = {name: _vote(features, train_features, truth["train"], len(labels), k)
                for name, features in (("validation", validation_features), ("test", test_features))}
        weight, scale = _fit(served["validation"], vote["validation"], truth["validation"])
        blended = scale * ((1 - weight) * served["test"] + weight * vote["test"])
        rows.append(f"| {run.parent.name}/{run.name} k={k} | {len(test)} | "
                    f"{_accuracy(served['test'], truth['test'])} | {_routed(served['test'], truth['test'])} | "
                    f"{_accuracy(tfidf, truth['test']) if tfidf is not None else ''} | "
                    f"{_routed(tfidf, truth['test']) if tfidf is not None else ''} | "
                    f"{_accuracy(vote['test'], truth['test'])} | {weight} | {_accuracy(blended, truth['test'])} | "
                    f"{_routed(blended, truth['test'])} |")
    return rows


def _served(predictor: Predictor, outputs: Outputs) -> np.ndarray:
    return np.log(predictor.probabilities(outputs.logits, outputs.tfidf).astype(np.float64))


def _vote(queries: np.ndarray, references: np.ndarray, reference_labels: np.ndarray, labels: int, k: int
          ) -> np.ndarray:
    """Log-probabilities of the similarity-weighted vote of each query's ``k`` nearest references."""
    similarity = queries @ references.T
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    votes = np.full((len(queries), labels), 1e-3)  # every label keeps a little: log(0) would veto
    for row, chosen in enumerate(nearest):
        np.add.at(votes[row], reference_labels[chosen], np.exp(similarity[row, chosen] / SIMILARITY_SCALE))
    return np.log(votes / votes.sum(axis=1, keepdims=True))


def _fit(served: np.ndarray, vote: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The vote's weight and the sharpness with the lowest validation log-loss (the smaller weight on a tie)."""
    def loss(weight: float, scale: float) -> float:
        probabilities = softmax(scale * ((1 - weight) * served + weight * vote))
        return float(-np.log(np.clip(probabilities[np.arange(len(truth)), truth], 1e-12, 1.0)).mean())

    losses = {(float(w), s): loss(w, s) for w in WEIGHTS for s in SCALES}
    return min(losses, key=lambda c: (round(losses[c], 6), c[0], abs(np.log(c[1]))))


def _accuracy(logits: np.ndarray, truth: np.ndarray) -> str:
    return f"{100 * (logits.argmax(axis=1) == truth).mean():.2f} %"


def _routed(logits: np.ndarray, truth: np.ndarray) -> int:
    return int(routed_at_target(softmax(logits).max(axis=1), (logits.argmax(axis=1) == truth).astype(float), TARGET))


if __name__ == "__main__":
    sys.exit(main())
