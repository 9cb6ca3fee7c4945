"""Reading ticket files: every format and encoding a helpdesk or a spreadsheet writes, row numbers as
a person sees them, and clear errors naming the file and row."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from classifier.data import DataReport, load_tickets
from classifier.errors import UserError
from classifier.readers import read_records


def test_corrupt_gzip_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(b"text,label\n" * 50)[:-20] + b"garbage-garbage-garb")
    with pytest.raises(UserError, match="cannot read file"):
        load_tickets(path)


def test_csv_rows_are_numbered_as_a_spreadsheet_shows_them(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"  # a cell with line breaks is one row in a spreadsheet, three lines in an editor
    path.write_text('subject,body,category\nHi,"line one\nline two\nline three",billing\n,,billing\n'
                    'Bye,"a\nb",login,extra\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"t.csv, row 4 \(line 6\): 4 fields but the header has 3"):
        load_tickets(path)
    path.write_text('subject,body,category\nHi,"line one\nline two\nline three",billing\n<p></p>,,billing\n'
                    'Bye,x,login\n', encoding="utf-8")
    report = DataReport()
    tickets, _ = load_tickets(path, report=report)
    assert report.dropped["no text after cleaning"] == [f"{path}, row 3"]
    assert tickets.ids == ["2", "4"]  # no id column: the row number


SPREADSHEET_EXPORTS = {
    "utf16.csv": "subject,body,category\r\nLogin,cannot sign in,access\r\n".encode("utf-16"),
    # Excel's "Unicode text" is UTF-16 with tabs, often saved with a .csv name
    "unicode-text.csv": "subject\tbody\tcategory\r\nLogin\tcannot sign in, again\taccess\r\n".encode("utf-16"),
    "semicolons.csv": b"subject;body;category\nLogin;cannot sign in, again;access\n",  # comma-decimal locales
    "sep-line.csv": b"sep=;\nsubject;body;category\nLogin;cannot sign in, again;access\n",
    "trailing.csv": b"subject,body,category,\nLogin,cannot sign in,access,\n",  # a trailing delimiter
}


@pytest.mark.parametrize("name", sorted(SPREADSHEET_EXPORTS))
def test_spreadsheet_exports_load(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(SPREADSHEET_EXPORTS[name])
    [(row, record)] = list(read_records(path))
    assert row == 2  # as a spreadsheet shows it: Excel hides the "sep=;" line
    assert record["subject"] == "Login" and record["category"] == "access"
    assert record["body"] in ("cannot sign in", "cannot sign in, again")


def test_a_pandas_index_column_is_ignored_and_other_unnamed_columns_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(",text,category\n0,charged twice,billing\n1,locked out,login\n")  # DataFrame.to_csv()
    assert [record for _, record in read_records(path)] == [{"text": "charged twice", "category": "billing"},
                                                           {"text": "locked out", "category": "login"}]
    path.write_text("text,,category\ncharged twice,x,billing\n")
    with pytest.raises(UserError, match=r"row 1: header has empty or repeated column names: \['text', '', "):
        list(read_records(path))


def test_long_fields_and_multi_line_records_are_read(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    log = "x" * 200_000  # a pasted log: over Python's default 128 KiB field limit
    path.write_text(f'subject,body,category\nLogs,"first line\nsecond line\nthird",bug\nCrash,"{log}",bug\n')
    assert [(row, record["body"][:10]) for row, record in read_records(path)] == [(2, "first line"), (3, "x" * 10)]


def test_json_lines_may_hold_unicode_line_separators_inside_strings(tmp_path: Path) -> None:
    rows = [{"text": "pasted\u2028from Word\u0085and\x0cthe web", "label": "x"}, {"text": "b", "label": "y"}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\r\n" for row in rows), encoding="utf-8")
    assert [record for _, record in read_records(path)] == rows


def test_bad_json_lines_are_located(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n', encoding="utf-8")
    with pytest.raises(UserError, match=r"t.jsonl, row 2: invalid JSON"):
        list(read_records(path))
    path.write_text('{"text": "a", "label": "x"}\n["not", "an", "object"]\n', encoding="utf-8")
    with pytest.raises(UserError, match="row 2: expected a JSON object, got list"):
        list(read_records(path))


def test_missing_file_directory_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found"):
        list(read_records(tmp_path / "nope.csv"))
    with pytest.raises(UserError, match="is a directory"):
        list(read_records(tmp_path))
    (tmp_path / "t.xlsx").write_bytes(b"PK")
    with pytest.raises(UserError, match="unknown file type"):
        list(read_records(tmp_path / "t.xlsx"))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_doubled_byte_order_mark_leaves_the_first_column_its_name(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "t.csv"  # saved by two tools in turn, each adding its own mark
    content = "subject,body,category\nLogin,cannot sign in,access\n"
    path.write_bytes(("\ufeff\ufeff" + content).encode("utf-8") if encoding == "utf-8"
                     else ("\ufeff" + content).encode("utf-16"))  # UTF-16's encoder adds one mark itself
    [(_, record)] = list(read_records(path))
    assert record == {"subject": "Login", "body": "cannot sign in", "category": "access"}
