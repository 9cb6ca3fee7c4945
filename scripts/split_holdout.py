"""Split a labelled CSV into a training file and a held-out test file, stratified by label.

    python scripts/split_holdout.py data/tickets.csv --test runs/test.csv --train runs/train.csv

All columns are kept, so the test file reads like the export it came from.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from sklearn.model_selection import train_test_split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--label-column", default="category")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.data, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames or [], list(reader)
    train, test = train_test_split(rows, test_size=args.test_fraction, random_state=args.seed,
                                   stratify=[row[args.label_column] for row in rows])
    for path, part in ((args.train, train), (args.test, test)):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=fields)
            writer.writeheader()
            writer.writerows(part)
    print(f"{len(train)} training and {len(test)} test tickets from {args.data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
