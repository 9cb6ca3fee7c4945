"""Load a labelled ticket export, clean it, check it, merge its labels and split it.

Files are read by :mod:`classifier.readers` and their columns mapped by :mod:`classifier.columns`.
Every problem the user can fix is raised as :class:`~classifier.errors.UserError` naming the file,
row and column. The :class:`DataReport` says what was dropped, merged or suspicious.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from classifier.columns import ColumnMapping, resolve_columns
from classifier.errors import UserError, counted, first_of, where
from classifier.fields import FieldSpec, counted_classes, counted_tags, parse_tags
from classifier.languages import language_counts
from classifier.options import MAX_VALIDATION_SHARE, MIN_FITTED_TICKETS, VALIDATION_SHARE, DataOptions
from classifier.readers import STDIN, delimiter_of, file_sha256, records_and_columns, starts_with_bom
from classifier.text import (
    MAX_CELL_CHARS,
    TEXT_COLUMN_GUESSES,
    TextOptions,
    field_key,
    label_key,
    name_key,
    ticket_text,
)

if TYPE_CHECKING:
    from classifier.manifest import Manifest

OTHER_LABEL = "other"
# A file's corrected labels: where this column has a value, it replaces the label (a file that
# 'ticketclf review-labels' wrote, filled in by an agent, trains as it is).
CORRECTED_LABEL_COLUMN = "corrected_label"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet runs as a formula at a cell's start
PLAIN_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
LISTED_MISLABELLED = 20  # likely mislabelled tickets listed in the data report (classifier.label_review)
_LISTED_CLASSES = 10  # rare classes named in an error; a wrong label column has thousands
# A text column naming its ticket's label in this share of tickets, and this many times as often as another text
# column, is reported as a likely leak. Customers name their queue's word now and then (the sample: 4 % of
# subjects, 5 % of bodies); "escalated to Finance Ops" in work notes does it on most tickets.
LABEL_LEAK_SHARE = 0.3
LABEL_LEAK_RATIO = 3
# What the customer wrote (a subject, a description): its own words may name the queue as often as they like.
_CUSTOMER_TEXT = {name_key(name) for names in TEXT_COLUMN_GUESSES for name in names}


@dataclass
class Tickets:
    """Cleaned, labelled tickets from one file, ready for a model."""

    texts: list[str]
    labels: list[str]
    ids: list[str]
    source: dict[str, Any] = field(default_factory=dict)  # path, sha256, rows
    rows: list[int] = field(default_factory=list)  # each ticket's row in its file, where read from one
    # More fields by column (classifier.fields): a label ("" unknown) or a tags list (None unknown) per ticket.
    fields: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> Tickets:
        return Tickets([self.texts[i] for i in indices], [self.labels[i] for i in indices],
                       [self.ids[i] for i in indices], dict(self.source, rows_used=len(indices)),
                       [self.rows[i] for i in indices] if self.rows else [],
                       {name: [values[i] for i in indices] for name, values in self.fields.items()})

    def relabelled(self, labels: list[str]) -> Tickets:
        return Tickets(self.texts, labels, self.ids, self.source, self.rows, self.fields)


@dataclass
class DataReport:
    """What happened to the data on its way to the model; printed and stored in the bundle."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> locations
    cut_cells: list[str] = field(default_factory=list)  # text cells over cell_char_limit, cut to it: locations
    cell_char_limit: int = MAX_CELL_CHARS
    duplicates_removed: int = 0
    conflicting_texts: list[dict[str, Any]] = field(default_factory=list)
    corrected_labels: int = 0  # labels replaced by the file's corrected_label column
    label_review: dict[str, Any] = field(default_factory=dict)  # classifier.label_review: how, and how many
    likely_mislabelled: list[dict[str, Any]] = field(default_factory=list)  # the first of them, most likely first
    merged_into_other: dict[str, int] = field(default_factory=dict)
    other_label: str = OTHER_LABEL  # the data's own spelling of the class rare ones merge into
    merged_label_spellings: dict[str, str] = field(default_factory=dict)  # e.g. "Billing" -> "billing"
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    shared_texts_between_splits: int = 0  # validation tickets left out: their text is a training ticket's
    shared_text_examples: list[dict[str, str]] = field(default_factory=list)  # the first of them: validation/train id
    split: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # per field besides the label: see _field_report
    languages: dict[str, int] = field(default_factory=dict)  # tickets per guessed language (classifier.languages)
    label_named_in: dict[str, float] = field(default_factory=dict)  # text column -> share naming its ticket's label
    label_alternatives: list[str] = field(default_factory=list)  # other columns the guessed label could be

    def _mislabelled_lines(self) -> list[str]:
        review = self.label_review
        if not review.get("flagged") and not review.get("near_duplicates"):
            return []
        lines = [f"{review['flagged']} tickets look mislabelled, {review['near_duplicates']} more have a "
                 f"near-duplicate labelled otherwise ({review['method']}); the surest, with the suggested label:"]
        from classifier.label_review import entry_line  # it imports this module, and scikit-learn

        lines += [entry_line(entry, 50) for entry in self.likely_mislabelled[:5]]
        lines.append(f"  ({review['measured']}); {len(self.likely_mislabelled)} in reports/data_report.json with the "
                     "reasons; 'ticketclf review-labels' writes all of them into a file to correct")
        return lines

    def drop(self, reason: str, location: str) -> None:
        self.dropped.setdefault(reason, []).append(location)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        # Counted before duplicates are removed and the split is made (both reported below).
        lines = [f"{name}: {info['rows_read']} rows read, {info['rows_with_text_and_label']} with text and a label"
                 for name, info in self.files.items()]
        for reason, locations in self.dropped.items():
            lines.append(f"dropped {len(locations)} rows ({reason}): {first_of(locations, 5)}")
        if self.cut_cells:
            lines.append(f"cut {len(self.cut_cells)} text cells longer than {self.cell_char_limit:,} characters "
                         f"to that length: {first_of(self.cut_cells, 5)}")
        if self.duplicates_removed:
            lines.append(f"removed {self.duplicates_removed} exact duplicates (same text and label)")
        for name, info in self.files.items():
            if repeated := info.get("repeated_ids"):
                lines.append(f"warning: {name}: {ids_are(len(repeated))} on more than one ticket, each of another "
                             f"text ({first_of(repeated, 5)}): reviews and answers that name tickets by id cannot "
                             "tell these apart")
        if self.conflicting_texts:
            lines.append(f"{len(self.conflicting_texts)} identical texts carry conflicting labels "
                         f"(kept; see reports/data_report.json)")
        if self.corrected_labels:
            lines.append(f"{self.corrected_labels} labels replaced by the file's {CORRECTED_LABEL_COLUMN} column")
        lines += self._mislabelled_lines()
        if self.merged_label_spellings:
            spellings = ", ".join(f"{k!r} -> {v!r}" for k, v in self.merged_label_spellings.items())
            lines.append(f"labels differing only in case or number format counted as one: {spellings}")
        if self.merged_into_other:
            merged = ", ".join(f"{k} ({v})" for k, v in self.merged_into_other.items())
            lines.append(f"merged rare classes into '{self.other_label}': {merged}")
        if shared := self.shared_texts_between_splits:
            pairs = ", ".join(f"{pair['validation']} = {pair['train']}" for pair in self.shared_text_examples[:5])
            lines.append(f"{shared} validation tickets have the text of a training ticket: left out of validation, "
                         f"whose accuracy they would overstate (validation id = training id): {pairs}"
                         f"{' ...' if shared > 5 else ''}")
        if self.split:
            lines.append(f"split: {self.split}")
        if set(self.languages) - {"en"}:  # an English export says nothing
            told = sum(self.languages.values())
            shares = ", ".join(f"{language} {count} ({count / told:.0%})" if count / told >= 0.01 else
                               f"{language} {count}" for language, count in self.languages.items())
            lines.append(f"languages, guessed from common words in {told} tickets: {shares}")
        lines += [_field_line(name, info) for name, info in self.fields.items()]
        return lines + self._label_leak_lines()

    def _label_leak_lines(self) -> list[str]:
        """A text column that names its ticket's label far more often than the others was likely written after
        routing (work notes, resolution): the model learns the answer from it, and new tickets lack it."""
        lines = []
        for column, share in self.label_named_in.items():
            others = [other for name, other in self.label_named_in.items() if name != column]
            if name_key(column.rpartition(".")[2]) in _CUSTOMER_TEXT:
                continue  # "I would like a refund" names the Refund queue in the customer's own words
            if others and share >= LABEL_LEAK_SHARE and share >= LABEL_LEAK_RATIO * min(others):
                lines.append(f"warning: text column {column!r} names the ticket's own label in {share:.0%} of "
                             f"tickets (the other text columns in {min(others):.0%}): if it is written after routing "
                             "(work notes, comments, resolution), new tickets lack it and served accuracy falls "
                             "short of the reports; train on what a ticket has when it arrives (--text-columns)")
        return lines


