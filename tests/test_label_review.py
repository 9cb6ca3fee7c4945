"""Likely mislabelled tickets (classifier.label_review): flips injected into the bundled sample are found,
near-duplicates labelled otherwise are listed, `ticketclf review-labels` writes a file train reads back."""

from __future__ import annotations

import codecs
import random
import shlex
from pathlib import Path

import numpy as np
import pytest
from csv_files import read_csv, write_csv

from classifier.cli import build_parser, main
from classifier.data import DataReport, Tickets, load_tickets, prepare_data
from classifier.label_review import REVIEW_COLUMNS, LabelReview, entry_line, review_labels
from classifier.text import TextOptions

NOISE = 0.05


def flip(rows: list[dict[str, str]], share: float, seed: int = 7) -> set[int]:
    """Give ``share`` of the rows another category, drawn at random; the positions flipped."""
    rng = random.Random(seed)
    categories = sorted({row["category"] for row in rows})
    flipped = set(rng.sample(range(len(rows)), round(share * len(rows))))
    for i in flipped:
        rows[i]["category"] = rng.choice([c for c in categories if c != rows[i]["category"]])
    return flipped


@pytest.fixture(scope="module")
def noisy_sample(sample_csv: Path) -> tuple[Tickets, set[int], LabelReview]:
    """The bundled sample with 5 % of its labels flipped, and its review."""
    rows = read_csv(sample_csv)
    flipped = flip(rows, NOISE)
    tickets = Tickets([f"{row['subject']}\n{row['body']}" for row in rows], [row["category"] for row in rows],
                      [row["id"] for row in rows])
    return tickets, flipped, review_labels(tickets.texts, tickets.labels, tickets.ids)


