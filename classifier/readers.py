"""Read a ticket file into records: CSV, TSV, JSON Lines or a JSON array, optionally gzipped,
or standard input with its format told by the content.

Every problem the user can fix is raised as :class:`~classifier.errors.UserError` naming the
file, row (as a spreadsheet or editor shows it) and, where it helps, the line.

A file is read whole, so its size is bounded: at most :data:`MAX_FILE_BYTES`, checked while a gzipped
file or standard input is read (a small gzip file may inflate to gigabytes). JSON is nested at most
:data:`MAX_JSON_DEPTH` levels.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import re
import shlex
import sys
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from classifier.errors import UserError, where
from classifier.text import nested_fields

_HEAD_BYTES = 2**16  # a header line longer than this is not one
MAX_FILE_BYTES = 256 * 2**20  # a ticket file's content (after gunzip): read whole, it and its records stay in memory
MAX_JSON_DEPTH = 100  # objects and lists inside each other; a helpdesk export nests a few levels
_MAX_FIELD_CHARS = 64 * 1024 * 1024  # one CSV field; the whole file is in memory anyway
_READ_CHUNK = 1 << 20  # bytes read (or inflated) at a time, so a size limit is checked as the file comes in
STDIN = Path("<stdin>")  # standard input (a file given as "-"): read_records knows it by identity, messages by name
# Keys under which helpdesk APIs wrap their list of tickets ({"tickets": [...], "next_page": ...}); not
# "items" or "data", which a ticket may hold itself (an order's items).
_WRAPPER_KEYS = ("tickets", "results", "conversations")
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row_number, record)`` from a CSV/TSV/JSONL/JSON file, gzipped or not, or from
    standard input for ``STDIN`` (the format then told by the content).

    Row numbers are those a person sees: the row in a spreadsheet (the header is row 1), the
    line in a JSONL file, the 1-based position in a JSON array. A JSON record's nested
    objects are also read as dotted fields (``custom_fields.queue``).
    """
    if path is STDIN:
        text = _read_stdin()
        fmt = _sniff_format(text, path)
    else:
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: file not found")
        if path.is_dir():
            raise UserError(f"{path}: is a directory, expected a ticket file")
        fmt = _detect_format(path)
        text = _read_text(path)
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    if fmt in ("csv", "tsv"):
        yield from _read_delimited(path, text, "\t" if fmt == "tsv" else ",")
    elif fmt == "jsonl":
        yield from _read_jsonl(path, text)
    else:
        yield from _read_json_array(path, text)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def records_and_columns(path: str | Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """A file's (row, record) pairs and every column any record has, in first-seen order."""
    records = list(read_records(path))
    if not records:
        raise UserError(f"{path}: no tickets in file")
    return records, list(dict.fromkeys(key for _, record in records for key in record))


def _detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = _FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise UserError(f"{path}: unknown file type; expected .csv, .tsv, .jsonl, .json (optionally .gz)")
    return fmt


def _sniff_format(text: str, path: Path) -> str:
    """The format of a file that came without a name: JSON by its first character, else CSV or TSV."""
    start = text.lstrip()[:1]
    if start == "[":
        return "json"
    if start == "{":
        try:
            _loads(text, path)
        except json.JSONDecodeError:  # JSON Lines, if its first line is an object on its own (or is all there is)
            first_line, _, rest = text.strip().partition("\n")
            if not rest.strip():
                return "jsonl"  # one line: its error is reported with its column
            try:
                return "jsonl" if isinstance(_loads(first_line, path, 1), dict) else "json"
            except json.JSONDecodeError:
                return "json"  # reported where json.loads stops reading the whole
        return "json"
    header = _first_line(text.lstrip("\r\n"))
    tabs, commas = header.count("\t"), header.count(",")
    if tabs > commas or (tabs == commas == 0 and ";" not in header):
        return "tsv"  # also a single column: each line is read whole, commas and all
    return "csv"


def _read_stdin() -> str:
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("the ticket file is '-' but standard input is a terminal; pipe the file in "
                        "(... --file - < tickets.jsonl)")
    if not hasattr(sys.stdin, "buffer"):  # replaced by a text stream (an embedding program, a test)
        text = sys.stdin.read(MAX_FILE_BYTES + 1)
        if len(text) > MAX_FILE_BYTES:
            raise _too_big(STDIN, "holds")
        return text
    stream = sys.stdin.buffer
    head = stream.read(2)
    if head == b"\x1f\x8b":  # gzip's magic number
        try:
            with gzip.GzipFile(fileobj=_Prepended(head, stream), mode="rb") as inflated:
                raw = _read_limited(inflated, STDIN, "inflates to")
        except (OSError, EOFError, zlib.error) as error:
            raise UserError(f"{STDIN}: cannot read gzip data ({error})") from None
    else:
        raw = _read_limited(_Prepended(head, stream), STDIN, "holds")
    return _decode(raw, STDIN)


def _read_text(path: Path) -> str:
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path) as inflated:
                raw = _read_limited(inflated, path, "inflates to")
        elif path.stat().st_size > MAX_FILE_BYTES:  # refused before reading; a pipe (<(zcat ...)) tells no size
            raise _too_big(path, "holds")
        else:
            with open(path, "rb") as plain:
                raw = _read_limited(plain, path, "holds")
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot read file ({error})") from None
    return _decode(raw, path)


