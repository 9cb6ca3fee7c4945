"""Split a labelled ticket export into a training file and a held-out test file, stratified by label.

    python scripts/split_holdout.py data/tickets.csv --test runs/test.csv --train runs/train.csv

Reads every format training reads (CSV with any delimiter or BOM, TSV, JSON, JSONL, gzipped) and
finds the label column the same way; both outputs are CSV with all the input's columns, so the
test file reads like the export it came from. A class with a single ticket, and rows without a
label, go to the training file (training reports them).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from classifier.columns import resolve_columns
from classifier.data import Tickets, check_flat, label_value, stratified_split
from classifier.errors import UserError
from classifier.readers import records_and_columns


def split(data: Path, train_path: Path, test_path: Path, label_column: str | None, text_columns: list[str] | None,
          test_fraction: float, seed: int) -> tuple[int, int]:
    """Write the two files; return how many rows each got."""
    if not 0 < test_fraction < 1:
        raise UserError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    if len({data.resolve(), train_path.resolve(), test_path.resolve()}) < 3:
        raise UserError(f"{data}: the input, --train and --test must be three different files")
    numbered, columns = records_and_columns(data)
    records = [record for _, record in numbered]
    # A JSON object's fields are also read as dotted columns (ticket.subject): those are the ones to keep.
    objects = {key for record in records for key, value in record.items() if isinstance(value, dict)}
    columns = [column for column in columns if column not in objects]
    mapping = resolve_columns(columns, data, text_columns, label_column)
    for row, record in numbered:  # training refuses a list there: a CSV must not hide it as text
        check_flat(record, (*mapping.text_columns, mapping.label_column), data, row)
    labels = [label_value(record.get(mapping.label_column)) for record in records]
    labelled = [i for i, value in enumerate(labels) if value]
    rows = Tickets([str(i) for i in labelled], [labels[i] for i in labelled], [str(i) for i in labelled])
    train, test = stratified_split(rows, test_fraction, seed)  # the split training itself uses
    test_rows = {int(i) for i in test.ids}
    if not test_rows:
        raise UserError(f"{data}: no class has two tickets, so none can be held out for testing")
    train_rows = [i for i in range(len(records)) if i not in test_rows]
    _write_csv(train_path, columns, [records[i] for i in train_rows])
    _write_csv(test_path, columns, [records[i] for i in sorted(test_rows)])
    return len(train_rows), len(test_rows)


def _write_csv(path: Path, columns: list[str], records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")  # objects: as dotted columns
        writer.writeheader()
        writer.writerows({key: json.dumps(value, ensure_ascii=False) if isinstance(value, list) else value
                          for key, value in record.items()} for record in records)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--label-column", help="default: detected as training does (category, label, queue, ...)")
    parser.add_argument("--text-columns", type=lambda value: [v.strip() for v in value.split(",") if v.strip()],
                        help="comma-separated; default: detected as training does")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        n_train, n_test = split(args.data, args.train, args.test, args.label_column, args.text_columns,
                                args.test_fraction, args.seed)
    except UserError as error:
        print(f"split_holdout: error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"{n_train} training and {n_test} test tickets from {args.data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