# ---------------------------------------------------------------- loading


def load_tickets(path: str | Path, text_options: TextOptions | None = None, label_column: str | None = None,
                 report: DataReport | None = None, require_label: bool = True, *, max_chars: int = MAX_CELL_CHARS,
                 field_columns: Sequence[str] = (), tags_column: str | None = None, tags_delimiter: str | None = None,
                 id_column: str | None = None, hint: str | None = None) -> tuple[Tickets, TextOptions]:
    """Load, map and clean one file; rows without text or label are dropped and reported. ``hint``: what an
    error about a named column that is not there advises, where the command's options cannot help.

    ``text_options.fields`` names the text columns; empty means detect them. Returns the
    tickets and the text options with the resolved column names, which
    is what a bundle stores so prediction reads the same fields. A text cell longer than
    ``max_chars`` is cut to that length before cleaning, and reported. ``field_columns`` and ``tags_column``
    are read into ``Tickets.fields`` (by the names given), tags split by ``tags_delimiter`` (None: detected).
    ``id_column`` names the ids' column, where no common name finds it.
    """
    path = Path(path)
    report = report if report is not None else DataReport()
    report.cell_char_limit = max_chars
    records, columns = records_and_columns(path)
    text_options = text_options or TextOptions()
    extra = (*field_columns, *([tags_column] if tags_column else []))
    mapping = resolve_columns(columns, path, text_options.fields, label_column, require_label, extra,
                              id_column=id_column, hint=hint)
    # Stored lower-case, since prediction matches field names case-insensitively (classifier.text).
    options = replace(text_options, fields=tuple(name.lower() for name in mapping.text_columns))
    corrected = _corrected_label_column(columns, mapping)
    from_review_file(records, columns)
    texts, labels, ids, rows = [], [], [], []
    given: list[str | None] = []
    # Counted for the first file a report reads (training's, not a validation file after it), with columns to compare.
    first = not report.files
    mentions = _LabelMentions(mapping.text_columns) if first and mapping.label_column and \
        len(mapping.text_columns) > 1 else None
    cells: list[list[Any]] = [[] for _ in extra]
    for row, record, text, cut_columns in _cleaned_rows(records, mapping, text_options, path, max_chars,
                                                        mapping.field_columns[:len(field_columns)]):
        report.cut_cells += [where(path, row, column) for column in cut_columns]
        label = label_value(record.get(mapping.label_column)) if mapping.label_column else ""
        for column in (mapping.label_column, *mapping.field_columns[:len(field_columns)]):
            _check_one_value(record, column, path, row)
        correction = label_value(record.get(corrected)) if corrected else ""
        if correction and correction != label:
            label = correction
            report.corrected_labels += 1
        if not text:
            report.drop("no text after cleaning", where(path, row))
        elif mapping.label_column and not label:
            report.drop("no label", where(path, row, mapping.label_column))
        else:
            texts.append(text)
            labels.append(label)
            ids.append(row_id(record, mapping.id_column, row))
            given.append(given_id(record, mapping.id_column, row))  # a blank cell's row number is no ticket's id
            rows.append(row)
            if mentions:
                mentions.count(record, label)
            for values, column in zip(cells, mapping.field_columns):
                values.append(record.get(column))
    if not texts:
        raise UserError(f"{path}: none of {len(records)} rows has both text and a label")
    source = {"path": os.path.abspath(path), "sha256": file_sha256(path), "rows_read": len(records),
              "rows_used": len(texts), "label_column": mapping.label_column}  # evaluation reads the same column
    if first:
        report.label_alternatives = list(mapping.label_alternatives)
    if mentions:
        report.label_named_in = mentions.shares(len(texts))
    report.files[str(path)] = {"rows_read": len(records), "rows_with_text_and_label": len(texts),
                               "sha256": source["sha256"], "repeated_ids": repeated_ids(given, texts)}
    fields: dict[str, list[Any]] = {name: [label_value(value) for value in values]
                                    for name, values in zip(field_columns, cells)}
    if tags_column:
        fields[tags_column], delimiter = parse_tags(cells[-1], path, rows, mapping.field_columns[-1], tags_delimiter)
        source["tags_delimiter"] = delimiter
    return Tickets(texts, labels, ids, source, rows, fields), options