def _read_limited(stream: BinaryIO | gzip.GzipFile | _Prepended, path: Path, verb: str) -> bytearray:
    """All of ``stream``, read a chunk at a time and refused as soon as it passes :data:`MAX_FILE_BYTES`:
    a gzip bomb (4.6 MB inflating to 1 GB) stops there, not after filling the memory."""
    content = bytearray()
    while chunk := stream.read(_READ_CHUNK):
        content += chunk
        if len(content) > MAX_FILE_BYTES:
            raise _too_big(path, verb)
    return content


def _too_big(path: Path, verb: str) -> UserError:
    limit = MAX_FILE_BYTES
    size = f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit:,} bytes"
    return UserError(f"{path}: {verb} more than {size}, the most a ticket file may hold (it is read into memory "
                     "whole); split it into smaller files")


class _Prepended:
    """A binary stream with the bytes already read from its start (to sniff them) put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head, self._rest = head, rest

    def read(self, size: int = -1) -> bytes:
        head = self._head
        if not head:
            return self._rest.read(size)
        if 0 <= size < len(head):
            self._head = head[size:]
            return head[:size]
        self._head = b""
        return head + self._rest.read(-1 if size < 0 else size - len(head))

    def seek(self, offset: int, /) -> int:  # gzip asks for it, but only to rewind, which reading never does
        raise io.UnsupportedOperation("standard input cannot seek")


def _decode(raw: bytes | bytearray, path: Path) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode text"
        try:
            return raw.decode("utf-16").lstrip("\ufeff")
        except UnicodeDecodeError:
            raise UserError(f"{path}: starts as UTF-16 but is not valid UTF-16; re-export it as UTF-8") from None
    try:
        # A byte-order mark is not text: a file saved twice by tools that each add one starts with two, and
        # the second would become part of the first column's name.
        return raw.decode("utf-8-sig").lstrip("\ufeff")
    except UnicodeDecodeError as error:
        line = len(re.findall(rb"\r\n|\r|\n", raw[: error.start])) + 1  # before parsing: a line, not a row
        convert = "" if path is STDIN or path.suffix.lower() == ".gz" else ", or convert it: iconv -f WINDOWS-1252 " \
            f"-t UTF-8 {shlex.quote(str(path))} > {shlex.quote(str(path.with_stem(path.stem + '-utf8')))}"
        raise UserError(f"{path}, line {line}: bytes are not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset "
                        f"{error.start}; Windows-1252 or Latin-1?); re-export the file as UTF-8 (Excel: Save As, "
                        f"'CSV UTF-8'){convert}") from None


def _read_delimited(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV/TSV file, numbered as a spreadsheet shows them: the header is row 1, and a
    cell holding line breaks does not add rows (errors about the file's syntax give the line too).

    Also read as spreadsheets write them: Excel's "sep=;" first line, semicolons where the
    locale's decimal mark is a comma, an empty column after a trailing delimiter, long fields;
    and as pandas writes them, with an unnamed index column first.
    """
    first_line = _first_line(text)
    delimiter, skipped = _delimiter(first_line, delimiter)
    text = text[len(first_line):].removeprefix("\r").removeprefix("\n") if skipped else text
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_FIELD_CHARS))  # pasted logs pass Python's 128 KiB
    reader = csv.reader(_lines(text), delimiter=delimiter, strict=True)
    start = 1 + skipped  # the line the next record starts on
    number = 0  # the row before it, as a spreadsheet numbers rows ("sep=;" is not shown as one)
    try:
        header = [name.strip() for name in next(reader, [])]  # [] for a file that is only "sep=;"
        while header and header[-1] == "":  # a trailing delimiter on the header line
            header.pop()
        # pandas' to_csv writes its row index as a first column with no name: not part of the tickets.
        skip = 1 if len(header) > 1 and header[0] == "" else 0
        header = header[skip:]
        if unnamed := [index + 1 + skip for index, name in enumerate(header) if not name]:
            places = ", ".join(f"{index} ({_column_letter(index)})" for index in unnamed[:5])
            them = "it" if len(unnamed) == 1 else "them"
            raise UserError(f"{where(path, 1)}: the header has no name for column {places}; name {them} or "
                            f"delete {them}")
        unique = len(set(header)) == len(header)
        start, number = reader.line_num + 1 + skipped, 1
        for number, row in enumerate(reader, start=2):
            line, start = start, reader.line_num + 1 + skipped
            row = row[skip:]
            if not any(cell.strip() for cell in row):
                continue
            if any(cell.strip() for cell in row[len(header):]):
                raise UserError(f"{_row_and_line(path, number, line)}: {len(row)} fields but the header has "
                                f"{len(header)}; is a text field missing its quotes?")
            cells = row + [""] * (len(header) - len(row))  # missing cells at the end: empty
            yield number, dict(zip(header, cells, strict=False)) if unique else _joined(header, cells)
    except csv.Error as error:
        raise UserError(f"{_row_and_line(path, number + 1, start)}: malformed CSV ({error})") from None


