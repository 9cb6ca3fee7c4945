"""The one exception type for problems the user can fix (bad file, column, bundle)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, carrying a message meant for people.

    The CLI prints it as one line and exits non-zero; the service turns it into a
    JSON error. Anything else that escapes is a bug.
    """

    exit_code = 2


class ModelError(UserError):
    """The bundle's model gave unusable scores (NaN, infinity): not the ticket's fault, so the
    service answers 500; the bundle needs exporting or training again."""

    exit_code = 3


def where(path: object, row: int | None = None, column: str | None = None) -> str:
    """Format a location as ``file, row N, column 'c'`` for error messages."""
    parts = [str(path)]
    if row is not None:
        parts.append(f"row {row}")
    if column is not None:
        parts.append(f"column {column!r}")
    return ", ".join(parts)