class _LabelMentions:
    """Per text column, how many tickets name their own label in it ("finance ops", "finance_ops")."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = columns
        self.counts = Counter[str]()
        self._patterns: dict[str, re.Pattern[str] | None] = {}

    def count(self, record: dict[str, Any], label: str) -> None:
        if label not in self._patterns:
            self._patterns[label] = self._pattern(label)
        pattern = self._patterns[label]
        for column in self.columns:
            cell = record.get(column)
            if pattern and isinstance(cell, str) and pattern.search(cell):
                self.counts[column] += 1

    @staticmethod
    def _pattern(label: str) -> re.Pattern[str] | None:
        """Its words in any case and joined any way; "IT" and "HR" only in capitals, not "it". A number is
        no label's name (a row number or a price say nothing)."""
        words = [word for word in re.split(r"[\s_\-/]+", label.strip()) if word]
        if not any(char.isalpha() for char in label):
            return None
        flags = 0 if label.isupper() else re.IGNORECASE
        return re.compile(r"\b" + r"[\s_\-/]*".join(map(re.escape, words)) + r"\b", flags)

    def shares(self, tickets: int) -> dict[str, float]:
        return {column: round(self.counts[column] / tickets, 4) for column in self.columns}


def ids_are(count: int) -> str:
    """``count`` ids and the verb in its number: "1 id is", "3 ids are"."""
    return f"{counted(count, 'id')} {'is' if count == 1 else 'are'}"


def repeated_ids(ids: Sequence[str | None], texts: Sequence[str]) -> list[str]:
    """The ids given to tickets of different texts (a copy of one ticket is no conflict): answers, reviews and
    feedback name tickets by id, and these cannot be told apart."""
    texts_of: dict[str, set[str]] = defaultdict(set)
    for ticket_id, text in zip(ids, texts):
        if ticket_id is not None:
            texts_of[ticket_id].add(text)
    return [ticket_id for ticket_id, seen in texts_of.items() if len(seen) > 1]


def from_review_file(records: list[tuple[int, dict[str, Any]]], columns: Sequence[str]) -> None:
    """The cells of a file written for spreadsheets as they were before :func:`spreadsheet_safe` escaped them, in
    place: a label review (told by its corrected_label column) or a feedback export (ticket_id and received_at,
    :func:`classifier.feedback.export_csv`); any other file is left as it is."""
    names = {name.lower() for name in columns}
    if _corrected_column(columns) is None and not FEEDBACK_EXPORT_COLUMNS <= names:
        return
    for _, record in records:
        for key, value in record.items():
            if isinstance(value, str):
                record[key] = from_spreadsheet_safe(value)


def _corrected_label_column(columns: Sequence[str], mapping: ColumnMapping) -> str | None:
    """The file's corrected_label column (any case), if it has one besides its label column."""
    if mapping.label_column is None:
        return None
    found = _corrected_column(columns)
    return found if found != mapping.label_column else None


FEEDBACK_EXPORT_COLUMNS = frozenset({"ticket_id", "received_at"})  # the columns a feedback export always has


def _corrected_column(columns: Sequence[str]) -> str | None:
    return field_key(columns, CORRECTED_LABEL_COLUMN)


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


def read_tickets_to_classify(path: str | Path, text_options: TextOptions, text_columns: Sequence[str] = (), *,
                             id_column: str | None = None, max_chars: int = MAX_CELL_CHARS,
                             cut: list[int] | None = None) -> list[tuple[str | None, str]]:
    """``(id, cleaned text)`` for every row of an unlabelled file (``-``: standard input), in file order.

    Reads ``text_columns`` (the file's names for the bundle's fields, see :func:`with_text_columns`),
    else the bundle's text fields, or a ``text`` column alone when the file has none of them
    (as ``POST /classify`` accepts ``{"text": ...}`` for any bundle); the id is :func:`given_id`'s, from
    ``id_column`` or a column of a common id name. A row
    with nothing left after cleaning keeps its place with an empty text, so that no row is silently lost. A text
    cell is cut to ``max_chars`` before cleaning, and the row's position in the list returned added to ``cut``
    (its prediction is to say ``truncated``, as for any ticket past the model's window, even where what is left
    fits the window).
    """
    path = STDIN if path == "-" else Path(path)  # the string "-"; a Path named "-" is a file
    records, columns = records_and_columns(path)
    mapping, text_options = columns_to_classify(columns, path, text_options, text_columns, id_column)
    rows = []
    for position, (row, record, text, cut_columns) in enumerate(
            _cleaned_rows(records, mapping, text_options, path, max_chars)):
        rows.append((given_id(record, mapping.id_column, row), text))
        if cut_columns and cut is not None:
            cut.append(position)
    return rows