def _joined(header: list[str], cells: list[str]) -> dict[str, Any]:
    """A row whose header repeats names, as Jira writes a column per label or comment ("Labels", "Labels"): one
    column per name, its non-empty cells joined by line breaks (a tags column splits on them)."""
    record: dict[str, Any] = {}
    for name, cell in zip(header, cells, strict=False):
        if name not in record or not record[name].strip():
            record[name] = cell
        elif cell.strip():
            record[name] += "\n" + cell
    return record


def _column_letter(number: int) -> str:
    """A spreadsheet's name for column ``number`` (from 1): A ... Z, AA ..."""
    letters = ""
    while number:
        number, rest = divmod(number - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _delimiter(first_line: str, by_name: str) -> tuple[str, int]:
    """The delimiter a delimited file's rows use, from its first line (without its line end) and the one its
    name implies, and how many lines come before the header: Excel's "sep=;" line, or a .csv file whose header
    has more semicolons (or tabs) than commas outside quotes, as in "Key;Summary;Custom field (Team, Queue)"."""
    if re.fullmatch(r"sep=(.)", first_line):
        return first_line[4], 1
    if by_name == ",":
        unquoted = re.sub(r'"[^"]*"', "", first_line)
        # Tabs: Excel's "Unicode text", saved as .csv.
        most = max((";", "\t"), key=unquoted.count)
        if unquoted.count(most) > unquoted.count(","):
            return most, 0
    return by_name, 0


def _first_line(text: str) -> str:
    """Text up to its first line end: a line feed, or a carriage return alone, as Excel for Mac ends lines."""
    return re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]


def delimiter_of(path: str | Path) -> str:
    """The delimiter of a CSV or TSV file's rows as reading finds it, so that a file written from it can be
    opened the same way (a semicolon-locale Excel shows a comma-separated file as one column); "," for
    other formats."""
    path = Path(path)
    fmt = _detect_format(path)
    if fmt not in ("csv", "tsv"):
        return ","
    return _delimiter(_header_line(path), "\t" if fmt == "tsv" else ",")[0]


def starts_with_bom(path: str | Path) -> bool:
    """Whether a file starts with UTF-8's byte-order mark, as Excel writes "CSV UTF-8": a file written from it
    keeps one, or the Excel it goes back to reads its accents in the machine's code page."""
    return _head(Path(path)).startswith(codecs.BOM_UTF8)


