"""The HTML report: customer text (class names, ticket ids) is shown escaped, never as markup."""

from __future__ import annotations

import csv
from pathlib import Path

from classifier.evaluate import evaluate

HOSTILE_LABEL = '<script>alert("label")</script>'
HOSTILE_ID = "<img src=x onerror=alert(1)>"


def test_hostile_labels_and_ids_are_escaped(exported_bundle: Path, tiny_csv: Path, tmp_path: Path) -> None:
    with open(tiny_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:20]
    # A label the model does not know is listed on the page with the ids of its tickets.
    rows.append(dict(rows[0], id=HOSTILE_ID, category=HOSTILE_LABEL))
    data = tmp_path / "test.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    evaluate(exported_bundle, data, tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&#34;label&#34;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert HOSTILE_LABEL not in page and HOSTILE_ID not in page
    assert page.count("<script") == 1  # the page's own, which sorts its tables