def columns_to_classify(columns: Sequence[str], path: Path, text_options: TextOptions,
                        text_columns: Sequence[str] = (), id_column: str | None = None,
                        ) -> tuple[ColumnMapping, TextOptions]:
    """The text and id columns of an unlabelled file with ``columns``, and the text options reading them:
    ``text_columns`` (see :func:`with_text_columns`), else the model's text fields, else a ``text`` column
    alone; ``id_column``, else a common id name. No label column is read, so none is looked for."""
    text_options = with_text_columns(text_options, text_columns)
    fields = text_options.record_fields
    lower_columns = {name.lower() for name in columns}
    if not text_columns and not lower_columns & {name.lower() for name in fields} and "text" in lower_columns:
        fields = ("text",)
    # A file without one of the model's fields is refused rather than read on the others: its text may be under
    # another name. Where it truly lacks one, an empty column reads its tickets as POST /classify would.
    hint = None if text_columns else ("check the names, name the file's text columns with --text-columns, or add "
                                      "that column, empty, to classify without it")
    mapping = replace(resolve_columns(columns, path, fields, require_label=False, id_column=id_column, hint=hint),
                      label_column=None)
    return mapping, replace(text_options, fields=tuple(mapping.text_columns))


def _cleaned_rows(records: list[tuple[int, dict[str, Any]]], mapping: ColumnMapping, text_options: TextOptions,
                  path: Path, max_chars: int, flat: Sequence[str] = (),
                  ) -> Iterator[tuple[int, dict[str, Any], str, list[str]]]:
    """``(row, record, cleaned text, columns cut)`` per record, text fields read with the file's own spelling.

    A text cell longer than ``max_chars`` is cut to it in ``record`` itself (freeing the rest) before
    cleaning: however long a cell, cleaning, tokenising and the TF-IDF baseline then see at most that much of
    it. The columns ``flat`` must hold text, as the text and label do.
    """
    reading = replace(text_options, fields=tuple(mapping.text_columns))
    for row, record in records:
        check_flat(record, (mapping.label_column, *flat), path, row)
        yield row, record, *record_text(record, reading, path, row, max_chars)


def record_text(record: dict[str, Any], options: TextOptions, path: Path, row: int,
                max_chars: int = MAX_CELL_CHARS) -> tuple[str, list[str]]:
    """One record's model text from the columns ``options.fields`` names, each checked to hold text and cut to
    ``max_chars`` first, in ``record`` itself (freeing the rest); and the columns cut."""
    check_flat(record, options.fields, path, row)
    cut = []
    for column in options.fields:
        value = record.get(column)
        if isinstance(value, str) and len(value) > max_chars:
            record[column] = value[:max_chars]
            cut.append(column)
    return ticket_text(record, options), cut


def _check_one_value(record: dict[str, Any], column: str | None, path: Path, row: int) -> None:
    """A label is one value: cells of a column the header repeats (Jira's "Component/s", one per value) are read
    joined by line breaks, and several of them would train as a class of their own."""
    value = record.get(column) if column else None
    if isinstance(value, str) and "\n" in value.strip():
        raise UserError(f"{where(path, row, column)}: holds several values ({value.strip()!r:.80}), one per line or "
                        "per column of that name; a label is one value: give each ticket one")


def check_flat(record: dict[str, Any], columns: Iterable[str | None], path: Path, row: int) -> None:
    """Text and label fields must be text or numbers: a nested JSON object or list would be read
    as its Python spelling ("{'subject': ...}") and trained on as if it were the ticket."""
    for column in filter(None, columns):
        value = record.get(column)
        if isinstance(value, (dict, list)):
            kind = "object" if isinstance(value, dict) else "list"
            inside = _readable_field(record, column)
            way = f"name a field inside it with a dot (e.g. '{inside}'), or" if inside else "use another column or"
            raise UserError(f"{where(path, row, column)}: holds a JSON {kind}, not text; {way} flatten the export")


# The fields of a reference or select object that people read: ServiceNow's {"display_value", "link", "value"},
# Jira's {"self", "value", "id"}, {"name": ...}. Never a link or an id, where another field is there.
_READABLE_FIELDS = ("display_value", "name", "value", "label", "title", "text")
_MACHINE_FIELDS = ("link", "self", "url", "href", "id", "sys_id")


def _readable_field(record: dict[str, Any], column: str) -> str | None:
    """The dotted name of the field inside ``column``'s object to suggest reading instead: a readable one."""
    inside = [name for name in record if name.startswith(f"{column}.")]
    ends = {name[len(column) + 1:].lower(): name for name in inside}
    return next((ends[end] for end in _READABLE_FIELDS if end in ends),
                next((name for name in inside if name[len(column) + 1:].lower() not in _MACHINE_FIELDS),
                     inside[0] if inside else None))


def row_id(record: dict[str, Any], id_column: str | None, row: int) -> str:
    """A training ticket's id, for reports: its id cell, or its row number where it has none."""
    return given_id(record, id_column, row) or str(row)


def given_id(record: dict[str, Any], id_column: str | None, row: int) -> str | None:
    """A classified row's id, as every tool that classifies a file gives it: the id cell; the row number where the
    file has no id column; None where the id cell is blank, as a row number there could be another ticket's id."""
    if not id_column:
        return str(row)
    value = record.get(id_column)
    return None if value is None or str(value).strip() == "" else str(value)


