"""Load a labelled ticket export, map its columns, clean it, check it and split it.

Reads CSV, TSV, JSON Lines and JSON arrays, optionally gzipped. Every problem the
user can fix is raised as :class:`~classifier.errors.UserError` naming the file,
row and column. The :class:`DataReport` says what was dropped, merged or suspicious.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import json
import os
import random
import re
import sys
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from classifier.errors import UserError, where
from classifier.text import TEXT_COLUMN_GUESSES, TextOptions, nested_fields, ticket_text

LABEL_COLUMN_GUESSES: tuple[str, ...] = ("label", "category", "queue", "intent", "class", "topic", "type")
ID_COLUMN_GUESSES: tuple[str, ...] = ("id", "ticket_id", "ticket id", "key")
OTHER_LABEL = "other"
_LISTED_CLASSES = 10  # rare classes named in an error; a wrong label column has thousands
_WHOLE_FLOAT = re.compile(r"([-+]?\d+)\.0+")  # "3.0": how floats spell a whole-number label
_MAX_FIELD_CHARS = 64 * 1024 * 1024  # one CSV field; the whole file is in memory anyway
STDIN = Path("<stdin>")  # standard input (a file given as "-"): read_records knows it by identity, messages by name
# Keys under which helpdesk APIs wrap their list of tickets ({"tickets": [...], "next_page": ...}); not
# "items" or "data", which a ticket may hold itself (an order's items).
_WRAPPER_KEYS = ("tickets", "results", "conversations")
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}


@dataclass
class Tickets:
    """Cleaned, labelled tickets from one file, ready for a model."""

    texts: list[str]
    labels: list[str]
    ids: list[str]
    source: dict[str, Any] = field(default_factory=dict)  # path, sha256, rows

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> Tickets:
        return Tickets([self.texts[i] for i in indices], [self.labels[i] for i in indices],
                       [self.ids[i] for i in indices], dict(self.source, rows_used=len(indices)))


@dataclass
class DataReport:
    """What happened to the data on its way to the model; printed and stored in the bundle."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> locations
    duplicates_removed: int = 0
    conflicting_texts: list[dict[str, Any]] = field(default_factory=list)
    merged_into_other: dict[str, int] = field(default_factory=dict)
    other_label: str = OTHER_LABEL  # the data's own spelling of the class rare ones merge into
    merged_label_spellings: dict[str, str] = field(default_factory=dict)  # e.g. "Billing" -> "billing"
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    shared_texts_between_splits: int = 0
    split: dict[str, Any] = field(default_factory=dict)

    def drop(self, reason: str, location: str) -> None:
        self.dropped.setdefault(reason, []).append(location)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        # Counted before duplicates are removed and the split is made (both reported below).
        lines = [f"{name}: {info['rows_read']} rows read, {info['rows_with_text_and_label']} with text and a label"
                 for name, info in self.files.items()]
        for reason, locations in self.dropped.items():
            shown = ", ".join(locations[:5]) + (" ..." if len(locations) > 5 else "")
            lines.append(f"dropped {len(locations)} rows ({reason}): {shown}")
        if self.duplicates_removed:
            lines.append(f"removed {self.duplicates_removed} exact duplicates (same text and label)")
        if self.conflicting_texts:
            lines.append(f"{len(self.conflicting_texts)} identical texts carry conflicting labels "
                         f"(kept; see reports/data_report.json)")
        if self.merged_label_spellings:
            spellings = ", ".join(f"{k!r} -> {v!r}" for k, v in self.merged_label_spellings.items())
            lines.append(f"labels differing only in case or number format counted as one: {spellings}")
        if self.merged_into_other:
            merged = ", ".join(f"{k} ({v})" for k, v in self.merged_into_other.items())
            lines.append(f"merged rare classes into '{self.other_label}': {merged}")
        if self.shared_texts_between_splits:
            lines.append(f"warning: {self.shared_texts_between_splits} texts appear in both training "
                         "and validation data")
        if self.split:
            lines.append(f"split: {self.split}")
        return lines


