"""Several fields from one encoder (issue 22), side by side in one run on the bundled sample.

    python scripts/benchmarks/fields.py                  # data/tickets.csv, ticketclf train's defaults
    python scripts/benchmarks/fields.py --reuse          # keep the bundles of an earlier run

The sample is split once (``ticketclf split``: 80 % train, 20 % test, seeded). Two bundles are trained on
the same training file with the same options and exported: the label alone (category), and category +
priority + tags. On the test file:

- category accuracy of both (the shared encoder may cost the category at most 0.5 points);
- priority accuracy of the multi-field bundle against the TF-IDF baseline (the bundle's own baseline
  model, fitted on priority);
- tags micro-F1 against a one-vs-rest TF-IDF logistic regression, its per-tag thresholds chosen for F1 on
  a held-out tenth of the training file as the bundle chooses its own on its validation split;
- batch-1 latency of ``Predictor.predict`` on the served models, the two interleaved (target: the
  multi-field bundle at most 10 % slower).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, publish, record_arguments, time_interleaved  # noqa: E402

from classifier import bundle  # noqa: E402
from classifier.baseline import baseline_classifier, baseline_features, fit_baseline  # noqa: E402
from classifier.data import load_tickets, split_file, stratified_split  # noqa: E402
from classifier.export import export  # noqa: E402
from classifier.fields import choose_tag_thresholds, tag_matrix, tag_metrics  # noqa: E402
from classifier.options import DataOptions, TrainingOptions  # noqa: E402
from classifier.predict import Predictor  # noqa: E402
from classifier.train import train  # noqa: E402

FIELDS = {"field_columns": ("priority",), "tags_column": "tags"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "tickets.csv")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "fields-benchmark")
    parser.add_argument("--reuse", action="store_true", help="keep bundles an earlier run left in --work")
    parser.add_argument("--seed", type=int, default=TrainingOptions().seed, help="training seed (the split's is 0)")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = record_arguments(parser).parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    train_file, test_file = args.work / "train.csv", args.work / "test.csv"
    split_file(args.data, train_file, test_file, label_column="category", seed=0)
    bundles = {"category only": _bundle(args, "category", DataOptions(label_column="category")),
               "category + priority + tags": _bundle(args, "fields", DataOptions(label_column="category", **FIELDS))}
    test, _ = load_tickets(test_file, label_column="category", **FIELDS)
    training, _ = load_tickets(train_file, label_column="category", **FIELDS)
    predictors = {name: Predictor.load(path) for name, path in bundles.items()}
    figures: dict[str, Any] = {}
    lines = [f"sample: {len(training)} training tickets, {len(test)} test tickets ({args.data.name})", ""]
    for name, predictor in predictors.items():
        predicted = [p.label for p in predictor.predict(test.texts, cleaned=True)]
        figures[f"category_accuracy_{_key(name)}"] = accuracy = _accuracy(predicted, test.labels)
        lines.append(f"category accuracy, {name}: {100 * accuracy:.2f} %")
    multi = predictors["category + priority + tags"]
    lines += _priority(multi, training, test, figures) + _tags(multi, bundles["category + priority + tags"], training,
                                                             test, figures)
    lines += _latency(args, predictors, test.texts, figures)
    drop = 100 * (figures["category_accuracy_category_only"] - figures["category_accuracy_category_priority_tags"])
    figures["category_drop_points"] = round(drop, 2)
    lines.append(f"\ncategory: the shared encoder costs {drop:+.2f} points (target at most 0.5)")
    publish(args, "fields", "\n".join(lines), figures)
    return 0


def _bundle(args: argparse.Namespace, name: str, data_options: DataOptions) -> Path:
    path = args.work / f"{name}-seed{args.seed}"
    if not (args.reuse and (path / bundle.ONNX_DIR).is_dir()):
        train(args.work / "train.csv", path, TrainingOptions(seed=args.seed), data_options, overwrite=True)
        export(path)
    return path


def _priority(predictor: Predictor, training: Any, test: Any, figures: dict[str, Any]) -> list[str]:
    known = [i for i, value in enumerate(test.fields["priority"]) if value]
    predicted = [p.fields["priority"]["label"] for p in predictor.predict([test.texts[i] for i in known], cleaned=True)]
    truth = [test.fields["priority"][i] for i in known]
    labelled = [i for i, value in enumerate(training.fields["priority"]) if value]
    baseline = fit_baseline([training.texts[i] for i in labelled], [training.fields["priority"][i] for i in labelled])
    figures["priority_accuracy_model"] = model = _accuracy(predicted, truth)
    figures["priority_accuracy_tfidf"] = tfidf = _accuracy(baseline.predict([test.texts[i] for i in known]), truth)
    return ["", f"priority accuracy on {len(known)} test tickets: model {100 * model:.2f} %, "
                f"TF-IDF {100 * tfidf:.2f} %"]


def _tags(predictor: Predictor, bundle_dir: Path, training: Any, test: Any, figures: dict[str, Any]) -> list[str]:
    """The tags' micro-F1 of the bundle and of a one-vs-rest TF-IDF baseline, on the bundle's tags."""
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    spec = next(field for field in bundle.read_manifest(bundle_dir).fields or [] if field.kind == "tags")
    truth = tag_matrix(test.fields["tags"], spec.labels)
    given = predictor.predict(test.texts, cleaned=True)
    predicted = tag_matrix([[tag["tag"] for tag in p.tags or []] for p in given], spec.labels)
    model = tag_metrics(predicted, truth, spec.labels)
    fit, held = stratified_split(training, 0.1, seed=0)
    baseline = make_pipeline(baseline_features(), OneVsRestClassifier(baseline_classifier()))
    baseline.fit(fit.texts, tag_matrix(fit.fields["tags"], spec.labels))
    thresholds = choose_tag_thresholds(baseline.predict_proba(held.texts), tag_matrix(held.fields["tags"], spec.labels))
    tfidf = tag_metrics(baseline.predict_proba(test.texts) >= np.array(thresholds), truth, spec.labels)
    figures |= {"tags_micro_f1_model": model["micro_f1"], "tags_micro_f1_tfidf": tfidf["micro_f1"],
                "tags_macro_f1_model": model["macro_f1"], "tags_macro_f1_tfidf": tfidf["macro_f1"]}
    return [f"tags ({len(spec.labels)}) micro-F1: model {model['micro_f1']:.4f}, TF-IDF one-vs-rest "
            f"{tfidf['micro_f1']:.4f}; macro-F1 {model['macro_f1']:.4f} against {tfidf['macro_f1']:.4f}"]


def _latency(args: argparse.Namespace, predictors: dict[str, Predictor], texts: list[str],
             figures: dict[str, Any]) -> list[str]:
    items = texts[:args.latency_samples]
    calls = {name: (lambda text, p=predictor: p.predict([text], cleaned=True))
             for name, predictor in predictors.items()}
    timings = time_interleaved(calls, items, args.rounds)
    ratio = timings.relative("category + priority + tags", "category only")
    figures["latency_ratio_fields_vs_one"] = round(ratio, 4)
    engines = ", ".join(f"{name} {p.engine_kind}" for name, p in predictors.items())
    return ["", f"batch-1 latency, median of {args.rounds} interleaved rounds of {len(items)} tickets ({engines}): "
                + ", ".join(f"{name} {np.median(timings.times[name]):.2f} ms" for name in predictors)
                + f"; ratio {ratio:.3f} (target at most 1.10)"]


def _accuracy(predicted: Any, truth: Any) -> float:
    return float(np.mean(np.asarray(predicted) == np.asarray(truth)))


def _key(name: str) -> str:
    return "_".join(part for part in name.replace("+", " ").split())


if __name__ == "__main__":
    raise SystemExit(main())