def label_value(value: Any) -> str:
    """A label cell as text: stripped, in Unicode's composed form (a Mac's "é" typed as "e" and an accent is
    the same label), and empty for a missing value (None, NaN)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return unicodedata.normalize("NFC", str(value).strip())


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
                  path: str | Path, drop_rare: bool = False) -> Tickets:
    """Refuse classes with fewer than ``min_count`` tickets, or merge them into ``other``, or leave their
    tickets out (each one reported)."""
    counts = Counter(tickets.labels)
    rare = {label: n for label, n in counts.items() if n < min_count}
    if rare and drop_rare:
        reason = f"class with fewer than {min_count} tickets (--drop-rare-classes)"
        for i, label in enumerate(tickets.labels):
            if label in rare:
                report.drop(reason, f"{path}, id {tickets.ids[i]} ({label!r})")
        tickets, rare = tickets.subset([i for i, label in enumerate(tickets.labels) if label not in rare]), {}
    if rare and not merge_rare:
        smallest = sorted(rare.items(), key=lambda kv: kv[1])
        listed = first_of([f"{label!r} ({n})" for label, n in smallest], _LISTED_CLASSES)
        classes = f"{len(rare)} of {len(counts)} classes {'has' if len(rare) == 1 else 'have'}"
        hint = ("add examples, lower --min-class-count, or pass --merge-rare-classes (or --drop-rare-classes)"
                if len(rare) <= len(counts) // 2 else  # most classes tiny: more likely the wrong column
                "is --label-column the column of categories? Otherwise add examples, lower --min-class-count, "
                "or pass --merge-rare-classes (or --drop-rare-classes)")
        raise UserError(f"{path}: {classes} fewer than {min_count} tickets: {listed}; {hint}")
    if rare:
        other = report.other_label = other_label(counts)
        report.merged_into_other.update({label: n for label, n in rare.items() if label != other})
        tickets = merge_into_other(tickets, rare, other)
        merged = tickets.labels.count(other)
        if merged < min_count:
            raise UserError(f"{path}: merging the rare classes gives '{other}' only {merged} "
                            f"ticket{'' if merged == 1 else 's'}, fewer "
                            f"than {min_count}; add examples, lower --min-class-count, or leave the rare classes "
                            "out with --drop-rare-classes")
    if not tickets.labels:
        raise UserError(f"{path}: no class has {min_count} tickets, so --drop-rare-classes left none; lower "
                        "--min-class-count or add examples")
    if len(set(tickets.labels)) < 2:
        raise UserError(f"{path}: only one class ({tickets.labels[0]!r}); a classifier needs at least two")
    return tickets


def stratified_split(tickets: Tickets, fraction: float, seed: int, at_least: int = 0) -> tuple[Tickets, Tickets]:
    """Hold out ``fraction`` of each class (at least one ticket) with a seeded shuffle, and ``at_least``
    tickets in all where every class can keep two for training."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(tickets.labels):
        by_label[label].append(index)
    rng = random.Random(seed)
    for label in sorted(by_label):
        rng.shuffle(by_label[label])
    # Every class keeps at least one training ticket, and gets one validation ticket if it can.
    held = {label: min(len(indices) - 1, max(1, round(len(indices) * fraction))) for label, indices in by_label.items()}
    # Rounding per class can fall short of the total (8 classes of 40 at 15.6 %: 48, not 50): one more ticket at
    # a time from the class holding out the smallest share.
    while sum(held.values()) < at_least:
        open_classes = [label for label in sorted(by_label) if len(by_label[label]) - held[label] > 2]
        if not open_classes:
            break
        held[min(open_classes, key=lambda label: held[label] / len(by_label[label]))] += 1
    train = [i for label in sorted(by_label) for i in by_label[label][held[label]:]]
    held_out = [i for label in sorted(by_label) for i in by_label[label][:held[label]]]
    return tickets.subset(sorted(train)), tickets.subset(sorted(held_out))


def validation_share(tickets: int, given: float | None = None) -> tuple[float, int]:
    """The share of each class training holds out for validation, and the fewest validation tickets in all:
    ``given``, or :data:`VALIDATION_SHARE` raised to :data:`MIN_FITTED_TICKETS` where that is no more than
    :data:`MAX_VALIDATION_SHARE` (options.py says why). Where it would be more, a larger split would fit
    nothing more and train on fewer tickets: the tenth stays."""
    if given is not None:
        return given, 0
    if tickets * MAX_VALIDATION_SHARE < MIN_FITTED_TICKETS:
        return VALIDATION_SHARE, 0
    return max(VALIDATION_SHARE, MIN_FITTED_TICKETS / tickets), MIN_FITTED_TICKETS


# ---------------------------------------------------------------- a held-out test file


@dataclass(frozen=True)
class SplitFiles:
    """What :func:`split_file` wrote, for the lines ``ticketclf split`` prints."""

    train: int  # rows in the training file
    test: int  # rows in the test file
    mapping: ColumnMapping  # the columns found
    unlabelled: int  # rows without a label: in the training file, which training reports
    copies: int  # drawn for the test file but the text of another row: kept in training


