"""The one exception type for problems the user can fix (bad file, column, bundle)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class UserError(Exception):
    """A problem with the user's input, carrying a message meant for people.

    The CLI prints it as one line and exits non-zero; the service turns it into a
    JSON error. Anything else that escapes is a bug.
    """

    exit_code = 2


class ModelError(UserError):
    """The bundle's model gave scores that are not numbers (NaN, infinity) for ``tickets`` (positions
    or ids): not the tickets' fault, so the service answers 500; the bundle needs exporting or training
    again."""

    exit_code = 3

    def __init__(self, tickets: Sequence[object]) -> None:
        self.tickets = list(tickets)
        named = first_of(self.tickets, 5)
        super().__init__(f"the model gave scores that are not numbers (NaN or infinity) for ticket {named}; "
                         "export or train the bundle again")

    def __reduce__(self) -> tuple[type, tuple[list[object]]]:  # copy and pickle rebuild from the tickets
        return type(self), (self.tickets,)


def first_of(items: Sequence[object], limit: int, separator: str = ", ") -> str:
    """The first ``limit`` items joined, and how many more there are: a list cut short says so."""
    shown = separator.join(map(str, items[:limit]))
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def counted(count: int, noun: str) -> str:
    """``count`` and the noun in its number: "1 row", "3 rows"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def one_line(error: BaseException) -> str:
    """An error as one short line: a :class:`UserError`'s message as it is, a library's exception as its type
    and the first line of its message."""
    if isinstance(error, UserError):
        return str(error)
    if callable(getattr(error, "errors", None)) and hasattr(error, "error_count"):  # pydantic's ValidationError,
        return _validation_problem(error)  # whose first line only counts the problems
    text = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {text}".rstrip(": ")


def _validation_problem(error: Any) -> str:
    """A pydantic ``ValidationError``'s first problem as ``where: what``, and how many more there are."""
    problems = error.errors(include_url=False)
    if not problems:
        return str(error).strip()[:200]
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}"


def where(path: object, row: int | None = None, column: str | None = None) -> str:
    """Format a location as ``file, row N, column 'c'`` for error messages."""
    parts = [str(path)]
    if row is not None:
        parts.append(f"row {row}")
    if column is not None:
        parts.append(f"column {column!r}")
    return ", ".join(parts)