def _head(path: Path) -> bytes:
    """A file's first bytes (gunzipped where it is gzipped)."""
    try:
        with gzip.open(path) if path.suffix.lower() == ".gz" else open(path, "rb") as handle:
            return handle.read(_HEAD_BYTES)
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot read file ({error})") from None


def _header_line(path: Path) -> str:
    """A file's first line, read from its start only; bytes that are not text become replacement characters,
    as only its delimiters matter."""
    head = _head(path)
    codec = "utf-16" if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    return _first_line(head.decode(codec, errors="replace").lstrip("\ufeff"))


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` with their line ends, as ``io.StringIO(text, newline="")`` gives them, one at a
    time: a StringIO would hold the whole file again, at four bytes a character."""
    return (match.group() for match in _LINE.finditer(text))


def _row_and_line(path: Path, row: int, line: int) -> str:
    """Where a CSV record is, for a spreadsheet and, when cells with line breaks make it differ, an editor."""
    return where(path, row) + (f" (line {line})" if line != row else "")


def _read_jsonl(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # Only "\n" ends a record: str.splitlines() would also split at U+2028, U+0085 or a form
    # feed, which JSON allows unescaped inside strings (text pasted from Word or the web).
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = _loads(line, path, line_number)
        except json.JSONDecodeError as error:
            raise UserError(f"{where(path, line_number)}: invalid JSON ({error.msg} at column {error.colno})") from None
        yield line_number, _require_object(record, path, line_number)


def _read_json_array(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """A JSON array of tickets, a wrapper object holding one, or one ticket object."""
    try:
        data = _loads(text, path)
    except json.JSONDecodeError as error:
        hint = ("; several JSON values one after another? JSON Lines takes one object per line (jq -c)"
                if error.msg == "Extra data" else "")
        raise UserError(f"{where(path, error.lineno)}: invalid JSON ({error.msg}){hint}") from None
    if isinstance(data, dict):
        wrapped = _wrapped_tickets(data)
        data = [data] if wrapped is None else wrapped
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of ticket objects")
    for position, record in enumerate(data, start=1):
        yield position, _require_object(record, path, position)


def _loads(text: str, path: Path, row: int | None = None) -> Any:
    """``json.loads``, with JSON nested deeper than Python's recursion limit (about 1,000 levels; a
    100,000-deep file is 200 KB) refused in one line like :func:`_check_depth` refuses JSON past
    :data:`MAX_JSON_DEPTH`."""
    try:
        return json.loads(text)
    except RecursionError:  # the decoder stops at Python's recursion limit, unwinding cleanly
        raise _too_deep(path, row) from None


def _check_depth(record: dict[str, Any], path: Path, row: int) -> None:
    """Refuse a record nested deeper than :data:`MAX_JSON_DEPTH`, walked without recursion: its fields
    are later flattened by recursive code (:func:`~classifier.text.nested_fields`)."""
    stack: list[tuple[Any, int]] = [(record, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep(path, row)
        inner: Iterable[Any] = value.values() if isinstance(value, dict) else value
        stack.extend((item, depth + 1) for item in inner if isinstance(item, (dict, list)))


def _too_deep(path: Path, row: int | None) -> UserError:
    return UserError(f"{where(path, row)}: JSON nested more than {MAX_JSON_DEPTH} levels deep (objects and lists "
                     "inside each other); is it a ticket export?")


def _wrapped_tickets(data: dict[str, Any]) -> list[Any] | None:
    """The tickets list of a wrapper object, or None for an object that is itself a ticket.

    A wrapper keeps its tickets under a known key ("tickets", "results", ...), maybe next to
    other lists it sideloads; or it holds one list of objects and no text of its own (a count,
    page links). A ticket has text, and may hold lists of objects too (comments, custom fields).
    """
    for key in _WRAPPER_KEYS:
        if isinstance(data.get(key), list):
            return data[key]
    lists = [value for value in data.values()
             if isinstance(value, list) and value and all(isinstance(item, dict) for item in value)]
    own_text = any(isinstance(value, str) and not value.startswith(("http://", "https://"))
                   for value in data.values())
    return lists[0] if len(lists) == 1 and not own_text else None


def _require_object(record: Any, path: Path, row: int) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise UserError(f"{where(path, row)}: expected a JSON object, got {type(record).__name__}")
    _check_depth(record, path, row)
    return nested_fields(record)  # custom_fields.queue: a column like the others