def split_file(data: str | Path, train_path: str | Path, test_path: str | Path, *, label_column: str | None = None,
               text_columns: Sequence[str] | None = None, test_fraction: float = 0.2,
               seed: int = 0) -> SplitFiles:
    """Split a labelled export into a training file and a held-out test file, stratified by label with
    the split training uses (:func:`stratified_split`); return what each file got.

    Reads every format training reads and finds the columns the same way; both outputs are CSV with all
    the input's columns (a JSON object's fields as its dotted columns, lists as JSON) and its semicolons if it
    has them, so the test file reads like the export it came from. A class with a single ticket, rows without
    a label, and copies of a training ticket or of another test ticket (the same text as the model reads it) go
    to the training file (training reports them).
    """
    data, train_path, test_path = Path(data), Path(train_path), Path(test_path)
    if not 0 < test_fraction < 1:
        raise UserError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    if len({data.resolve(), train_path.resolve(), test_path.resolve()}) < 3:
        raise UserError(f"{data}: the input, --output-train and --output-test must be three different files")
    numbered, columns = records_and_columns(data)
    records = [record for _, record in numbered]
    columns = flat_columns(records, columns)
    mapping = resolve_columns(columns, data, text_columns, label_column)
    for row, record in numbered:  # training refuses a list there: a CSV must not hide it as text
        check_flat(record, (*mapping.text_columns, mapping.label_column), data, row)
    label_column = mapping.label_column
    assert label_column is not None  # resolve_columns requires one here
    labels = [label_value(record.get(label_column)) for record in records]
    labelled = [i for i, value in enumerate(labels) if value]
    rows = Tickets([str(i) for i in labelled], [labels[i] for i in labelled], [str(i) for i in labelled])
    _, test = stratified_split(rows, test_fraction, seed)  # the split training itself uses
    drawn = {int(i) for i in test.ids}
    test_rows = _not_in_training(drawn, records, mapping.text_columns)
    if not test_rows:
        raise UserError(f"{data}: no class has two tickets, so none can be held out for testing")
    train_rows = [i for i in range(len(records)) if i not in test_rows]
    write_csv(train_path, columns, [records[i] for i in train_rows], like=data)
    write_csv(test_path, columns, [records[i] for i in sorted(test_rows)], like=data)
    return SplitFiles(len(train_rows), len(test_rows), mapping, len(records) - len(labelled),
                      len(drawn) - len(test_rows))


def _not_in_training(test_rows: set[int], records: list[dict[str, Any]], text_columns: Sequence[str]) -> set[int]:
    """The test rows whose model text no other row has: a copy on both sides (an auto-reply, a templated mail)
    would be scored as if held out while the model learned it, and copies within the test file would count one
    answer several times; they go to training."""
    options = TextOptions(fields=tuple(text_columns))
    texts = Counter(ticket_text(record, options) for record in records)
    return {i for i in test_rows if texts[ticket_text(records[i], options)] == 1}


