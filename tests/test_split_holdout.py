"""scripts/split_holdout.py: the quickstart's held-out test file, from any export training reads."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "split_holdout.py"


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_a_semicolon_export_with_a_bom_is_split_by_its_detected_label_column(tmp_path: Path) -> None:
    rows = [f"T-{i};Subject {i};body {i};{'billing' if i % 2 else 'login'}" for i in range(20)]
    rows += ["T-20;Lonely;the only one;legal", "T-21;No label;nothing here;"]
    export = tmp_path / "export.csv"
    export.write_bytes("\ufeffid;subject;body;Queue\n".encode() + "\n".join(rows).encode() + b"\n")
    result = run(export, "--train", tmp_path / "train.csv", "--test", tmp_path / "test.csv", "--test-fraction", "0.25")
    assert result.returncode == 0, result.stderr
    train, test = read(tmp_path / "train.csv"), read(tmp_path / "test.csv")
    assert list(test[0]) == ["id", "subject", "body", "Queue"]
    assert Counter(row["Queue"] for row in test) == {"billing": 2, "login": 2}  # a quarter of each class
    assert sorted(row["id"] for row in train + test) == sorted(f"T-{i}" for i in range(22))  # nothing lost
    assert {"T-20", "T-21"} <= {row["id"] for row in train}  # a one-ticket class and an unlabelled row


def test_nested_json_is_written_as_the_dotted_columns_training_reads(tmp_path: Path) -> None:
    export = tmp_path / "export.jsonl"
    export.write_text("".join(f'{{"ticket": {{"subject": "s{i}", "body": "b{i}"}}, "group": "{"ab"[i % 2]}"}}\n'
                              for i in range(10)))
    result = run(export, "--train", tmp_path / "train.csv", "--test", tmp_path / "test.csv",
                 "--label-column", "group")
    assert result.returncode == 0, result.stderr
    assert list(read(tmp_path / "test.csv")[0]) == ["ticket.subject", "ticket.body", "group"]


def test_numeric_labels_including_zero_are_stratified(tmp_path: Path) -> None:
    export = tmp_path / "export.jsonl"
    export.write_text("".join(f'{{"text": "ticket {i}", "label": {i % 2}}}\n' for i in range(20)))
    result = run(export, "--train", tmp_path / "train.csv", "--test", tmp_path / "test.csv", "--test-fraction", "0.3")
    assert result.returncode == 0, result.stderr
    assert Counter(row["label"] for row in read(tmp_path / "test.csv")) == {"0": 3, "1": 3}


def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    export.write_text("text,category\nhello,a\nbye,b\n")
    listed = tmp_path / "listed.jsonl"
    listed.write_text('{"text": ["charged", "twice"], "category": "billing"}\n')
    for args, message in ((("--label-column", "queue"), "label column 'queue' not found"),
                          (("--test-fraction", "1.5"), "--test-fraction must be between 0 and 1"),
                          (("--train", export), "must be three different files"),
                          (("--train", tmp_path / "test.csv"), "must be three different files"),
                          ((), "no class has two tickets")):
        result = run(export, "--train", tmp_path / "train.csv", "--test", tmp_path / "test.csv", *args)
        assert result.returncode == 2 and message in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    for data, message in ((tmp_path / "missing.csv", "file not found"),
                          (listed, "listed.jsonl, row 1, column 'text': holds a JSON list")):
        result = run(data, "--train", tmp_path / "train.csv", "--test", tmp_path / "test.csv")
        assert result.returncode == 2 and message in result.stderr