def test_flipped_labels_are_flagged_well_above_chance(noisy_sample: tuple[Tickets, set[int], LabelReview]) -> None:
    tickets, flipped, review = noisy_sample
    flagged = {finding.index for finding in review.flagged}
    found = flagged & flipped
    # Chance is 5 %; the sample's own borderline tickets (data/README.md: 12 %, filed either way) are flagged too.
    assert len(found) / len(flagged) >= 0.4
    assert len(found) / len(flipped) >= 0.6
    ranked = [finding.index for finding in review.flagged]
    top = ranked[:len(ranked) // 4]  # the largest margins are the surest
    assert len(set(top) & flipped) / len(top) >= len(found) / len(flagged)
    suggested = {finding.index: finding.suggested for finding in review.flagged}
    original = [row["category"] for row in read_csv(Path(__file__).parent.parent / "data" / "tickets.csv")]
    assert sum(suggested[i] == original[i] for i in found) >= 0.8 * len(found)


def test_each_class_flags_as_many_as_its_thresholds_count(noisy_sample: tuple[Tickets, set[int], LabelReview]) -> None:
    tickets, _, review = noisy_sample
    assert set(review.thresholds) == set(tickets.labels)
    assert all(0 < threshold < 1 for threshold in review.thresholds.values())
    classes = sorted(review.thresholds)
    probabilities, labels = review.probabilities, np.array(tickets.labels)
    given = probabilities[np.arange(len(labels)), np.searchsorted(classes, labels)]
    thresholds = np.array([review.thresholds[label] for label in classes])
    contradicted = ((probabilities >= thresholds) & (probabilities > given[:, None])).any(axis=1)
    flagged = {finding.index for finding in review.flagged}
    for label in classes:
        members = np.flatnonzero(labels == label)
        assert sum(i in flagged for i in members) == contradicted[members].sum()
        # Those flagged are the class's least likely tickets: none left out is less likely than one flagged.
        chosen = [given[i] for i in members if i in flagged]
        assert not chosen or max(chosen) <= min(given[i] for i in members if i not in flagged)
    for finding in review.flagged:
        assert finding.suggested != finding.label
        assert finding.suggested == classes[int(np.argmax(np.where(np.array(classes) == finding.label, -1.0,
                                                                   probabilities[finding.index])))]
    margins = [finding.margin for finding in review.flagged]
    assert margins == sorted(margins, reverse=True)


def test_near_duplicates_labelled_otherwise_are_listed() -> None:
    texts = [f"ticket number {i} about my {topic}" for i in range(40) for topic in ("invoice", "password")]
    labels = ["billing" if "invoice" in text else "login" for text in texts]
    texts += ["Refund my  INVOICE, please!", "refund my invoice please", "Reset my password please"]
    labels += ["billing", "login", "login"]
    review = review_labels(texts, labels)
    listed = {finding.index: finding for finding in review.findings()}
    assert {80, 81} <= set(listed) and 82 not in listed
    assert "near-duplicate of 80 labelled 'billing' (cosine 1.00)" in "; ".join(listed[81].reasons)
    assert listed[80].suggested == listed[81].suggested == "billing"  # the model's choice of the two labels
    ids = [str(i) for i in range(len(texts))]
    assert entry_line(listed[81].entry(texts, ids), 20).startswith("  81: 'login' -> 'billing' (0.")
    assert entry_line(listed[80].entry(texts, ids), 20) == ("  80: 'billing' kept, near-duplicate of 81 labelled "
                                                           "'login' (cosine 1.00): 'Refund my  INVOICE, '")


def test_review_labels_writes_a_file_that_train_reads_with_its_corrections(sample_csv: Path, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rows = read_csv(sample_csv)[:300]
    flipped = flip(rows, 0.1)
    # Customer text a spreadsheet would run as a formula, and one quoted already.
    formulas = {rows[0]["id"]: '=HYPERLINK("http://evil.example")', rows[1]["id"]: "'=1+1"}
    rows[0]["body"], rows[1]["body"] = (formulas[rows[i]["id"]] + " " + rows[i]["body"] for i in (0, 1))
    data = write_csv(tmp_path / "export.csv", rows)
    output = tmp_path / "review.csv"
    assert main(["review-labels", str(data), "--output", str(output), "--folds", "4"]) == 0
    printed = capsys.readouterr().out
    assert "300 tickets reviewed (4-fold TF-IDF out-of-fold; labels from column 'category')" in printed
    assert f"written to {output}" in printed
    assert output.read_bytes().startswith(codecs.BOM_UTF8)  # Excel then reads it as UTF-8, not the code page
    written = read_csv(output)
    assert list(written[0]) == list(rows[0]) + list(REVIEW_COLUMNS)
    assert sorted(row["id"] for row in written) == sorted(row["id"] for row in rows)
    listed = [row for row in written if row["reason"]]
    assert listed and written[:len(listed)] == listed  # the findings first
    assert all(row["corrected_label"] == "" for row in written)
    shown = {row["id"]: row["body"] for row in written if row["id"] in formulas}
    assert shown == {rows[i]["id"]: "'" + rows[i]["body"] for i in (0, 1)}  # a quote before each: text to Excel
    flipped_ids = {rows[i]["id"] for i in flipped}
    assert sum(row["id"] in flipped_ids for row in listed) >= len(flipped) // 2

    for row in listed:  # an agent accepts every suggestion
        row["corrected_label"] = row["suggested_label"]
    corrected = write_csv(tmp_path / "corrected.csv", written)
    report = DataReport()
    tickets, _ = load_tickets(corrected, report=report)
    by_id = dict(zip(tickets.ids, tickets.labels))
    original, _ = load_tickets(data)  # the review's cells read back as the export had them
    assert dict(zip(tickets.ids, tickets.texts)) == dict(zip(original.ids, original.texts))
    assert all(by_id[row["id"]] == row["suggested_label"] for row in listed)
    assert report.corrected_labels == sum(row["suggested_label"] != row["category"] for row in listed)
    assert f"{report.corrected_labels} labels replaced by the file's corrected_label column" in report.summary_lines()

    again = tmp_path / "again.csv"  # a reviewed file reviewed again: the corrections stay, the findings are new
    assert main(["review-labels", str(corrected), "--output", str(again), "--folds", "4"]) == 0
    rewritten = {row["id"]: row for row in read_csv(again)}
    assert all(rewritten[row["id"]]["corrected_label"] == row["corrected_label"] for row in written)
    assert all(rewritten[ticket_id]["body"] == body for ticket_id, body in shown.items())  # quoted once, not twice
    assert len([row for row in rewritten.values() if row["reason"]]) < len(listed)


def test_labels_spelled_differently_are_reviewed_as_one_class(sample_csv: Path, tmp_path: Path) -> None:
    rows = read_csv(sample_csv)[:300]
    respelled = [row for row in rows if row["category"] == "billing"][:6]
    for row in respelled:  # the same queue, typed otherwise by some agents, as training reads it
        row["category"] = "BILLING "
    output = tmp_path / "review.csv"
    assert main(["review-labels", str(write_csv(tmp_path / "export.csv", rows)), "--output", str(output),
                 "--folds", "4"]) == 0
    written = {row["id"]: row for row in read_csv(output)}
    assert all(written[row["id"]]["suggested_label"] != "billing" for row in respelled)
    assert {written[row["id"]]["category"] for row in respelled} == {"BILLING "}  # the export's cells, as they were


def test_the_review_names_its_label_column_and_the_training_command_keeps_the_columns(
        sample_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A Freshdesk export: "Type" (question, incident) beside "Group", the queue; "Sub, ject" needs its quotes.
    rows = [{"Sub, ject": row["subject"], "Description": row["body"], "Type": "Question", "Group": row["category"]}
            for row in read_csv(sample_csv)[:200]]
    data, output = write_csv(tmp_path / "export.csv", rows), tmp_path / "my review.csv"
    assert main(["review-labels", str(data), "--output", str(output), "--folds", "3",
                 "--text-columns", '"Sub, ject",Description']) == 0
    printed = capsys.readouterr().out
    assert "labels from column 'Group' (guessed; 'Type' could be the label too: name it with --label-column)" in printed
    suggested = printed.rstrip().rpartition("then train on it: ")[2]
    assert suggested == (f"ticketclf train '{output}' --text-columns '\"Sub, ject\",Description' --output runs/model")
    train = build_parser().parse_args(shlex.split(suggested)[1:])  # as the shell passes it to train
    assert train.data == output and train.text_columns == ("Sub, ject", "Description")
    tickets, _ = load_tickets(train.data, TextOptions(fields=train.text_columns), train.label_column)
    assert tickets.source["label_column"] == "Group" and len(tickets) == len(rows)


def test_the_review_says_which_classes_train_would_refuse_and_names_the_file_it_cannot_review(
        sample_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = read_csv(sample_csv)[:200]
    rows[0]["category"], rows[1]["category"] = "Facilities", "Travel"  # one ticket each: train needs 5
    rows += [dict(rows[1]) for _ in range(4)]  # copies count once, as train counts them
    data, output = write_csv(tmp_path / "export.csv", rows), tmp_path / "review.csv"
    assert main(["review-labels", str(data), "--output", str(output), "--folds", "3"]) == 0
    assert ("note: train needs 5 tickets a class: 'Facilities' (1), 'Travel' (1) have fewer; correct or add "
            "tickets, or train with --merge-rare-classes or --drop-rare-classes") in capsys.readouterr().out
    one_class = write_csv(tmp_path / "one.csv", [{**row, "category": "billing"} for row in rows])
    reviewed = output.read_bytes()  # an agent may be correcting it: not replaced without --overwrite
    assert main(["review-labels", str(one_class), "--output", str(output)]) == 2
    assert f"{output} exists; choose another file name, or pass --overwrite" in capsys.readouterr().err
    assert output.read_bytes() == reviewed
    assert main(["review-labels", str(one_class), "--output", str(output), "--overwrite"]) == 2
    assert f"error: {one_class}: reviewing labels needs at least two classes" in capsys.readouterr().err


@pytest.mark.parametrize(("export_name", "delimiter", "output_name", "written_delimiter"), [
    ("export.csv", ";", "review.csv", ";"),  # as Excel writes CSV where the decimal mark is a comma
    ("export.csv", ",", "review.csv", ","),
    ("export.csv", ";", "review.tsv", "\t"),
    ("export.tsv", "\t", "review.csv", ","),
])
def test_the_review_is_separated_as_the_export_was(sample_csv: Path, tmp_path: Path, export_name: str,
                                                    delimiter: str, output_name: str, written_delimiter: str) -> None:
    rows = read_csv(sample_csv)[:200]
    data, output = write_csv(tmp_path / export_name, rows, delimiter), tmp_path / output_name
    assert main(["review-labels", str(data), "--output", str(output), "--folds", "3"]) == 0
    written = read_csv(output, written_delimiter)
    assert list(written[0]) == list(rows[0]) + list(REVIEW_COLUMNS)
    assert {row["id"]: row["body"] for row in written} == {row["id"]: row["body"] for row in rows}
    tickets, _ = load_tickets(output)  # and training reads it back
    assert sorted(tickets.ids) == sorted(row["id"] for row in rows)


def test_the_data_report_lists_likely_mislabelled_tickets(sample_csv: Path, tmp_path: Path) -> None:
    rows = read_csv(sample_csv)[:400]
    flipped = flip(rows, 0.1)
    report = prepare_data(write_csv(tmp_path / "export.csv", rows)).report
    review = report.label_review
    assert review["flagged"] > 0 and review["tickets"] == 400 - report.duplicates_removed
    listed = report.likely_mislabelled
    assert 0 < len(listed) <= 20
    assert {"id", "text", "label", "suggested_label", "confidence", "reason"} <= set(listed[0])
    flipped_ids = {rows[i]["id"] for i in flipped}
    assert sum(entry["id"] in flipped_ids for entry in listed) >= len(listed) // 2
    lines = "\n".join(report.summary_lines())
    assert f"{review['flagged']} tickets look mislabelled" in lines
    assert f"  {listed[0]['id']}: {listed[0]['label']!r} -> {listed[0]['suggested_label']!r}" in lines
    assert "'ticketclf review-labels'" in lines


@pytest.mark.parametrize(("arguments", "message"), [
    (["{tmp}/missing.csv"], "missing.csv"),
    (["{data}", "--label-column", "queue"], "label column 'queue' not found"),
    (["{data}", "--folds", "1"], "--folds 1: choose 2 to "),
    (["{data}", "--output", "{data}"], "is the input file"),
])
def test_review_labels_errors_are_one_line(tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           arguments: list[str], message: str) -> None:
    given = [argument.format(tmp=tmp_path, data=tiny_csv) for argument in arguments]
    if "--output" not in given:
        given += ["--output", str(tmp_path / "review.csv")]
    assert main(["review-labels", *given]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("ticketclf review-labels: error:") and message in error
    assert not (tmp_path / "review.csv").exists()


def test_review_labels_says_which_rows_it_could_not_review(sample_csv: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rows = read_csv(sample_csv)[:60]
    data = write_csv(tmp_path / "export.csv", [*rows, {**rows[0], "id": "T-new", "category": ""}])
    assert main(["review-labels", str(data), "--output", str(tmp_path / "review.csv"), "--folds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "60 tickets reviewed" in printed and "\n  1 row without a label or text: not reviewed" in printed
    assert "T-new" in {row["id"] for row in read_csv(tmp_path / "review.csv")}  # written, nothing lost
