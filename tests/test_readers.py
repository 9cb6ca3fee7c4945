"""Reading ticket files: every format and encoding a helpdesk or a spreadsheet writes, row numbers as
a person sees them, and clear errors naming the file and row."""

from __future__ import annotations

import gzip
import io
import json
import sys
import tracemalloc
from pathlib import Path

import pytest

from classifier.data import DataReport, load_tickets
from classifier.errors import UserError
from classifier.fields import parse_tags
from classifier.readers import MAX_JSON_DEPTH, STDIN, delimiter_of, read_records
from classifier.text import TextOptions


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
    # a column name holding a comma, as Jira's "Custom field (Team, Queue)", in a semicolon-separated export
    "comma-in-name.csv": b"subject;body;category;Custom field (Team, Queue)\nLogin;cannot sign in, again;access;IT\n",
    # Excel for Mac's "CSV (Macintosh)": lines end in a carriage return alone
    "mac.csv": b"sep=;\rsubject;body;category\rLogin;\"cannot sign in,\ragain\";access\r",
    "mac-no-sep-line.csv": b"subject;body;category\rLogin;cannot sign in, again;access\r",
}


SPREADSHEET_BODIES = {"utf16.csv": "cannot sign in", "trailing.csv": "cannot sign in",
                      "mac.csv": "cannot sign in,\ragain"}


@pytest.mark.parametrize("name", sorted(SPREADSHEET_EXPORTS))
def test_spreadsheet_exports_load(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(SPREADSHEET_EXPORTS[name])
    [(row, record)] = list(read_records(path))
    assert row == 2  # as a spreadsheet shows it: Excel hides the "sep=;" line
    assert record["subject"] == "Login" and record["category"] == "access"
    assert record["body"] == SPREADSHEET_BODIES.get(name, "cannot sign in, again")


def test_a_pandas_index_column_is_ignored_and_other_unnamed_columns_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(",text,category\n0,charged twice,billing\n1,locked out,login\n")  # DataFrame.to_csv()
    assert [record for _, record in read_records(path)] == [{"text": "charged twice", "category": "billing"},
                                                           {"text": "locked out", "category": "login"}]
    path.write_text("text,,category\ncharged twice,x,billing\n")
    with pytest.raises(UserError, match=r"row 1: the header has no name for column 2 \(B\); name it or delete it"):
        list(read_records(path))


def test_columns_of_one_name_are_read_as_one_their_cells_joined(tmp_path: Path) -> None:
    path = tmp_path / "jira.csv"  # Jira writes a column per label and per comment, all of one name
    path.write_text("Summary,Labels,Labels,Labels,Description,Comment,Comment\n"
                    "Charged twice,billing,vip,,refund please,first reply,second reply\n"
                    "Locked out,,,,cannot log in,,\n")
    assert [record for _, record in read_records(path)] == [
        {"Summary": "Charged twice", "Labels": "billing\nvip", "Description": "refund please",
         "Comment": "first reply\nsecond reply"},
        {"Summary": "Locked out", "Labels": "", "Description": "cannot log in", "Comment": ""}]
    tags, _ = parse_tags(["billing\nvip", "", "a|b\nc"], path, [2, 3, 4], "Labels")
    assert tags == [["billing", "vip"], [], ["a", "b", "c"]]
    # Such a column as the label: several values are no label, and would train as a class of their own.
    with pytest.raises(UserError, match=r"jira.csv, row 2, column 'Labels': holds several values \('billing\\nvip'\)"):
        load_tickets(path, TextOptions(fields=("Summary", "Description")), label_column="Labels")


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


def gzip_bomb(inflated_mib: int) -> bytes:
    """A small gzip file of a CSV that inflates to ``inflated_mib`` MiB (about 1,000 to 1 compressed)."""
    row = b"refund," + b"x" * 1000 + b",billing\n"
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb") as bomb:
        bomb.write(b"subject,body,category\n")
        for _ in range(inflated_mib * 2**20 // len(row)):
            bomb.write(row)
    return out.getvalue()


def test_a_gzip_bomb_is_refused_while_inflating_not_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("classifier.readers.MAX_FILE_BYTES", 2 * 2**20)
    path = tmp_path / "bomb.csv.gz"
    path.write_bytes(gzip_bomb(64))
    tracemalloc.start()
    try:
        with pytest.raises(UserError) as error:
            list(read_records(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(error.value) == (f"{path}: inflates to more than 2 MiB, the most a ticket file may hold (it is read "
                                "into memory whole); split it into smaller files")
    assert peak < 8 * 2**20  # the 64 MiB it inflates to were never in memory


def test_a_file_or_piped_input_over_the_size_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("classifier.readers.MAX_FILE_BYTES", 2**20)
    path = tmp_path / "big.csv"
    path.write_bytes(b"text,label\n" + b"charged twice,billing\n" * 50_000)
    with pytest.raises(UserError, match=r"big.csv: holds more than 1 MiB, the most a ticket file may hold"):
        list(read_records(path))
    for piped in (path.read_bytes(), gzip.compress(path.read_bytes())):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(piped)))
        with pytest.raises(UserError, match=r"<stdin>: (holds|inflates to) more than 1 MiB"):
            list(read_records(STDIN))
    monkeypatch.setattr("classifier.readers.MAX_FILE_BYTES", 2**21)  # under the limit: read as before
    assert len(list(read_records(path))) == 50_000
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(gzip.compress(path.read_bytes()))))
    assert len(list(read_records(STDIN))) == 50_000