@dataclass(frozen=True)
class ColumnMapping:
    text_columns: tuple[str, ...]
    label_column: str | None
    id_column: str | None


# ---------------------------------------------------------------- reading files


def read_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row_number, record)`` from a CSV/TSV/JSONL/JSON file, gzipped or not, or from
    standard input for ``STDIN`` (the format then told by the content).

    Row numbers are those a person sees: the row in a spreadsheet (the header is row 1), the
    line in a JSONL file, the 1-based position in a JSON array. A JSON record's nested
    objects are also read as dotted fields (``custom_fields.queue``).
    """
    if path is STDIN:
        text = _read_stdin()
        fmt = _sniff_format(text)
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


def _detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = _FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise UserError(f"{path}: unknown file type; expected .csv, .tsv, .jsonl, .json (optionally .gz)")
    return fmt


def _sniff_format(text: str) -> str:
    """The format of a file that came without a name: JSON by its first character, else CSV or TSV."""
    start = text.lstrip()[:1]
    if start == "[":
        return "json"
    if start == "{":
        try:
            json.loads(text)
        except json.JSONDecodeError:  # JSON Lines, if its first line is an object on its own (or is all there is)
            first_line, _, rest = text.strip().partition("\n")
            if not rest.strip():
                return "jsonl"  # one line: its error is reported with its column
            try:
                return "jsonl" if isinstance(json.loads(first_line), dict) else "json"
            except json.JSONDecodeError:
                return "json"  # reported where json.loads stops reading the whole
        return "json"
    header = text.lstrip("\n").split("\n", 1)[0]
    tabs, commas = header.count("\t"), header.count(",")
    if tabs > commas or (tabs == commas == 0 and ";" not in header):
        return "tsv"  # also a single column: each line is read whole, commas and all
    return "csv"


def _read_stdin() -> str:
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("the ticket file is '-' but standard input is a terminal; pipe the file in "
                        "(... --file - < tickets.jsonl)")
    if not hasattr(sys.stdin, "buffer"):  # replaced by a text stream (an embedding program, a test)
        return sys.stdin.read()
    raw = sys.stdin.buffer.read()
    if raw.startswith(b"\x1f\x8b"):  # gzip's magic number
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise UserError(f"{STDIN}: cannot read gzip data ({error})") from None
    return _decode(raw, STDIN)


def _read_text(path: Path) -> str:
    try:
        raw = gzip.open(path).read() if path.suffix.lower() == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot read file ({error})") from None
    return _decode(raw, path)


def _decode(raw: bytes, path: Path) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode text"
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise UserError(f"{path}: starts as UTF-16 but is not valid UTF-16; re-export it as UTF-8") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1  # before parsing: a line, not a row
        raise UserError(f"{path}, line {line}: bytes are not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset "
                        f"{error.start}; Windows-1252 or Latin-1?); re-export the file as UTF-8") from None


def _read_delimited(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV/TSV file, numbered as a spreadsheet shows them: the header is row 1, and a
    cell holding line breaks does not add rows (errors about the file's syntax give the line too).

    Also read as spreadsheets write them: Excel's "sep=;" first line, semicolons where the
    locale's decimal mark is a comma, an empty column after a trailing delimiter, long fields;
    and as pandas writes them, with an unnamed index column first.
    """
    first_line, _, rest = text.partition("\n")
    skipped = 0
    if re.fullmatch(r"sep=(.)\r?", first_line):
        delimiter, text, skipped = first_line[4], rest, 1
    elif delimiter == "," and "," not in first_line and ";" in first_line:
        delimiter = ";"
    elif delimiter == "," and "," not in first_line and "\t" in first_line:  # Excel's "Unicode text", as .csv
        delimiter = "\t"
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_FIELD_CHARS))  # pasted logs pass Python's 128 KiB
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    start = 1 + skipped  # the line the next record starts on
    number = 0  # the row before it, as a spreadsheet numbers rows ("sep=;" is not shown as one)
    try:
        header = [name.strip() for name in next(reader, [])]  # [] for a file that is only "sep=;"
        while header and header[-1] == "":  # a trailing delimiter on the header line
            header.pop()
        # pandas' to_csv writes its row index as a first column with no name: not part of the tickets.
        skip = 1 if len(header) > 1 and header[0] == "" else 0
        header = header[skip:]
        if len(set(header)) != len(header) or "" in header:
            raise UserError(f"{where(path, 1)}: header has empty or repeated column names: {header}")
        start, number = reader.line_num + 1 + skipped, 1
        for number, row in enumerate(reader, start=2):
            line, start = start, reader.line_num + 1 + skipped
            row = row[skip:]
            if not any(cell.strip() for cell in row):
                continue
            if any(cell.strip() for cell in row[len(header):]):
                raise UserError(f"{_row_and_line(path, number, line)}: {len(row)} fields but the header has "
                                f"{len(header)}; is a text field missing its quotes?")
            yield number, dict(zip(header, row + [""] * (len(header) - len(row))))
    except csv.Error as error:
        raise UserError(f"{_row_and_line(path, number + 1, start)}: malformed CSV ({error})") from None


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
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{where(path, line_number)}: invalid JSON ({error.msg} at column {error.colno})") from None
        yield line_number, _require_object(record, path, line_number)


