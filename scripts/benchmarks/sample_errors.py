"""Where the served model and the TF-IDF baseline go wrong on the sample, by the kind of ticket the generator wrote.

    python scripts/benchmarks/sample_errors.py runs/small-data/sample-seed-1/sample [more run folders]

A run folder is what ``small_data.py --sizes sample`` leaves: ``train.csv``, ``test.csv`` and ``bundle/``.
The kinds come from replaying ``scripts/generate_sample_data.py`` (seeded; the script checks that it reproduces
data/tickets.csv) and noting its draws: *borderline* (an issue agents file under either of two labels, written in
the voice of a label drawn independently of the one it was filed under), *content-free* (a quoted reply that adds
nothing), *second topic* (a side issue of another label), *plain* (the rest). For borderline tickets it also scores
the best a model could do from the training split: each borderline issue's most frequent label there.
Appends to docs/benchmarks/runs.jsonl (area "sample-errors").
"""

from __future__ import annotations

import csv
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from common import ROOT, publish, small_data_runs_arguments, table_figures  # noqa: E402

from classifier.blend import TfidfModel  # noqa: E402
from classifier.data import load_tickets  # noqa: E402
from classifier.predict import Predictor  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
import generate_sample_data as generator  # noqa: E402

KINDS = ("plain", "second topic", "content-free", "borderline")


def main() -> int:
    args = small_data_runs_arguments(__doc__.splitlines()[0])
    kinds = ticket_kinds()
    lines = ["| run | kind | test tickets | served wrong | TF-IDF wrong | training majority wrong |",
             "|" + " --- |" * 6]
    rows = []
    for run in args.runs:
        for row in measure(Path(run), kinds):
            rows.append(row)
            lines.append(f"| {row['run']} | {row['kind']} | {row['tickets']} | {row['served_wrong']} | "
                         f"{row['tfidf_wrong']} | {row.get('majority_wrong', '')} |")
    body = "\n".join(lines)
    publish(args, "sample-errors", body, table_figures(body) | {"rows": rows},
            notes="kinds from replaying scripts/generate_sample_data.py; training majority: each borderline "
                  "issue's most frequent label in the training split")
    return 0


def ticket_kinds() -> dict[str, dict[str, Any]]:
    """Each ticket id of data/tickets.csv: its kind, and for a borderline ticket its issue's first opener."""
    borderline = {id(issue): labels for labels, issue in generator.BORDERLINE}
    drawn: dict[str, Any] = {}
    kinds: list[dict[str, Any]] = []
    pick_issue, make_ticket, content_free = generator.pick_issue, generator.make_ticket, generator.CONTENT_FREE

    def noting_issue(rng: Any, category: Any) -> Any:
        issue, voice, second = pick_issue(rng, category)
        drawn.update(issue=issue.openers[0], borderline=id(issue) in borderline, second=second is not None)
        return issue, voice, second

    class NotingContentFree(tuple):
        def __getitem__(self, index: Any) -> Any:
            drawn["content_free"] = True
            return tuple.__getitem__(self, index)

    def noting_ticket(*args: Any, **kwargs: Any) -> dict[str, str]:
        drawn.clear()
        row = make_ticket(*args, **kwargs)
        kinds.append(dict(drawn))
        return row

    generator.pick_issue, generator.make_ticket = noting_issue, noting_ticket
    generator.CONTENT_FREE = NotingContentFree(content_free)
    try:
        rows = generator.generate(generator.DEFAULT_COUNT, generator.DEFAULT_SEED)
    finally:
        generator.pick_issue, generator.make_ticket, generator.CONTENT_FREE = pick_issue, make_ticket, content_free
    with open(ROOT / "data" / "tickets.csv", newline="", encoding="utf-8") as handle:
        if [row["body"] for row in rows] != [row["body"] for row in csv.DictReader(handle)]:
            raise SystemExit("scripts/generate_sample_data.py no longer reproduces data/tickets.csv")
    return {row["id"]: {"kind": _kind(drawn), "issue": drawn["issue"]} for row, drawn in zip(rows, kinds)}


def _kind(drawn: dict[str, Any]) -> str:
    if drawn.get("borderline"):
        return "borderline"
    if drawn.get("content_free"):
        return "content-free"
    return "second topic" if drawn.get("second") else "plain"


def measure(run: Path, kinds: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    served = Predictor.load(run / "bundle")
    test, _ = load_tickets(run / "test.csv", served.manifest.text, "category")
    labels = served.labels
    served_labels = [labels[i] for i in served.predict_proba(test.texts, cleaned=True).argmax(axis=1)]
    baseline = run / "bundle" / "baseline.npz"
    tfidf = TfidfModel.load(baseline).aligned(labels, baseline)
    tfidf_labels = [labels[i] for i in tfidf.logits(test.texts).argmax(axis=1)]
    majority = _borderline_majority(run / "train.csv", kinds)
    ids = test.ids
    rows = []
    for kind in KINDS:
        chosen = [i for i, ticket in enumerate(ids) if kinds[ticket]["kind"] == kind]
        row = {"run": run.parent.name, "kind": kind, "tickets": len(chosen),
               "served_wrong": sum(served_labels[i] != test.labels[i] for i in chosen),
               "tfidf_wrong": sum(tfidf_labels[i] != test.labels[i] for i in chosen)}
        if kind == "borderline":
            row["majority_wrong"] = sum(majority.get(kinds[ids[i]]["issue"]) != test.labels[i] for i in chosen)
        rows.append(row)
    return rows


def _borderline_majority(train_file: Path, kinds: dict[str, dict[str, Any]]) -> dict[str, str]:
    counts: dict[str, Counter] = {}
    with open(train_file, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if kinds[row["id"]]["kind"] == "borderline":
                counts.setdefault(kinds[row["id"]]["issue"], Counter())[row["category"]] += 1
    return {issue: count.most_common(1)[0][0] for issue, count in counts.items()}


if __name__ == "__main__":
    sys.exit(main())
