"""The evaluation report as one self-contained HTML page (pictures embedded as base64 PNG).

The page is the Jinja2 template ``templates/report.html.j2``, rendered from the typed
:class:`~classifier.report.Report`, so everything shown comes from report.json. Autoescaping is
on: class names, ticket ids and ticket text are customer input and are always escaped; the
only markup that does not come from the template itself is ``<wbr>`` (see :func:`_breakable`).
"""

from __future__ import annotations

import base64
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from classifier.report import CALLED, HEADLINES, THRESHOLD, Report

TEMPLATE = "report.html.j2"


def render(report: Report, images: dict[str, bytes]) -> str:
    """The whole page; ``images`` maps file names (e.g. ``confusion_matrix.png``) to PNG bytes."""
    return _environment().get_template(TEMPLATE).render(
        report=report,
        headlines=HEADLINES,
        called=CALLED,
        others=report.others(),
        # A row per field a compared bundle was measured on, in the side-by-side table.
        compared_fields={name: field for _, other in report.others() for name, field in (other.fields or {}).items()},
        fields_written=[name for name, section in (report.fields or {}).items()
                        if getattr(section, "thresholds_applied", None)],  # single-label fields given thresholds
        images={name: base64.b64encode(data).decode("ascii") for name, data in images.items()})


@cache
def _environment() -> Environment:
    environment = Environment(loader=PackageLoader("classifier", "templates"), autoescape=True,
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)
    environment.filters["fmt"] = _fmt
    environment.globals["THRESHOLD"] = THRESHOLD
    environment.filters["breakable"] = _breakable
    environment.filters["worst_first"] = _worst_first
    return environment


def _fmt(value: Any, spec: str) -> str:
    """``value`` formatted as ``format(value, spec)`` does (``{{ share|fmt(".1%") }}``)."""
    return format(value, spec)


def _worst_first(rows: list[Any]) -> list[Any]:
    """Class (or tag) rows, the worst F1 first, those with no test tickets last."""
    return sorted(rows, key=lambda row: (row.support == 0, row.f1))


def _breakable(label: str) -> Markup:
    """Let long snake_case class names wrap after an underscore instead of widening the table."""
    return escape(label).replace("_", Markup("_<wbr>"))
