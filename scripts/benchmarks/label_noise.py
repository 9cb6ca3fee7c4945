"""How well ``classifier.label_review`` finds wrong labels: 5 % random label noise injected into BANKING77.

    python scripts/benchmarks/label_noise.py                 # flagging, and the TF-IDF baseline's accuracies
    python scripts/benchmarks/label_noise.py --fine-tune     # also 3 fine-tunes with `ticketclf train` defaults

A fixed share of BANKING77's training tickets (seeded) gets another label, drawn uniformly from the
other classes. The review (TF-IDF out-of-fold, ``ticketclf review-labels``) flags tickets; the script
reports precision and recall of the flagged tickets against the flipped ones, then the test accuracy
of models trained on the noisy labels, on the noisy labels less the flagged tickets, and on the clean
labels, side by side: the TF-IDF baseline (seconds) and, with ``--fine-tune``, the default encoder
(about 10 minutes each on 2 cores). Appends the run to docs/benchmarks/runs.jsonl (area "label-noise").
BANKING77 lives outside the project (../shared/data/banking77) and is never copied in: the noisy
training files of the fine-tunes are written to a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import ROOT, publish, record_arguments, table_figures  # noqa: E402

from classifier.baseline import fit_baseline  # noqa: E402
from classifier.data import Tickets, load_tickets  # noqa: E402
from classifier.label_review import DEFAULT_FOLDS, review_labels  # noqa: E402
from classifier.text import TextOptions  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "banking77"
TRAININGS = ("noisy labels", "noisy labels less the flagged tickets", "clean labels")


def main() -> int:
    args = parse_args()
    read = TextOptions(fields=("text",))
    clean, _ = load_tickets(args.data / "train.csv", read, "category")
    test, _ = load_tickets(args.data / "test.csv", read, "category")
    noisy, flipped = with_noise(clean, args.noise, args.seed)

    started = time.perf_counter()
    review = review_labels(noisy.texts, noisy.labels, noisy.ids, folds=args.folds)
    review_seconds = time.perf_counter() - started
    flagged = {finding.index for finding in review.flagged}
    found = len(flagged & flipped)
    precision, recall = found / max(1, len(flagged)), found / len(flipped)
    right_suggestions = sum(clean.labels[f.index] == f.suggested for f in review.flagged if f.index in flipped)

    kept = [i for i in range(len(noisy)) if i not in flagged]
    trainings = dict(zip(TRAININGS, (noisy, noisy.subset(kept), clean)))
    accuracies = {"TF-IDF baseline": {name: baseline_accuracy(tickets, test) for name, tickets in trainings.items()}}
    if args.fine_tune:
        accuracies["fine-tuned MiniLM (`ticketclf train` defaults)"] = {
            name: fine_tuned_accuracy(tickets, test, name) for name, tickets in trainings.items()}
    report(args, len(clean), len(flipped), len(flagged), found, precision, recall, right_suggestions,
           review_seconds, len(review.duplicates), accuracies)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train.csv and test.csv")
    parser.add_argument("--noise", type=float, default=0.05, help="share of training labels flipped")
    parser.add_argument("--seed", type=int, default=21, help="seed of the flips")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="folds of the review")
    parser.add_argument("--fine-tune", action="store_true", help="also fine-tune the default encoder on each")
    return record_arguments(parser).parse_args()


def with_noise(tickets: Tickets, share: float, seed: int) -> tuple[Tickets, set[int]]:
    """The tickets with ``share`` of them (seeded) relabelled to another class drawn uniformly."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(tickets.labels))
    flipped = rng.choice(len(tickets), size=round(share * len(tickets)), replace=False)
    labels = list(tickets.labels)
    for i in flipped:
        labels[i] = str(rng.choice([label for label in classes if label != labels[i]]))
    return tickets.relabelled(labels), {int(i) for i in flipped}


def baseline_accuracy(train: Tickets, test: Tickets) -> float:
    model = fit_baseline(train.texts, train.labels)
    return float(np.mean(model.predict(test.texts) == np.array(test.labels)))


def fine_tuned_accuracy(train: Tickets, test: Tickets, name: str) -> float:
    from classifier.predict import Predictor
    from classifier.train import train as fine_tune

    with tempfile.TemporaryDirectory(prefix="label-noise-") as scratch:
        path = Path(scratch) / "train.csv"
        with open(path, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["text", "category"])
            writer.writerows(zip(train.texts, train.labels))
        started = time.perf_counter()
        bundle = fine_tune(path, Path(scratch) / "bundle")
        assert bundle is not None
        print(f"{name}: fine-tuned in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        predictor = Predictor.load(bundle, engine="torch")
        predicted = predictor.predict_proba(test.texts, batch_size=64).argmax(axis=1)
        accuracy = float(np.mean(np.array(predictor.labels)[predicted] == np.array(test.labels)))
        print(f"{name}: test accuracy {accuracy:.2%}", flush=True)  # each as it comes: the three take 30 minutes
        return accuracy


def report(args: argparse.Namespace, tickets: int, flipped: int, flagged: int, found: int, precision: float,
           recall: float, right_suggestions: int, seconds: float, duplicates: int,
           accuracies: dict[str, dict[str, float]]) -> None:
    percent: Callable[[float], str] = lambda value: f"{100 * value:.2f} %"  # noqa: E731
    lines = ["| figure | value |", "| --- | --- |",
             f"| flagged tickets | {flagged:,} ({found:,} of them flipped) |",
             f"| precision of the flagged tickets | {precision:.3f} |",
             f"| recall of the flipped tickets | {recall:.3f} |",
             f"| flipped and flagged, suggested label the true one | {right_suggestions:,} of {found:,} |",
             f"| review time ({args.folds} folds) | {seconds:.1f} s |", "",
             "| model | " + " | ".join(f"test accuracy, {name}" for name in TRAININGS) + " | recovered |",
             "| --- | " + " | ".join("---" for _ in TRAININGS) + " | --- |"]
    for model, scores in accuracies.items():
        noisy, cleaned, clean = (scores[name] for name in TRAININGS)
        recovered = (cleaned - noisy) / (clean - noisy) if clean != noisy else float("nan")
        lines.append(f"| {model} | " + " | ".join(percent(scores[name]) for name in TRAININGS) +
                     f" | {recovered:.2f} |")
    notes = (f"BANKING77 train.csv ({tickets:,} tickets), {args.noise:.0%} of labels flipped at random (seed "
             f"{args.seed}): {flipped:,}; test.csv 3,080 tickets. {duplicates} more tickets listed as "
             "near-duplicates labelled otherwise (not counted as flagged). Recovered: the share of the accuracy "
             "the noise cost that removing the flagged tickets gives back.")
    body = "\n".join(lines) + "\n\n" + notes
    options = f" --noise {args.noise} --seed {args.seed} --folds {args.folds}" + " --fine-tune" * args.fine_tune
    publish(args, "label-noise", body, table_figures(body), f"python scripts/benchmarks/label_noise.py{options}",
            notes)


if __name__ == "__main__":
    sys.exit(main())