def _read_json_array(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """A JSON array of tickets, a wrapper object holding one, or one ticket object."""
    try:
        data = json.loads(text)
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
    return nested_fields(record)  # custom_fields.queue: a column like the others


# ---------------------------------------------------------------- columns


def resolve_columns(columns: Iterable[str], path: str | Path, text_columns: Sequence[str] | None = None,
                    label_column: str | None = None, require_label: bool = True) -> ColumnMapping:
    """Check the requested columns exist, or guess them from common helpdesk names."""
    available = list(dict.fromkeys(columns))
    lower = {name.lower(): name for name in available}

    nested: dict[str, list[str]] = {}  # "queue" -> ["custom_fields.queue"]: fields of nested JSON objects
    for name in available:
        if "." in name:
            nested.setdefault(name.rsplit(".", 1)[1].lower(), []).append(name)
    # What messages list: not the objects themselves ("ticket"), whose fields ("ticket.subject") are listed.
    objects = {name[:index] for name in available for index, char in enumerate(name) if char == "."}
    listed = [name for name in available if name not in objects]

    def find(name: str, look_inside: bool = True) -> str | None:
        """A column by name (any case), else, with ``look_inside``, the one nested field of that name."""
        if name in available or name.lower() in lower:
            return name if name in available else lower[name.lower()]
        matches = nested.get(name.lower(), []) if look_inside else []
        return matches[0] if len(matches) == 1 else None

    def guess(groups: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
        """The first group of guessed names all found at the top level, else (only then) inside objects."""
        for look_inside in (False, True):
            for group in groups:
                found = tuple(find(name, look_inside) for name in group)
                if all(found):
                    return found  # type: ignore[return-value]
        return ()

    if text_columns:
        missing = [name for name in text_columns if find(name) is None]
        if missing:
            also = (f" (nor label column {label_column!r}: name it with --label-column)"
                    if label_column and find(label_column) is None else "")  # both in one run, not two
            raise UserError(f"{path}: text column {missing[0]!r} not found{also}; columns are {listed}; check "
                            "the names, or name the file's text columns with --text-columns")
        texts = tuple(find(name) for name in text_columns)
    else:
        texts = guess(TEXT_COLUMN_GUESSES)
        if not texts:
            raise UserError(f"{path}: no text column found among {listed}; "
                            "name them with --text-columns (e.g. subject,body)")
    if label_column:
        label = find(label_column)
        if label is None:
            raise UserError(f"{path}: label column {label_column!r} not found; columns are {listed}; "
                            "name the file's label column with --label-column")
    else:
        label = next(iter(guess([(name,) for name in LABEL_COLUMN_GUESSES])), None)
        if label is None and require_label:
            raise UserError(f"{path}: no label column found among {listed}; name it with --label-column")
    if label is not None and label in texts:
        raise UserError(f"{path}: column {label!r} is both a text column and the label column; name the "
                        "label with --label-column and the text with --text-columns")
    # The id at the top level, else beside the text in its object ("ticket.id" next to "ticket.subject"):
    # not any nested id, which may be the requester's.
    parents = {name.rpartition(".")[0] for name in texts}
    parent = parents.pop() if len(parents) == 1 else ""
    places = ("", f"{parent}.") if parent else ("",)
    ident = next((found for place in places for name in ID_COLUMN_GUESSES
                  if (found := find(place + name, look_inside=False))), None)
    return ColumnMapping(texts, label, ident)  # type: ignore[arg-type]


# ---------------------------------------------------------------- loading


def load_tickets(path: str | Path, text_options: TextOptions | None = None, label_column: str | None = None,
                 report: DataReport | None = None, require_label: bool = True,
                 ) -> tuple[Tickets, TextOptions]:
    """Load, map and clean one file; rows without text or label are dropped and reported.

    ``text_options.fields`` names the text columns; empty means detect them. Returns the
    tickets and the text options with the resolved column names, which
    is what a bundle stores so prediction reads the same fields.
    """
    path = Path(path)
    report = report if report is not None else DataReport()
    records, columns = records_and_columns(path)
    text_options = text_options or TextOptions()
    mapping = resolve_columns(columns, path, text_options.fields, label_column, require_label)
    # Stored lower-case, since prediction matches field names case-insensitively (classifier.text).
    options = replace(text_options, fields=tuple(name.lower() for name in mapping.text_columns))
    texts, labels, ids = [], [], []
    for row, record, text in _cleaned_rows(records, mapping, text_options, path):
        label = label_value(record.get(mapping.label_column)) if mapping.label_column else ""
        if not text:
            report.drop("no text after cleaning", where(path, row))
        elif mapping.label_column and not label:
            report.drop("no label", where(path, row, mapping.label_column))
        else:
            texts.append(text)
            labels.append(label)
            ids.append(_row_id(record, mapping.id_column, row))
    if not texts:
        raise UserError(f"{path}: none of {len(records)} rows has both text and a label")
    source = {"path": os.path.abspath(path), "sha256": file_sha256(path), "rows_read": len(records),
              "rows_used": len(texts), "label_column": mapping.label_column}  # evaluation reads the same column
    report.files[path.name] = {"rows_read": len(records), "rows_with_text_and_label": len(texts),
                               "sha256": source["sha256"]}
    return Tickets(texts, labels, ids, source), options


def with_text_columns(text_options: TextOptions, columns: Sequence[str] | None) -> TextOptions:
    """A model's text options reading a file's own columns instead of the model's fields: as many
    columns as the model has fields, in its order, or one column holding the whole ticket."""
    if not columns:
        return text_options
    fields = text_options.record_fields
    if len(columns) not in (1, len(fields)):
        wanted = (f"{len(fields)} text fields ({', '.join(fields)}); give {len(fields)} columns in that order, or "
                  "one with the whole ticket" if len(fields) > 1 else f"one text field ({fields[0]}); give one column")
        raise UserError(f"--text-columns: the model reads {wanted}; got {len(columns)}")
    return replace(text_options, fields=tuple(columns))


def read_tickets_to_classify(path: str | Path, text_options: TextOptions,
                             text_columns: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(id, cleaned text)`` for every row of an unlabelled file (``-``: standard input), in file order.

    Reads ``text_columns`` (the file's names for the bundle's fields, see :func:`with_text_columns`),
    else the bundle's text fields, or a ``text`` column alone when the file has none of them
    (as ``POST /classify`` accepts ``{"text": ...}`` for any bundle). The id is the file's id
    column, else the row number. A row with nothing left after cleaning keeps its place with
    an empty text, so that no row is silently lost.
    """
    path = STDIN if path == "-" else Path(path)  # the string "-"; a Path named "-" is a file
    records, columns = records_and_columns(path)
    text_options = with_text_columns(text_options, text_columns)
    fields = text_options.record_fields
    lower_columns = {name.lower() for name in columns}
    if not text_columns and not lower_columns & {name.lower() for name in fields} and "text" in lower_columns:
        fields = ("text",)
    mapping = replace(resolve_columns(columns, path, fields, require_label=False), label_column=None)  # none read
    return [(_row_id(record, mapping.id_column, row), text)
            for row, record, text in _cleaned_rows(records, mapping, text_options, path)]


def _cleaned_rows(records: list[tuple[int, dict[str, Any]]], mapping: ColumnMapping, text_options: TextOptions,
                  path: Path) -> Iterator[tuple[int, dict[str, Any], str]]:
    """``(row, record, cleaned text)`` per record, text fields read with the file's own spelling."""
    reading = replace(text_options, fields=tuple(mapping.text_columns))
    for row, record in records:
        check_flat(record, (*mapping.text_columns, mapping.label_column), path, row)
        yield row, record, ticket_text(record, reading)


def check_flat(record: dict[str, Any], columns: Iterable[str | None], path: Path, row: int) -> None:
    """Text and label fields must be text or numbers: a nested JSON object or list would be read
    as its Python spelling ("{'subject': ...}") and trained on as if it were the ticket."""
    for column in columns:
        value = record.get(column) if column else None
        if isinstance(value, (dict, list)):
            kind = "object" if isinstance(value, dict) else "list"
            inside = next((name for name in record if name.startswith(f"{column}.")), None)
            way = f"name a field inside it with a dot (e.g. '{inside}'), or" if inside else "use another column or"
            raise UserError(f"{where(path, row, column)}: holds a JSON {kind}, not text; {way} flatten the export")


def _row_id(record: dict[str, Any], id_column: str | None, row: int) -> str:
    """The record's id from the id column, or its row number where it has none."""
    value = record.get(id_column) if id_column else None
    return str(row) if value is None or str(value).strip() == "" else str(value)


def records_and_columns(path: str | Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """A file's (row, record) pairs and every column any record has, in first-seen order."""
    records = list(read_records(path))
    if not records:
        raise UserError(f"{path}: no tickets in file")
    return records, list(dict.fromkeys(key for _, record in records for key in record))


def label_value(value: Any) -> str:
    """A label cell as text: stripped, and empty for a missing value (None, NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


# ---------------------------------------------------------------- checks and split


def deduplicate(tickets: Tickets, report: DataReport) -> Tickets:
    """Drop exact duplicates (same text, same label); report texts with conflicting labels."""
    seen: set[tuple[str, str]] = set()
    keep: list[int] = []
    labels_by_text: dict[str, set[str]] = defaultdict(set)
    for index, (text, label) in enumerate(zip(tickets.texts, tickets.labels)):
        labels_by_text[text].add(label)
        if (text, label) not in seen:
            seen.add((text, label))
            keep.append(index)
    report.duplicates_removed += len(tickets) - len(keep)
    report.conflicting_texts.extend({"text": text[:200], "labels": sorted(labels)}
                                    for text, labels in labels_by_text.items() if len(labels) > 1)
    return tickets.subset(keep)


def check_classes(tickets: Tickets, min_count: int, merge_rare: bool, report: DataReport,
                  path: str | Path) -> Tickets:
    """Refuse (or merge into ``other``) classes with fewer than ``min_count`` tickets."""
    counts = Counter(tickets.labels)
    rare = {label: n for label, n in counts.items() if n < min_count}
    if rare and not merge_rare:
        smallest = sorted(rare.items(), key=lambda kv: kv[1])
        listed = ", ".join(f"{label!r} ({n})" for label, n in smallest[:_LISTED_CLASSES])
        listed += f" and {len(rare) - _LISTED_CLASSES} more" if len(rare) > _LISTED_CLASSES else ""
        classes = f"{len(rare)} of {len(counts)} classes {'has' if len(rare) == 1 else 'have'}"
        hint = ("add examples, lower --min-class-count, or pass --merge-rare-classes"
                if len(rare) <= len(counts) // 2 else  # most classes tiny: more likely the wrong column
                "is --label-column the column of categories? Otherwise add examples, lower --min-class-count, "
                "or pass --merge-rare-classes")
        raise UserError(f"{path}: {classes} fewer than {min_count} tickets: {listed}; {hint}")
    if rare:
        other = report.other_label = other_label(counts)
        report.merged_into_other.update({label: n for label, n in rare.items() if label != other})
        tickets = merge_into_other(tickets, rare, other)
        merged = tickets.labels.count(other)
        if merged < min_count:
            raise UserError(f"{path}: merging the rare classes gives '{other}' only {merged} "
                            f"ticket{'' if merged == 1 else 's'}, fewer "
                            f"than {min_count}; add examples or lower --min-class-count")
    if len(set(tickets.labels)) < 2:
        raise UserError(f"{path}: only one class ({tickets.labels[0]!r}); a classifier needs at least two")
    return tickets


def stratified_split(tickets: Tickets, fraction: float, seed: int) -> tuple[Tickets, Tickets]:
    """Hold out ``fraction`` of each class (at least one ticket) with a seeded shuffle."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(tickets.labels):
        by_label[label].append(index)
    rng = random.Random(seed)
    train, held_out = [], []
    for label in sorted(by_label):
        indices = by_label[label]
        rng.shuffle(indices)
        # Every class keeps at least one training ticket, and gets one validation ticket if it can.
        n_held = min(len(indices) - 1, max(1, round(len(indices) * fraction)))
        held_out += indices[:n_held]
        train += indices[n_held:]
    return tickets.subset(sorted(train)), tickets.subset(sorted(held_out))


@dataclass
class PreparedData:
    train: Tickets
    validation: Tickets
    labels: list[str]
    text_options: TextOptions
    report: DataReport


def prepare_data(train_path: str | Path, validation_path: str | Path | None = None, *,
                 text_options: TextOptions | None = None, label_column: str | None = None,
                 validation_fraction: float = 0.1, min_class_count: int = 5, merge_rare_classes: bool = False,
                 seed: int = 42) -> PreparedData:
    """Everything between a ticket export and a model: load, clean, check, split."""
    if not 0 < validation_fraction < 1:
        raise UserError(f"validation fraction must be between 0 and 1, got {validation_fraction}")
    report = DataReport()
    train, options = load_tickets(train_path, text_options, label_column, report)
    train = match_label_spellings(train, _most_common_spellings(train.labels), report)
    train = check_classes(deduplicate(train, report), min_class_count, merge_rare_classes, report, train_path)
    if validation_path is None:
        train, validation = stratified_split(train, validation_fraction, seed)
        report.split = {"method": "stratified", "fraction": validation_fraction, "seed": seed}
    else:
        validation, _ = load_tickets(validation_path, options, label_column, report)
        known = set(train.labels)
        validation = relabel_like_training(validation, known, report.merged_into_other, report.other_label, report)
        validation = _keep_training_labels(validation, known, report, validation_path)
        report.split = {"method": "file", "path": str(validation_path)}
    labels = sorted(set(train.labels))
    report.class_counts = {"train": dict(Counter(train.labels)), "validation": dict(Counter(validation.labels))}
    report.shared_texts_between_splits = len(set(train.texts) & set(validation.texts))
    return PreparedData(train, validation, labels, options, report)


def match_label_spellings(tickets: Tickets, known: Iterable[str], report: DataReport) -> Tickets:
    """Spell each label as ``known`` does when they differ only in case ("Billing " in one export,
    "billing" in another are one class) or as a spreadsheet writes a whole number ("3.0" for "3");
    the changes go into the report. A label spelled exactly as one in ``known`` is left alone."""
    known = sorted(set(known))
    spelling: dict[str, str] = {}
    for label in known:
        spelling.setdefault(_label_key(label), label)
    renamed = {label: spelling[_label_key(label)] for label in sorted(set(tickets.labels) - set(known))
               if _label_key(label) in spelling}
    if not renamed:
        return tickets
    report.merged_label_spellings.update(renamed)
    return Tickets(tickets.texts, [renamed.get(label, label) for label in tickets.labels], tickets.ids,
                   tickets.source)


def _most_common_spellings(labels: Sequence[str]) -> list[str]:
    """One spelling per label (see :func:`match_label_spellings`): the one most tickets use (ties:
    the first in sort order)."""
    counts = Counter(labels)
    best: dict[str, str] = {}
    for label in sorted(counts, key=lambda label: (-counts[label], label)):
        best.setdefault(_label_key(label), label)
    return list(best.values())


def _label_key(label: str) -> str:
    """What two spellings of one label share: case folded, and "3.0" read as "3" (a numeric label
    column that passed through pandas or a spreadsheet with an empty cell becomes floats)."""
    whole_number = _WHOLE_FLOAT.fullmatch(label)
    return whole_number.group(1) if whole_number else label.casefold()


def other_label(labels: Iterable[str]) -> str:
    """The catch-all class rare classes merge into: the data's own spelling of "other" ("Other",
    "OTHER") when it has that class, else ``other``."""
    return next((label for label in sorted(labels) if _label_key(label) == OTHER_LABEL), OTHER_LABEL)


def merge_into_other(tickets: Tickets, merged: Iterable[str], other: str = OTHER_LABEL) -> Tickets:
    """The tickets with the labels training merged (``--merge-rare-classes``) renamed ``other``."""
    merged = set(merged)
    if not merged:
        return tickets
    return Tickets(tickets.texts, [other if label in merged else label for label in tickets.labels],
                   tickets.ids, tickets.source)


def relabel_like_training(tickets: Tickets, labels: Iterable[str], merged: Iterable[str], other: str,
                          report: DataReport) -> Tickets:
    """Another file's labels (validation, test) as training left them: each spelled as training spelled
    it (its classes ``labels`` and the rare classes it ``merged``), then the merged ones renamed to
    training's catch-all class ``other``."""
    labels, merged = list(labels), list(merged)
    matched = match_label_spellings(tickets, labels + merged, report)
    return merge_into_other(matched, merged, other)


def _keep_training_labels(tickets: Tickets, known: set[str], report: DataReport, path: str | Path) -> Tickets:
    """Drop (and report) validation tickets with labels training never saw."""
    keep = [i for i, label in enumerate(tickets.labels) if label in known]
    for i in sorted(set(range(len(tickets))) - set(keep)):
        report.drop("label not in training data", f"{path}, id {tickets.ids[i]} ({tickets.labels[i]!r})")
    if not keep:
        raise UserError(f"{path}: no validation ticket has a label seen in training")
    return tickets.subset(keep)


def reload_training_split(manifest: dict[str, Any]) -> Tickets | None:
    """The training split a bundle was trained on, if its file is still there unchanged; else None.

    Re-runs :func:`prepare_data` with the options the manifest recorded, which gives the
    same split (it is seeded).
    """
    info = manifest.get("data", {}).get("train", {})
    options = manifest.get("data_options")
    path = Path(info.get("path", ""))
    if not options or not path.is_file() or file_sha256(path) != info.get("sha256"):
        return None
    if options["validation_path"] and not Path(options["validation_path"]).is_file():
        return None  # bundles from before the path was stored absolute recorded it as given
    prepared = prepare_data(path, options["validation_path"], text_options=TextOptions.from_dict(manifest["text"]),
                            label_column=options["label_column"],
                            validation_fraction=options["validation_fraction"],
                            min_class_count=options["min_class_count"],
                            merge_rare_classes=options["merge_rare_classes"], seed=options["seed"])
    return prepared.train