def flat_columns(records: Iterable[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    """A file's columns as a CSV of it keeps them: a JSON object's fields are also read as dotted columns
    (ticket.subject), and those are the ones kept, not the object."""
    objects = {key for record in records for key, value in record.items() if isinstance(value, dict)}
    return [column for column in columns if column not in objects]


def write_csv(path: Path, columns: list[str], records: list[dict[str, Any]], *, for_spreadsheets: bool = False,
              like: Path | None = None) -> None:
    """Records as a CSV file that training reads: the given columns, lists as JSON, separated as in the file
    ``like`` (:func:`delimiter_like`), with a byte-order mark where ``like`` has one. ``for_spreadsheets``: a
    file people open in Excel or Sheets, its text cells :func:`spreadsheet_safe` (training reads them back as
    they were: such a file has a corrected_label column, see :func:`load_tickets`), and a byte-order mark first:
    without one, Excel reads UTF-8 as the machine's code page, and "Müller" saved back is mangled."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def cell(value: Any) -> Any:
        value = json.dumps(value, ensure_ascii=False) if isinstance(value, list) else value
        return spreadsheet_safe(value) if for_spreadsheets and isinstance(value, str) else value

    with csv_writer(path, like, for_spreadsheets=for_spreadsheets) as writer:
        writer.writerow(columns)  # a record's other keys (objects, written as dotted columns) are left out
        writer.writerows([cell(record.get(column, "")) for column in columns] for record in records)


@contextmanager
def csv_writer(path: Path, like: Path | None, *, for_spreadsheets: bool = False) -> Iterator[Any]:
    """A CSV writer on ``path``, separated as the file ``like`` (:func:`delimiter_like`), with a byte-order mark
    where ``like`` has one or ``for_spreadsheets`` (without one, Excel reads UTF-8 in the machine's code page)."""
    bom = for_spreadsheets or (like is not None and starts_with_bom(like))
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as out:
        yield csv.writer(out, delimiter=delimiter_like(path, like))


def decimal_cell(value: float, delimiter: str, places: int = 6) -> str:
    """``value`` to ``places`` places (predictions show 6: with fewer, a confidence at its review threshold
    reads as below it), as the locale that separates with ``delimiter`` writes it."""
    text = f"{value:.{places}f}"
    return text.replace(".", ",") if delimiter == ";" else text


def delimiter_like(path: Path, source: Path | None) -> str:
    """The delimiter of a file written at ``path`` from ``source``: tabs for a .tsv; semicolons where the
    source has them, as an Excel whose locale writes decimal commas does, since it opens a comma-separated
    file as one column; commas otherwise."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    return ";" if source is not None and delimiter_of(source) == ";" else ","


def spreadsheet_safe(cell: str) -> str:
    """A text cell that Excel or Sheets shows as text: ticket text is customer input, and a cell starting
    with ``=``, ``+``, ``-``, ``@`` (or a tab or carriage return before one) would run as a formula. A plain
    number (an id of -2) cannot, and stays as it is so the file still joins with the export. A quote is put
    before the cell, and before a cell that starts with a quote and would be escaped without it, so that
    :func:`from_spreadsheet_safe` gives back every cell exactly."""
    return f"'{cell}" if _runs_as_formula(cell) else cell


def from_spreadsheet_safe(cell: str) -> str:
    """The cell that :func:`spreadsheet_safe` was given."""
    return cell[1:] if cell[:1] == "'" and _runs_as_formula(cell[1:]) else cell


def _runs_as_formula(cell: str) -> bool:
    """Whether :func:`spreadsheet_safe` puts a quote before ``cell``."""
    unquoted = cell.lstrip("'")  # a loop, not recursion: customer text may start with thousands of quotes
    return unquoted[:1] in FORMULA_STARTS and not PLAIN_NUMBER.fullmatch(unquoted)


@dataclass
class PreparedData:
    train: Tickets
    validation: Tickets
    labels: list[str]
    text_options: TextOptions  # the options given, with the text columns found
    report: DataReport
    options: DataOptions  # as given
    fields: list[FieldSpec] = field(default_factory=list)  # besides the label (classifier.fields)


def prepare_data(train_path: str | Path, options: DataOptions | None = None, seed: int = 42) -> PreparedData:
    """Everything between a ticket export and a model: load, clean, check, split (seeded)."""
    options = options or DataOptions()
    if options.validation_fraction is not None and not 0 < options.validation_fraction < 1:
        raise UserError(f"validation fraction must be between 0 and 1, got {options.validation_fraction}")
    if options.merge_rare_classes and options.drop_rare_classes:
        raise UserError("--merge-rare-classes and --drop-rare-classes: choose one")
    report = DataReport()
    columns: dict[str, Any] = {"field_columns": options.field_columns, "tags_column": options.tags_column,
               "tags_delimiter": options.tags_delimiter}
    train, text_options = load_tickets(train_path, options.text, options.label_column, report, **columns)
    train = one_spelling_per_label(train, report)
    train = check_classes(deduplicate(train, report), options.min_class_count, options.merge_rare_classes, report,
                          train_path, drop_rare=options.drop_rare_classes)
    _review_labels(train, report)
    if options.validation_path is None:
        fraction, at_least = validation_share(len(train), options.validation_fraction)
        train, validation = stratified_split(train, fraction, seed, at_least)
        report.split = {"method": "stratified", "fraction": round(fraction, 4), "seed": seed}
    else:
        # The training file's text columns, found or named, are the validation file's too (one --text-columns).
        same_names = (f"name the validation file's columns as the training file's (text: "
                      f"{', '.join(text_options.fields)}), or leave --validation out to hold out part of the training "
                      "file")
        validation, _ = load_tickets(options.validation_path, text_options, options.label_column, report, **columns,
                                     hint=same_names)
        known = set(train.labels)
        validation = relabel_like_training(validation, known, report.merged_into_other, report.other_label, report)
        validation = _keep_training_labels(validation, known, report, options.validation_path)
        report.split = {"method": "file", "path": str(options.validation_path)}
    labels = sorted(set(train.labels))
    validation, shared = _without_training_texts(train, validation, options.validation_path)
    report.shared_texts_between_splits, report.shared_text_examples = len(shared), shared[:MAX_LISTED_SHARED]
    report.class_counts = {"train": dict(Counter(train.labels)), "validation": dict(Counter(validation.labels))}
    report.languages = language_counts([*train.texts, *validation.texts])
    fields = [_single_field(name, train, validation, options.min_class_count, report, train_path)
              for name in options.field_columns]
    if options.tags_column:
        fields.append(_tags_field(options.tags_column, train, validation, options.min_class_count, report, train_path))
    return PreparedData(train, validation, labels, text_options, report, options, fields)


MAX_LISTED_SHARED = 100  # shared texts named in the data report; the count is of all


def _without_training_texts(train: Tickets, validation: Tickets, validation_path: str | Path | None
                            ) -> tuple[Tickets, list[dict[str, str]]]:
    """The validation tickets whose text no training ticket has, and each one left out with the (first) training
    ticket it copies. A copy (an auto-reply, a templated mail, a validation file overlapping the export) is
    answered from memory: it would flatter every choice validation makes (when to stop, the temperature, the
    blend, the out-of-scope references), as ``split_file`` keeps such copies out of a test file."""
    training_id: dict[str, str] = {}
    for text, ticket_id in zip(train.texts, train.ids):
        training_id.setdefault(text, ticket_id)
    copies = [i for i, text in enumerate(validation.texts) if text in training_id]
    if copies and len(copies) == len(validation):
        raise UserError(f"{validation_path or 'the validation split'}: every validation ticket has the text of a "
                        "training ticket, so none can tell how the model does on new ones; give a validation file "
                        "of other tickets")
    shared = [{"validation": validation.ids[i], "train": training_id[validation.texts[i]]} for i in copies]
    kept = set(copies)
    return validation.subset([i for i in range(len(validation)) if i not in kept]) if copies else validation, shared


def _single_field(name: str, train: Tickets, validation: Tickets, min_count: int, report: DataReport,
                  path: str | Path) -> FieldSpec:
    """A single-label field's classes, from the training split: values spelled as most tickets spell them,
    values of classes under ``min_count`` training tickets (and, in validation, unknown ones) left empty:
    those tickets train the other fields only."""
    spellings = {label_key(label): label for label in _most_common_spellings(
        [value for value in train.fields[name] if value])}
    for tickets in (train, validation):
        tickets.fields[name] = [spellings.get(label_key(value), value) if value else "" for value in
                                tickets.fields[name]]
    counts = counted_classes(train.fields[name])
    rare = {label: n for label, n in counts.items() if n < min_count}
    classes = sorted(set(counts) - set(rare))
    if len(classes) < 2:
        raise UserError(f"{path}: column {name!r} has {len(classes)} class{'' if len(classes) == 1 else 'es'} with "
                        f"at least {min_count} training tickets; a field to predict needs two (lower "
                        "--min-class-count, or leave the column out of --label-column)")
    _field_report(name, "single", train, validation, report, counts, rare)
    known = set(classes)
    for tickets in (train, validation):
        tickets.fields[name] = [value if value in known else "" for value in tickets.fields[name]]
    return FieldSpec(name, "single", tuple(classes))


def _tags_field(name: str, train: Tickets, validation: Tickets, min_count: int, report: DataReport,
                path: str | Path) -> FieldSpec:
    """The tags column's tags: those on at least ``min_count`` training tickets (the rest are reported and
    left out: too few to learn or to set a threshold on)."""
    counts = counted_tags(train.fields[name])
    rare = {tag: n for tag, n in counts.items() if n < min_count}
    tags = sorted(set(counts) - set(rare))
    if not tags:
        raise UserError(f"{path}: no tag in column {name!r} is on {min_count} training tickets or more "
                        f"({len(counts)} tags in all); is it the tags column? Lower --min-class-count, or leave out "
                        "--tags-column")
    _field_report(name, "tags", train, validation, report, counts, rare)
    report.fields[name]["delimiter"] = train.source.get("tags_delimiter")
    return FieldSpec(name, "tags", tuple(tags))


def _field_report(name: str, kind: str, train: Tickets, validation: Tickets, report: DataReport,
                  counts: Counter[str], rare: dict[str, int]) -> None:
    """Per field, as the data report gives for the label: tickets with a value, classes, the rare ones
    (left out), and identical texts with conflicting values."""
    values = train.fields[name] + validation.fields[name]
    texts = train.texts + validation.texts
    known = [value is not None if kind == "tags" else bool(value) for value in values]
    seen: dict[str, set[str]] = defaultdict(set)
    for text, value, has in zip(texts, values, known):
        if has:
            seen[text].add(json.dumps(sorted(value)) if kind == "tags" else value)
    report.fields[name] = {
        "kind": kind, "tickets_with_value": sum(known), "tickets_without": len(values) - sum(known),
        "classes": len(counts) - len(rare), "train_counts": dict(counts.most_common()),
        "left_out_rare": dict(sorted(rare.items(), key=lambda kv: kv[1])), "conflicting_texts": sum(
            len(found) > 1 for found in seen.values())}


def _field_line(name: str, info: dict[str, Any]) -> str:
    what = "tags" if info["kind"] == "tags" else "classes"
    line = (f"field {name!r} ({'tags' if info['kind'] == 'tags' else 'single label'}): {info['tickets_with_value']} "
            f"tickets with a value, {info['tickets_without']} without (they train the other fields), "
            f"{info['classes']} {what}")
    if info["left_out_rare"]:
        shown = first_of([f"{label!r} ({n})" for label, n in info["left_out_rare"].items()], 5)
        line += f"; left out, too few training tickets: {shown}"
    if info["conflicting_texts"]:
        line += f"; {info['conflicting_texts']} identical texts with conflicting values"
    return line


def _review_labels(tickets: Tickets, report: DataReport) -> None:
    """Put the likely mislabelled tickets and near-duplicates labelled otherwise into the report."""
    from classifier.label_review import DEFAULT_FOLDS, review_labels  # scikit-learn: training only

    folds = min(DEFAULT_FOLDS, max(Counter(tickets.labels).values()))
    try:
        review = review_labels(tickets.texts, tickets.labels, tickets.ids, folds)
    except UserError as error:  # too few tickets to hold any out: nothing to report
        report.label_review = {"skipped": str(error)}
        return
    report.label_review = review.summary()
    report.likely_mislabelled = [finding.entry(tickets.texts, tickets.ids) for finding in review.findings()
                                 ][:LISTED_MISLABELLED]


def match_label_spellings(tickets: Tickets, known: Iterable[str], report: DataReport) -> Tickets:
    """Spell each label as ``known`` does when they differ only in case ("Billing " in one export,
    "billing" in another are one class) or as a spreadsheet writes a whole number ("3.0" for "3");
    the changes go into the report. A label spelled exactly as one in ``known`` is left alone."""
    known = sorted(set(known))
    spelling: dict[str, str] = {}
    for label in known:
        spelling.setdefault(label_key(label), label)
    renamed = {label: spelling[label_key(label)] for label in sorted(set(tickets.labels) - set(known))
               if label_key(label) in spelling}
    if not renamed:
        return tickets
    report.merged_label_spellings.update(renamed)
    return tickets.relabelled([renamed.get(label, label) for label in tickets.labels])


def training_file_path(manifest: Manifest, bundle_dir: Path | None = None) -> Path | None:
    """Where the file a bundle was trained on is, as training read it: where training read it, or its copy in
    ``bundle_dir`` (:data:`~classifier.bundle.TRAINING_COPY_FILE`, which the manifest names without a
    directory; ``training-data.csv`` before it, named by its scratch path); None when neither is there as it was."""
    source = manifest.data.train
    if source is None or not source.path:
        return None
    named = Path(source.path)
    for path in ([named] if named.is_absolute() else []) + ([bundle_dir / named.name] if bundle_dir else []):
        if path.is_file() and (not source.sha256 or file_sha256(path) == source.sha256):
            return path
    return None


def training_file_texts(manifest: Manifest, bundle_dir: Path | None = None) -> list[str] | None:
    """The cleaned texts of the file a bundle was trained on (:func:`training_file_path`), as training read
    them; None when the file is not there as it was."""
    path = training_file_path(manifest, bundle_dir)
    if path is None or manifest.data.train is None:
        return None
    return load_tickets(path, manifest.text, manifest.data.train.label_column, require_label=False)[0].texts


def one_spelling_per_label(tickets: Tickets, report: DataReport) -> Tickets:
    """Labels that differ only in case or number format as one class, spelled as most of its tickets spell it."""
    return match_label_spellings(tickets, _most_common_spellings(tickets.labels), report)


def _most_common_spellings(labels: Sequence[str]) -> list[str]:
    """One spelling per label (see :func:`match_label_spellings`): the one most tickets use (ties:
    the first in sort order)."""
    counts = Counter(labels)
    best: dict[str, str] = {}
    for label in sorted(counts, key=lambda label: (-counts[label], label)):
        best.setdefault(label_key(label), label)
    return list(best.values())


def other_label(labels: Iterable[str]) -> str:
    """The catch-all class rare classes merge into: the data's own spelling of "other" ("Other",
    "OTHER") when it has that class, else ``other``."""
    return next((label for label in sorted(labels) if label_key(label) == OTHER_LABEL), OTHER_LABEL)


def merge_into_other(tickets: Tickets, merged: Iterable[str], other: str = OTHER_LABEL) -> Tickets:
    """The tickets with the labels training merged (``--merge-rare-classes``) renamed ``other``."""
    merged = set(merged)
    if not merged:
        return tickets
    return tickets.relabelled([other if label in merged else label for label in tickets.labels])


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