DEEP = 100_000


@pytest.mark.parametrize(("name", "content"), [
    ("deep.json", "[" * DEEP + "]" * DEEP),
    ("deep.jsonl", '{"text": "a", "label": "x"}\n' + '{"text": ' + "[" * DEEP + "]" * DEEP + "}\n"),
    ("nested.json", '[{"text": "a", "label": "x", "meta": ' + '{"a": ' * 150 + "1" + "}" * 150 + "}]"),
], ids=["array-100000-deep", "jsonl-100000-deep", "object-150-deep"])
def test_json_nested_too_deep_is_one_user_error_not_a_recursion_error(tmp_path: Path, name: str, content: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / name
    path.write_text(content)
    row = {"deep.json": "", "deep.jsonl": ", row 2", "nested.json": ", row 1"}[name]
    message = (f"{path}{row}: JSON nested more than {MAX_JSON_DEPTH} levels deep (objects and lists inside each "
               "other); is it a ticket export?")
    with pytest.raises(UserError) as error:
        list(read_records(path))
    assert str(error.value) == message
    monkeypatch.setattr(sys, "stdin", io.StringIO(content))  # piped: its format told by the content
    with pytest.raises(UserError, match="JSON nested more than"):
        list(read_records(STDIN))


def test_json_nested_within_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "nested.json"
    depth = MAX_JSON_DEPTH - 1  # the record itself is the first level
    path.write_text('[{"text": "a", "label": "x", "meta": ' + '{"a": ' * depth + "1" + "}" * depth + "}]")
    [(_, record)] = list(read_records(path))
    assert record["text"] == "a" and "meta" + ".a" * depth in record


@pytest.mark.parametrize(("name", "content", "delimiter"), [
    ("export.csv", b"id;text;category\n1;a;b\n", ";"),
    ("export.csv.gz", gzip.compress("\ufeffid;text;category\n1;a;b\n".encode()), ";"),
    ("export.csv", b"sep=;\nid;text,more;category\n", ";"),  # Excel's line says it, whatever follows
    ("export.csv", "id\ttext\tcategory\n1\ta\tb\n".encode("utf-16"), "\t"),  # Excel's "Unicode text"
    ("export.csv", b"id,text,category\n1,a;b,c\n", ","),
    ("export.csv", b"Key;Summary;Custom field (Team, Queue)\n", ";"),  # more semicolons than commas
    ("export.csv", b'id,"Team; Queue; Area; Site",text\n', ","),  # semicolons in a quoted name do not count
    ("export.csv", b"id;text;category\r1;a, b;c\r", ";"),  # line ends of a carriage return alone
    ("export.tsv", b"id\ttext\n", "\t"),
    ("export.jsonl", b'{"text": "a;b"}\n', ","),
])
def test_the_delimiter_of_a_file_is_told_by_its_first_line(tmp_path: Path, name: str, content: bytes,
                                                           delimiter: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert delimiter_of(path) == delimiter
