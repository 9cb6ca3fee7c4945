"""The served model against the TF-IDF baseline, from a few hundred tickets to all of BANKING77, in one run each.

    python scripts/benchmarks/small_data.py                          # BANKING77 subsets 500, 1k, 2k and all
    python scripts/benchmarks/small_data.py --sizes sample           # the quickstart's split of data/tickets.csv
    python scripts/benchmarks/small_data.py --sizes 500,1000 --set epochs=40 --name "40 epochs"
    python scripts/benchmarks/small_data.py --sizes sample --variant lp-ft --name lp-ft   # variants.py
    python scripts/benchmarks/small_data.py --sizes cards,transfers,top-ups   # 8 confusable intents x 40 tickets

For each size: a class-balanced subset of BANKING77's train.csv (seeded; 500 tickets is 6 or 7 per intent), trained
with ``ticketclf train``'s defaults (or ``--set`` overrides), exported (the export decides int8 or fp32),
and evaluated on all 3,080 test tickets, with the TF-IDF baseline the bundle keeps scored on the same tickets.
``sample`` is the quickstart: data/tickets.csv split 80/20, category with priority and tags.
Rows: the served model (the blend of classifier.blend), the fine-tuned model alone (same engine) and the
baseline: accuracy and the share of tickets routed at 95 % precision; each gap with the 95 % interval of the
evaluation's paired bootstrap over the test tickets. Appends to docs/benchmarks/runs.jsonl
(area "small-data").
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import variants  # noqa: E402
from banking77 import DATA, apply_overrides  # noqa: E402
from common import ROOT, publish, record_arguments, table_figures  # noqa: E402

from classifier.data import load_tickets, split_file  # noqa: E402
from classifier.evaluate import evaluate  # noqa: E402
from classifier.export import export  # noqa: E402
from classifier.options import DataOptions, TrainingOptions  # noqa: E402
from classifier.predict import Predictor  # noqa: E402
from classifier.train import train  # noqa: E402

SAMPLE = ROOT / "data" / "tickets.csv"
# Small exports of few, confusable queues: 8 BANKING77 intents that share their words, 40 training tickets
# each (seeded), scored on all their test tickets (40 each).
FEW_QUEUES = {
    "cards": ["card_arrival", "card_delivery_estimate", "get_physical_card", "order_physical_card",
              "getting_spare_card", "card_linking", "activate_my_card", "card_about_to_expire"],
    "transfers": ["pending_transfer", "transfer_timing", "transfer_not_received_by_recipient", "failed_transfer",
                  "declined_transfer", "cancel_transfer", "balance_not_updated_after_bank_transfer",
                  "transfer_into_account"],
    "top-ups": ["pending_top_up", "top_up_failed", "top_up_reverted", "top_up_limits", "topping_up_by_card",
                "top_up_by_card_charge", "verify_top_up", "automatic_top_up"],
}
FEW_QUEUES_TICKETS = 40


def main() -> int:
    args = parse_args()
    options = apply_overrides(TrainingOptions(), args.set)
    work = ROOT / "runs" / "small-data" / args.name.replace(" ", "-")
    rows = [measure(size, options, work / size, args.variant, args.validation_fraction)
            for size in args.sizes.split(",")]
    lines = ["| data | training tickets | served: accuracy, routed at 95 % | model alone | TF-IDF baseline | "
             "served minus baseline | blend weight | training time |", "|" + " --- |" * 8]
    for row in rows:
        lines.append(f"| {row['data']} | {row['tickets']} | {row['served']:.2f} %, {row['served_routed']:.1f} % "
                     f"({row['engine']}) | {row['alone']:.2f} % | {row['baseline']:.2f} %, "
                     f"{row['baseline_routed']:.1f} % | {_gap(row['gap']['accuracy'])}, "
                     f"{_gap(row['gap']['routed'])} routed | {row['weight']:.2f} | "
                     f"{row['minutes']:.1f} min |")
    overrides = " ".join(f"--set {item}" for item in args.set)
    variant = f" --variant {args.variant}" if args.variant else ""
    fraction = f" --validation-fraction {args.validation_fraction}" if args.validation_fraction else ""
    command = (f"python scripts/benchmarks/small_data.py --sizes {args.sizes} --name '{args.name}'{variant}{fraction} "
               f"{overrides}").strip()
    body = "\n".join(lines)
    publish(args, "small-data", body, table_figures(body) | {"rows": rows}, command,
            "served: the model the export marked for serving, blended as the manifest says; routed: share of test "
            "tickets at or above the confidence threshold that reaches 95 % precision")
    return 0


def measure(size: str, options: TrainingOptions, work: Path, variant: str | None = None,
            validation_fraction: float | None = None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    data_options = DataOptions(validation_fraction=validation_fraction)
    if size == "sample":
        train_file, test_file = work / "train.csv", work / "test.csv"
        split_file(SAMPLE, train_file, test_file)  # the quickstart's split (ticketclf split's defaults)
        data_options = DataOptions(label_column="category", field_columns=("priority",), tags_column="tags",
                                   validation_fraction=validation_fraction)
    elif size in FEW_QUEUES:
        train_file, test_file = few_queues(FEW_QUEUES[size], work)
    else:
        test_file = DATA / "test.csv"
        train_file = DATA / "train.csv"
        if size != "all":
            train_file = balanced_subset(DATA / "train.csv", int(size), work / "train.csv")
    bundle = work / "bundle"
    started = time.perf_counter()  # a variant's warm-up counts as training time
    options = variants.apply(variant, train_file, options, data_options, work)
    train(train_file, bundle, options, data_options, overwrite=True)
    minutes = (time.perf_counter() - started) / 60
    if variants.exported(variant):
        export(bundle)
    report = evaluate(bundle, test_file, work / "report")
    served = Predictor.load(bundle)
    test, _ = load_tickets(test_file, served.manifest.text, "category")
    alone = served.logits(test.texts, cleaned=True).argmax(axis=1)
    alone_accuracy = float((alone == [served.labels.index(label) for label in test.labels]).mean())
    baseline = report["baseline"]["metrics"]
    variants.reset()
    name = {"sample": "sample (quickstart split)", **{queues: f"BANKING77 8 {queues} intents" for queues in FEW_QUEUES}}
    return {"data": name.get(size, f"BANKING77 {size}"),
            "tickets": served.manifest.data.train.rows_used, "engine": served.engine_kind,
            "served": 100 * report["metrics"]["accuracy"], "served_routed": 100 * _routed(report["metrics"]),
            "alone": 100 * alone_accuracy, "baseline": 100 * baseline["accuracy"],
            "baseline_routed": 100 * _routed(baseline), "gap": report["baseline"]["difference"],
            "weight": served.manifest.blend_weight, "minutes": minutes}


def balanced_subset(source: Path, size: int, target: Path, seed: int = 0) -> Path:
    """``size`` rows of ``source`` taken in turn from each class (shuffled, seeded), written as CSV: a team
    with few tickets per queue, every queue above --min-class-count."""
    rows = _read_rows(source)
    by_class: dict[str, list[dict]] = {}
    for row in random.Random(seed).sample(rows, len(rows)):
        by_class.setdefault(row["category"], []).append(row)
    taken = [row for turn in itertools.zip_longest(*by_class.values()) for row in turn if row][:size]
    return _write_rows(target, taken)


def few_queues(intents: list[str], work: Path, seed: int = 0) -> tuple[Path, Path]:
    """A training file of FEW_QUEUES_TICKETS tickets of each intent (seeded) and a test file of all their test
    tickets, both written into ``work``."""
    paths = []
    for name, count in (("train.csv", FEW_QUEUES_TICKETS), ("test.csv", None)):
        rows, rng, kept = _read_rows(DATA / name), random.Random(seed), []
        for intent in intents:
            of_intent = [row for row in rows if row["category"] == intent]
            kept += rng.sample(of_intent, count) if count else of_intent
        paths.append(_write_rows(work / name, kept))
    return paths[0], paths[1]


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _gap(interval: dict) -> str:
    """A served-minus-baseline difference with its 95 % interval (paired bootstrap over the test tickets)."""
    return f"{100 * interval['value']:+.2f} points ({100 * interval['low']:+.1f} to {100 * interval['high']:+.1f})"


def _routed(metrics: dict) -> float:
    return (metrics.get("at_target") or {}).get("coverage", 0.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,1000,2000,all",
                        help="comma-separated: BANKING77 training tickets, 'all', or 'sample'")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainingOptions field, e.g. epochs=30 (repeatable)")
    parser.add_argument("--name", default="default", help="short name of this configuration")
    parser.add_argument("--variant", choices=variants.VARIANTS, help="one change to training (variants.py)")
    parser.add_argument("--validation-fraction", type=float,
                        help="share of the training file held out for validation (default: training's own sizing)")
    return record_arguments(parser).parse_args()


if __name__ == "__main__":
    sys.exit(main())
