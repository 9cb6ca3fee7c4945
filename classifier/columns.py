"""Map a ticket file's columns: the text, label and id columns, as named or detected from common
helpdesk names (top-level columns first, then the fields of nested JSON objects)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from classifier.errors import UserError
from classifier.text import TEXT_COLUMN_GUESSES, name_key

# The queue a ticket went to before its kind: Freshdesk and Zendesk exports have a "Group" (the team routed to)
# and a "Type" (question, incident, ...), ServiceNow an "assignment_group" beside its "category".
LABEL_COLUMN_GUESSES: tuple[str, ...] = ("label", "category", "queue", "intent", "class", "topic", "group",
                                         "assignment group", "assignment_group", "assigned group", "team", "type",
                                         "kategorie", "catégorie", "categoría", "categoria")
# Never guessed as the label, but named beside a guessed one: Jira's kinds of issue and request, its components.
_ALSO_LABEL_LIKE = ("issue type", "request type", "component/s", "components")
# The id each helpdesk's export shows people, before its internal one: Jira's "Issue key" (PROJ-12) before
# "Issue id", Salesforce's "Case Number" before "Case ID", ServiceNow's "number" (INC0010001) before "sys_id".
ID_COLUMN_GUESSES: tuple[str, ...] = ("id", "ticket_id", "ticket id", "key", "ticket-nr", "ticketnummer",
                                      "ticket_number", "ticket number", "issue key", "issue_key", "case number",
                                      "case_number", "number", "issue id", "case id", "conversation id",
                                      "conversation_id", "sys_id")


@dataclass(frozen=True)
class ColumnMapping:
    text_columns: tuple[str, ...]
    label_column: str | None
    id_column: str | None
    field_columns: tuple[str, ...] = ()  # more label columns (classifier.fields), as the file spells them
    # Where the label column was guessed: the file's other columns of a guessed label name, which may be the one.
    label_alternatives: tuple[str, ...] = ()

    def label_line(self) -> str:
        return label_line(self.label_column, self.label_alternatives)


def label_line(column: str | None, alternatives: Sequence[str] = ()) -> str:
    """"labels from column 'Group'", and where it was guessed among ``alternatives``, how to take another."""
    others = ", ".join(map(repr, alternatives))
    return f"labels from column {column!r}" + (
        f" (guessed; {others} could be the label too: name it with --label-column)" if others else "")


def inner_names(column: str) -> list[str]:
    """The names that find a nested field without its outer objects, innermost last:
    ``ticket.custom_fields.queue`` -> ``custom_fields.queue``, ``queue``."""
    parts = column.split(".")
    return [".".join(parts[start:]) for start in range(1, len(parts))]


def absent_columns(columns: Iterable[str], names: Sequence[str | None]) -> list[str]:
    """Those of ``names`` that ``columns`` (a file's) has no column for, as :func:`resolve_columns` finds one:
    any case, or the one field inside objects that the name ends (:func:`inner_names`)."""
    columns = list(columns)
    top = {name_key(name) for name in columns}
    nested = Counter(name_key(inner) for name in columns for inner in inner_names(name))
    return [name for name in names if name and name_key(name) not in top and nested[name_key(name)] != 1]


def _quote_hint(name: str, columns: Sequence[str]) -> str:
    """Where ``name`` is the start of a column name holding a comma, which a list of names split: how to give it."""
    whole = next((column for column in columns if column.startswith(f"{name},")), None)
    return f"a name with a comma goes in double quotes ('\"{whole}\"'); " if whole else ""


def resolve_columns(columns: Iterable[str], path: str | Path, text_columns: Sequence[str] | None = None,
                    label_column: str | None = None, require_label: bool = True, field_columns: Sequence[str] = (),
                    hint: str | None = None, id_column: str | None = None) -> ColumnMapping:
    """Check the requested columns exist, or guess them from common helpdesk names. ``field_columns``
    (more fields to predict, and the tags column) must exist and be neither text nor the label. ``hint``: what
    an error about a named column that is not there advises, where the command's options cannot help.
    ``id_column``: the tickets' ids, where no guessed name finds them."""
    available = list(dict.fromkeys(columns))
    lower = {name_key(name): name for name in available}

    nested: dict[str, list[str]] = {}  # "queue" -> ["ticket.custom_fields.queue"]: fields of nested JSON objects
    for name in available:
        for inner in inner_names(name):  # "custom_fields.queue" finds it too
            nested.setdefault(name_key(inner), []).append(name)
    # What messages list: not the objects themselves ("ticket"), whose fields ("ticket.subject") are listed.
    objects = {name[:index] for name in available for index, char in enumerate(name) if char == "."}
    listed = [name for name in available if name not in objects]

    def find(name: str, look_inside: bool = True) -> str | None:
        """A column by name (any case), else, with ``look_inside``, the one nested field the name ends."""
        if name in available or name_key(name) in lower:
            return name if name in available else lower[name_key(name)]
        matches = nested.get(name_key(name), []) if look_inside else []
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
            also = (f" (nor label column {label_column!r}{'' if hint else ': name it with --label-column'})"
                    if label_column and find(label_column) is None else "")  # both in one run, not two
            raise UserError(f"{path}: text column {missing[0]!r} not found{also}; columns are {listed}; "
                            + _quote_hint(missing[0], listed)
                            + (hint or "check the names, or name the file's text columns with --text-columns"))
        texts = tuple(name for name in map(find, text_columns) if name is not None)  # each found: checked above
    else:
        texts = guess(TEXT_COLUMN_GUESSES)
        if not texts:
            raise UserError(f"{path}: no text column found among {listed}; "
                            "name them with --text-columns (e.g. subject,body)")
    alternatives: tuple[str, ...] = ()
    if label_column:
        label = find(label_column)
        if label is None:
            raise UserError(f"{path}: label column {label_column!r} not found; columns are {listed}; "
                            + _quote_hint(label_column, listed)
                            + (hint or "name the file's label column with --label-column"))
    else:
        # A text column is never the guessed label: "topic" read as text is not a label column too.
        label = next(iter(guess([(name,) for name in LABEL_COLUMN_GUESSES if find(name) not in texts])), None)
        if label is None and require_label:
            raise UserError(f"{path}: no label column found among {listed}; name it with --label-column")
        taken = {label, *texts, *map(find, field_columns)}
        alternatives = tuple(dict.fromkeys(found for name in (*LABEL_COLUMN_GUESSES, *_ALSO_LABEL_LIKE)
                                           if (found := find(name, look_inside=False)) not in taken and found))
    if label is not None and label in texts:
        raise UserError(f"{path}: column {label!r} is both a text column and the label column; name the "
                        "label with --label-column and the text with --text-columns")
    fields = []
    for name in field_columns:
        found = find(name)
        if found is None:
            raise UserError(f"{path}: column {name!r} not found; columns are {listed}; " + _quote_hint(name, listed)
                            + (hint or "check --label-column and --tags-column"))
        if found in texts or found == label or found in fields:
            role = "a text column" if found in texts else "the label column" if found == label else "named twice"
            raise UserError(f"{path}: column {found!r} is {role}; a field to predict needs a column of its own")
        fields.append(found)
    if id_column:
        ident = find(id_column)
        if ident is None:
            raise UserError(f"{path}: id column {id_column!r} not found; columns are {listed}; "
                            "name the file's id column with --id-column")
        if ident in texts or ident == label:
            raise UserError(f"{path}: column {ident!r} is {'a text column' if ident in texts else 'the label column'}; "
                            "the id column is another")
        return ColumnMapping(texts, label, ident, tuple(fields), alternatives)
    # The id at the top level, else beside the text in its object ("ticket.id" next to "ticket.subject"):
    # not any nested id, which may be the requester's.
    parents = {name.rpartition(".")[0] for name in texts}
    parent = parents.pop() if len(parents) == 1 else ""
    places = ("", f"{parent}.") if parent else ("",)
    # Jira's REST export ({"id": "10001", "key": "SD-1", "fields": {"summary", ...}}): the key people know.
    guesses = ("key", *ID_COLUMN_GUESSES) if parent == "fields" else ID_COLUMN_GUESSES
    ident = next((found for place in places for name in guesses
                  if (found := find(place + name, look_inside=False))), None)
    return ColumnMapping(texts, label, ident, tuple(fields), alternatives)
