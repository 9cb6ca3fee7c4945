"""Reading and writing the CSV (and JSON Lines) ticket files tests make."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from classifier.text import MAX_CELL_CHARS


def write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    """``rows`` as a CSV file with their keys, in the first row's order, as its header."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    """The rows of a CSV file, as a spreadsheet reads it: a byte-order mark first is not part of the header."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON Lines file, one a line."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def cut_cell_file(path: Path) -> Path:
    """Two tickets, the second with a cell longer than a cell is read (an inline image's base64, say): what is
    left of it fits the model's window, yet the rest of the ticket was never read."""
    return write_csv(path, [{"id": "T-1", "subject": "Refund", "body": "charged twice"},
                            {"id": "T-2", "subject": "Refund", "body": "charged twice " + "x" * MAX_CELL_CHARS}])
