"""Train the default encoder on BANKING77 and score it next to a TF-IDF baseline, in one run.

    python scripts/benchmarks/banking77.py                       # ticketclf train's defaults
    python scripts/benchmarks/banking77.py --set epochs=12 --set learning_rate=1.5e-4 --name "12 epochs"

Writes the bundle to runs/banking77-<name>, prints accuracy, macro-F1, wall time and peak
memory for both models and appends the run to docs/benchmarks/runs.jsonl (area "banking77-training").
BANKING77 lives outside the project (../shared/data/banking77) and is never copied in.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]  # the repository

from common import publish, record_arguments, table_figures  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

from classifier.baseline import load_baseline  # noqa: E402
from classifier.data import load_tickets  # noqa: E402
from classifier.manifest import Manifest  # noqa: E402
from classifier.options import TrainingOptions  # noqa: E402
from classifier.predict import Predictor  # noqa: E402
from classifier.text import TextOptions  # noqa: E402
from classifier.train import train  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "banking77"


def main() -> int:
    args = parse_args()
    options = apply_overrides(TrainingOptions(), args.set)
    output = ROOT / "runs" / f"banking77-{args.name.replace(' ', '-')}"
    test, _ = load_tickets(args.data / "test.csv", TextOptions(fields=("text",)), "category")

    started = time.perf_counter()
    train(args.data / "train.csv", output, options, overwrite=True)
    train_wall = time.perf_counter() - started
    model_peak = peak_rss_mib()
    predictor = Predictor.load(output, engine="torch")
    predicted = [predictor.labels[i] for i in predictor.predict_proba(test.texts, batch_size=64).argmax(axis=1)]
    model_scores = scores(test.labels, predicted)

    # Fitted by training on the same tickets the encoder saw, and kept in the bundle.
    baseline = load_baseline(output / predictor.manifest.baseline.file)
    baseline_scores = scores(test.labels, list(baseline.predict(test.texts)))

    rows = [
        ("fine-tuned MiniLM (`ticketclf train` " + (args.name if args.set else "defaults") + ")",
         model_scores, train_wall, model_peak),
        ("TF-IDF word+char + LogisticRegression", baseline_scores, None, None),
    ]
    report(args, options, predictor.manifest, rows, output)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train.csv and test.csv")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainingOptions field, e.g. epochs=10 (repeatable)")
    parser.add_argument("--name", default="default", help="short name of this configuration")
    return record_arguments(parser).parse_args()


def apply_overrides(options: TrainingOptions, overrides: list[str]) -> TrainingOptions:
    fields = {f.name: f for f in dataclasses.fields(options)}
    changes = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"unknown training option {name!r}; one of {', '.join(fields)}")
        current = getattr(options, name)
        changes[name] = (value.lower() in ("1", "true", "yes")) if isinstance(current, bool) else \
            type(current)(value) if current is not None else _number_or_text(value)
    return dataclasses.replace(options, **changes)


def _number_or_text(value: str) -> int | float | str:
    """An option whose default is None (max_length, learning_rate, base_model): its type from the value."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def scores(truth: list[str], predicted: list[str]) -> dict[str, float]:
    return {"accuracy": accuracy_score(truth, predicted), "macro_f1": f1_score(truth, predicted, average="macro")}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(args: argparse.Namespace, options: TrainingOptions, manifest: Manifest, rows: list, output: Path) -> None:
    training = manifest.training
    lines = [
        "| model | test accuracy | test macro-F1 | training wall time | peak RSS |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, result, wall, peak in rows:
        peak_text = f"{peak:.0f} MiB" if peak else "(same process)"
        wall_text = f"{wall / 60:.1f} min" if wall is not None else "(fitted by training)"
        lines.append(f"| {name} | {100 * result['accuracy']:.2f} % | {100 * result['macro_f1']:.2f} % | "
                     f"{wall_text} | {peak_text} |")
    overrides = " ".join(f"--set {item}" for item in args.set)
    settings = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("base_model", "resume")}
    settings["learning_rate"] = training.learning_rate  # as training used it (None: the encoder's default)
    notes = (
        f"Settings: {settings}; max length {manifest.max_length}, precision {training.precision_used}, "
        f"{manifest.data.train.rows_used} training / {manifest.data.validation.rows_used} "
        f"validation tickets (stratified 10 % split of train.csv), test.csv 3,080 tickets. "
        f"Best validation macro-F1 {training.validation_metrics['macro_f1']:.4f}; "
        f"Trainer time {training.train_seconds / 60:.1f} min. Bundle: `{output.relative_to(ROOT)}`.")
    command = f"python scripts/benchmarks/banking77.py --name '{args.name}' {overrides}".strip()
    body = "\n".join(lines) + "\n\n" + notes
    figures = table_figures(body) | {"best validation macro-F1": round(training.validation_metrics["macro_f1"], 4)}
    publish(args, "banking77-training", body, figures, command, notes)


if __name__ == "__main__":
    sys.exit(main())
