"""The report's sections on the fields a bundle predicts besides its label: numbers checked against sklearn on
the predictor's own answers, files, a test file without a field's column, thresholds written for a field.

Everything runs the real exported ``fields_bundle`` (category, priority, tags) on ``fields_csv``, the file it was
trained on (some priorities empty, some tickets without tags), or on files made from it.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from csv_files import read_csv, write_csv
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from sklearn.preprocessing import MultiLabelBinarizer

from classifier.bundle import read_manifest
from classifier.data import Tickets
from classifier.evaluate import REPORT_FILES, EvaluationOptions, evaluate, summary_table
from classifier.evaluate_fields import (
    FieldOutcomes,
    FieldRun,
    compared_fields,
    field_runs,
    field_warnings,
    file_stems,
)
from classifier.fields import tag_metrics
from classifier.manifest import FieldHead
from classifier.predict import Predictor

PRIORITY_FILES = ("field_priority_confusion_matrix.csv", "field_priority_confusion_matrix.png",
                  "field_priority_precision_coverage.png")


@pytest.fixture(scope="module")
def evaluated(fields_bundle: Path, fields_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("fields_report")
    return evaluate(fields_bundle, fields_csv, output, EvaluationOptions(baseline=False)), output


@pytest.fixture(scope="module")
def answers(fields_bundle: Path, fields_csv: Path) -> tuple[list[dict[str, str]], list]:
    """The test rows, read with plain csv, and the predictor's answers to them (one ticket per batch, as the
    evaluation runs the int8 model)."""
    rows = read_csv(fields_csv)
    return rows, Predictor.load(fields_bundle).predict(rows, top_k=1, batch_size=1)


# ---------------------------------------------------------------- the single-label field


def test_the_report_has_a_section_per_field_in_the_manifests_order(evaluated, fields_bundle):
    report, output = evaluated
    assert list(report["fields"]) == [spec.name for spec in read_manifest(fields_bundle).fields] == ["priority", "tags"]
    assert report["fields"]["priority"]["kind"] == "single" and report["fields"]["tags"]["kind"] == "tags"
    assert report["files"] == [*REPORT_FILES, *PRIORITY_FILES]
    summary = summary_table(report)
    assert "field priority (single label" in summary and "field tags (tags" in summary
    page = (output / "report.html").read_text(encoding="utf-8")
    assert "<h2>Field: priority</h2>" in page and "<h2>Field: tags</h2>" in page
    assert "every test ticket has its tags cell (empty: no tags)" in page  # an empty cell is a value: no tags
    # A tag given to no ticket has no precision, one no ticket carries no recall: a dash, not 0.00.
    undefined = sum((row["predicted"] == 0) + (row["support"] == 0) + (row["predicted"] == row["support"] == 0)
                    for row in report["fields"]["tags"]["per_tag"])
    start = page.index("<h2>Field: tags</h2>")  # priority's section may have dashes of its own
    end = page.find("<h2>", start + 1)
    assert page[start:end if end > 0 else None].count("<td data-v='-1'>–</td>") == undefined
    assert json.loads((output / "report.json").read_text(encoding="utf-8"))["fields"] == report["fields"]


def test_single_field_metrics_equal_sklearn_and_leave_out_tickets_without_a_value(evaluated, answers, fields_bundle):
    report, output = evaluated
    rows, predictions = answers
    section = report["fields"]["priority"]
    known = [i for i, row in enumerate(rows) if row["priority"]]
    y_true = [rows[i]["priority"] for i in known]
    y_pred = [predictions[i].fields["priority"]["label"] for i in known]
    assert section["without_value"] == len(rows) - len(known) > 0  # the fixture empties every seventh priority
    assert section["tickets"] == section["metrics"]["tickets"] == len(known)
    assert section["metrics"]["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    # Warned where always answering the most common priority would be right almost as often.
    majority = Counter(y_true).most_common(1)[0][1] / len(y_true)
    warned = [w for w in report["warnings"] if w.startswith("field 'priority' is right on ")]
    avoided = 1 - (1 - accuracy_score(y_true, y_pred)) / (1 - majority)  # of the mistakes the majority makes
    assert bool(warned) == (avoided < 0.25)
    if warned:  # says which side of the majority it is on
        right, common = sum(t == p for t, p in zip(y_true, y_pred)), Counter(y_true).most_common(1)[0][1]
        compared = "less than" if right < common else "no more than" if right == common else "hardly more than"
        assert f", {compared} always answering " in warned[0]
    assert section["metrics"]["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    labels = section["labels"]
    assert section["confusion_matrix"]["matrix"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()
    precision, recall, _, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    by_label = {row["label"]: row for row in section["per_class"]}
    for i, label in enumerate(labels):
        assert by_label[label]["precision"] == pytest.approx(precision[i])
        assert by_label[label]["recall"] == pytest.approx(recall[i])
        assert by_label[label]["support"] == support[i]
    # The thresholds: one per class for the target, and the bundle's as evaluated.
    coverage = section["precision_coverage"]
    assert set(coverage["per_class_thresholds"]) == set(labels)
    assert coverage["table"] and coverage["target_precision"] == 0.95
    # As training set it: 0.5, or 1 where the tiny model's priority hardly beat its most common value.
    threshold = read_manifest(fields_bundle).fields[0].threshold  # type: ignore[index]
    assert section["bundle_thresholds"] == {"global": threshold, "per_class": {}}
    # The bundle's thresholds route a ticket whose field confidence reaches them, as predictions flag them.
    confidence = [predictions[i].fields["priority"]["confidence"] for i in known]
    assert coverage["with_bundle_thresholds"]["tickets"] == sum(c >= threshold for c in confidence) == sum(
        not predictions[i].fields["priority"]["needs_review"] for i in known)


def test_each_single_field_has_its_confusion_matrix_and_curves(evaluated):
    report, output = evaluated
    for name in PRIORITY_FILES:
        assert (output / name).is_file(), name
    for name in PRIORITY_FILES[1:]:
        with Image.open(output / name) as image:
            assert image.format == "PNG" and image.width > 300
    with open(output / PRIORITY_FILES[0], newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    section = report["fields"]["priority"]["confusion_matrix"]
    assert table[0][1:] == section["labels"]
    assert [[int(cell) for cell in row[1:]] for row in table[1:]] == section["matrix"]


# ---------------------------------------------------------------- tags


def test_tags_metrics_equal_a_recomputation_with_sklearn(evaluated, answers, fields_bundle):
    report, _ = evaluated
    rows, predictions = answers
    section = report["fields"]["tags"]
    spec = read_manifest(fields_bundle).fields[1]
    tags = spec.labels
    binarizer = MultiLabelBinarizer(classes=tags)
    truth_sets = [[tag.strip() for tag in row["tags"].split(spec.delimiter) if tag.strip() in tags] for row in rows]
    y_true = binarizer.fit_transform(truth_sets)
    y_pred = binarizer.transform([[answer["tag"] for answer in p.tags] for p in predictions])
    assert section["tickets"] == len(rows) and section["without_value"] == 0  # an empty cell: a ticket without tags
    assert section["tickets_without_tags"] == int((y_true.sum(axis=1) == 0).sum()) > 0
    assert section["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro", zero_division=0))
    assert section["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert section["subset_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    rows_by_tag = {row["tag"]: row for row in section["per_tag"]}
    assert list(rows_by_tag) == tags
    for j, tag in enumerate(tags):
        row = rows_by_tag[tag]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision[j], recall[j], f1[j]))
        assert row["support"] == support[j] and row["predicted"] == int(y_pred[:, j].sum())
        assert row["threshold"] == spec.threshold_of(tag)  # the thresholds training chose, as the predictor uses


# ---------------------------------------------------------------- a file without a field's column, odd values


def test_a_test_file_without_the_priority_column_still_gives_a_report(fields_bundle, fields_csv, evaluated, tmp_path):
    full, _ = evaluated
    rows = [{key: value for key, value in row.items() if key != "priority"} for row in read_csv(fields_csv)]
    report = evaluate(fields_bundle, write_csv(tmp_path / "no_priority.csv", rows), tmp_path / "report",
                      EvaluationOptions(baseline=False))
    priority = report["fields"]["priority"]
    assert priority["kind"] == "single" and "no column 'priority'" in priority["reason"]
    assert report["fields"]["tags"] == full["fields"]["tags"]  # the rest of the report as with the column
    assert report["metrics"] == full["metrics"]
    assert any("'priority' not evaluated" in warning for warning in report["warnings"])
    assert "field priority: not evaluated: the test file has no column 'priority'" in summary_table(report)
    assert report["files"] == list(REPORT_FILES)
    assert not any((tmp_path / "report" / name).exists() for name in PRIORITY_FILES)
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "Not evaluated: the test file has no column" in page


def test_field_values_the_model_does_not_know_are_counted_and_left_out(fields_bundle, fields_csv, tmp_path):
    rows = read_csv(fields_csv)
    known = [i for i, row in enumerate(rows) if row["priority"]]
    rows[known[0]]["priority"] = "blocker"
    rows[known[1]]["priority"] = "blocker"
    rows[known[2]]["priority"] = rows[known[2]]["priority"].upper()  # the model's value, spelled otherwise
    report = evaluate(fields_bundle, write_csv(tmp_path / "odd.csv", rows), tmp_path / "report",
                      EvaluationOptions(baseline=False))
    section = report["fields"]["priority"]
    assert section["unknown_values"] == {"blocker": 2}
    assert section["spellings_matched"] == {rows[known[2]]["priority"]: rows[known[2]]["priority"].lower()}
    assert section["tickets"] == len(known) - 2
    assert any("'blocker' (2)" in warning for warning in report["warnings"])
    upper, lower = rows[known[2]]["priority"], rows[known[2]]["priority"].lower()
    assert (f"field 'priority': test values matched to the model's spelling (they differ only in case or number "
            f"format): {upper!r} as {lower!r}") in report["warnings"]


# ---------------------------------------------------------------- thresholds into the bundle


def test_apply_threshold_writes_the_fields_per_class_thresholds(fields_bundle, fields_csv, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(fields_bundle, bundle)
    before = read_manifest(bundle)
    report = evaluate(bundle, fields_csv, tmp_path / "report",
                      EvaluationOptions(baseline=False, apply_threshold_for_precision=0.5))
    manifest = read_manifest(bundle)
    priority, tags = manifest.fields
    applied = report["fields"]["priority"]["thresholds_applied"]
    assert applied["target_precision"] == 0.5
    assert priority.per_class == applied["per_class"] and set(priority.per_class) == set(priority.labels)
    assert tags.per_class == before.fields[1].per_class  # the tags keep the thresholds training chose
    assert manifest.thresholds.per_class == report["thresholds_applied"]["per_class"]  # the label's, as before
    assert manifest.thresholds.source.model_dump()["fields"]["priority"]["tickets"] == applied["tickets"]
    # The predictor flags the field by its new thresholds.
    predictions = Predictor.load(bundle).predict(read_csv(fields_csv)[:40], top_k=1, batch_size=1)
    for prediction in predictions:
        field = prediction.fields["priority"]
        assert field["needs_review"] == (field["confidence"] < priority.per_class[field["label"]])
    expected = applied["expected"]
    assert 0 <= expected["coverage"] <= 1
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "for the label's classes and for the field" in page


def test_apply_keeps_every_answer_of_a_field_that_is_no_guide_in_review() -> None:
    from classifier.data import Tickets
    from classifier.evaluate_fields import field_runs, field_thresholds
    from classifier.manifest import ALWAYS_REVIEW, FieldHead

    # 30 tickets, 21 of them "normal": a model sure of "high" on the first 10 is right on 9 of them, then says
    # "high" for 12 "normal" ones (17 right in all, always "normal" 21): no better than the most common value.
    values = ["high"] * 9 + ["normal"] * 21
    logits = np.array([[4.0, 0.0]] * 10 + [[3.0, 0.0]] * 12 + [[0.0, 3.0]] * 8)
    spec = FieldHead(name="priority", kind="single", labels=["high", "normal"], output="logits_single_priority")
    tickets = Tickets([f"t {i}" for i in range(30)], ["a"] * 30, [str(i) for i in range(30)],
                      fields={"priority": values})
    [run] = field_runs([spec], tickets, [logits], 0.9)
    [warning] = [w for w in field_warnings({"priority": run.section}, False) if "no guide" in w]
    applied = field_thresholds([run], 0.9)["priority"]
    # The 10 sure answers reach 90 % precision on these tickets; written, they would route priority unreviewed.
    assert set(applied.per_class.values()) == {ALWAYS_REVIEW} and applied.expected.tickets == 0


def test_apply_without_the_fields_column_leaves_its_thresholds(fields_bundle, fields_csv, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(fields_bundle, bundle)
    rows = [{key: value for key, value in row.items() if key != "priority"} for row in read_csv(fields_csv)]
    report = evaluate(bundle, write_csv(tmp_path / "no_priority.csv", rows), tmp_path / "report",
                      EvaluationOptions(baseline=False, apply_threshold_for_precision=0.5))
    assert read_manifest(bundle).fields == read_manifest(fields_bundle).fields
    assert read_manifest(bundle).thresholds.per_class  # the label's were written
    assert any("thresholds in the bundle are left as they were" in warning for warning in report["warnings"])


# ---------------------------------------------------------------- side by side


def test_a_compared_bundle_is_set_beside_on_each_field_it_predicts(evaluated, fields_bundle, fields_csv,
                                                                    exported_bundle, tmp_path):
    report, _ = evaluated
    itself = evaluate(fields_bundle, fields_csv, tmp_path / "itself",
                      EvaluationOptions(baseline=False, compare_bundle=fields_bundle))
    priority, tags = report["fields"]["priority"], report["fields"]["tags"]
    compared = itself["compare"]["fields"]
    # Every ticket with a value counts beside another model, a value or tag the model does not know as a mistake:
    # on the fixture's file that is the priorities it never learnt, and the tags.
    with_priority = sum(bool(row["priority"]) for row in read_csv(fields_csv))
    assert [(field["measure"], field["tickets"], field["gap"]["value"]) for field in compared.values()] == [
        ("accuracy", with_priority, 0), ("micro-F1", tags["tickets"], 0)]
    assert compared["priority"]["this"] == compared["priority"]["other"] == pytest.approx(
        priority["metrics"]["accuracy"] * priority["tickets"] / with_priority)
    assert compared["tags"]["this"] == compared["tags"]["other"] <= tags["micro_f1"]
    assert f"fields against the compared model: priority accuracy +0.0 points (95 % interval +0.0 to +0.0: within " \
           f"chance) on {with_priority} tickets; tags micro-F1 +0.000" in summary_table(itself)
    page = (tmp_path / "itself" / "report.html").read_text(encoding="utf-8")
    assert f"<td class='name'>priority: accuracy ({with_priority} tickets)</td>" in page
    assert f"<td class='name'>tags: micro-F1 ({tags['tickets']} tickets)</td>" in page
    # Beside a bundle of the label alone there is no field to compare.
    label_alone = evaluate(fields_bundle, fields_csv, tmp_path / "label-alone",
                           EvaluationOptions(baseline=False, compare_bundle=exported_bundle))
    assert label_alone["compare"]["fields"] == {}
    assert "fields against" not in summary_table(label_alone)
    assert "priority: accuracy" not in (tmp_path / "label-alone" / "report.html").read_text(encoding="utf-8")


def outcomes(measure: str, rows: list[int], counts: list) -> FieldOutcomes:
    return FieldOutcomes(measure, np.array(rows), np.array(counts).reshape(len(rows), -1))


def priority_run(measured: FieldOutcomes) -> list[FieldRun]:
    return [FieldRun(SimpleNamespace(name="priority"), None, outcomes=measured)]  # type: ignore[arg-type]


def test_fields_are_compared_on_the_tickets_both_models_were_measured_on():
    # This model right on rows 1-4 of 0-4, the other on 1, 2 and 5 of 1-5: on the common rows 1-4, 4 against 2.
    ours = outcomes("accuracy", [0, 1, 2, 3, 4], [0, 1, 1, 1, 1])
    theirs = outcomes("accuracy", [1, 2, 3, 4, 5], [1, 1, 0, 0, 1])
    field = compared_fields(priority_run(ours), {"priority": theirs})["priority"]
    assert (field.this, field.other, field.tickets, field.gap.value) == (1.0, 0.5, 4, 0.5)
    assert field.gap.verdict == "within chance"  # 2 tickets only this model gets right, of 4
    # Tags: micro-F1 of the (tp, fp, fn) summed, 2 tp / (2 tp + fp + fn); worse here.
    tags_ours = outcomes("micro-F1", [0, 1, 2], [[1, 1, 0], [0, 0, 1], [1, 0, 0]])
    tags_theirs = outcomes("micro-F1", [0, 1, 2], [[1, 0, 0], [1, 0, 0], [1, 0, 0]])
    field = compared_fields(priority_run(tags_ours), {"priority": tags_theirs})["priority"]
    assert (field.this, field.other) == (pytest.approx(4 / 6), 1.0) and field.gap.value == pytest.approx(-1 / 3)
    # Another kind, fewer than 2 common tickets, or not measured here: the other's figure alone, no gap.
    for mine, other in ((ours, tags_theirs), (ours, outcomes("accuracy", [4, 9], [1, 0])), (None, theirs)):
        field = compared_fields(priority_run(mine) if mine else [], {"priority": other})["priority"]
        assert (field.this, field.gap, field.other, field.tickets) == (None, None, other.figure(), len(other.rows))
        assert field.summary.startswith(f"priority: the compared model was measured on {len(other.rows)} tickets, "
                                        "this one could not be")


def test_outcomes_follow_the_file_rows_and_count_what_a_model_does_not_know_as_its_mistake():
    # Four tickets from rows 3, 7, 9, 12: priority "urgent" unknown to the model, one empty; tags "rare" unknown.
    tickets = Tickets(["a", "b", "c", "d"], ["x"] * 4, [""] * 4, rows=[3, 7, 9, 12],
                      fields={"priority": ["high", "", "urgent", "low"],
                              "tags": [["vip"], None, ["rare", "vip"], []]})
    single = FieldHead(name="priority", kind="single", labels=["high", "low"], output="p")
    tags = FieldHead(name="tags", kind="tags", labels=["vip", "refund"], output="t", per_class={"vip": 0.5,
                                                                                              "refund": 0.5})
    priority_logits = np.array([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])  # always "high"
    tag_logits = np.array([[3.0, -3.0], [3.0, -3.0], [3.0, 3.0], [-3.0, -3.0]])  # row 9: vip and a wrong refund
    priority_run, tags_run = field_runs([single, tags], tickets, [priority_logits, tag_logits], 0.95)
    assert priority_run.section.tickets == 2  # its own figures leave the unknown value out ...
    assert priority_run.outcomes.rows.tolist() == [3, 9, 12]  # ... the comparison counts it, as a mistake
    assert priority_run.outcomes.counts[:, 0].tolist() == [1, 0, 0]
    assert tags_run.outcomes.rows.tolist() == [3, 9, 12]  # row 7 has no tags value
    assert tags_run.outcomes.counts.tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]  # "rare": never given, missed
    assert tags_run.section.micro_f1 == pytest.approx(2 * 2 / (2 * 2 + 1))  # "rare" left out of its own figure


def test_a_single_tag_is_scored_as_a_tag_not_as_a_binary_target():
    # sklearn would read one column as a binary target and give its accuracy (3 of 5) as the micro-F1.
    truth = np.array([[1], [1], [0], [0], [0]], dtype=float)
    given = np.array([[1], [0], [1], [0], [0]])
    metrics = tag_metrics(given, truth, ["vip"])
    assert metrics["micro_f1"] == metrics["macro_f1"] == pytest.approx(0.5)
    assert metrics["per_tag"]["vip"] == {"precision": 0.5, "recall": 0.5, "f1": pytest.approx(0.5), "support": 2}


# ---------------------------------------------------------------- a bundle of the label alone


def test_a_bundle_of_the_label_alone_has_no_field_sections(exported_bundle, fields_csv, tmp_path):
    report = evaluate(exported_bundle, fields_csv, tmp_path / "report", EvaluationOptions(baseline=False))
    assert "fields" not in report
    assert report["files"] == list(REPORT_FILES)
    assert not any(line.startswith("field ") for line in summary_table(report).splitlines())
    assert "Field:" not in (tmp_path / "report" / "report.html").read_text(encoding="utf-8")


def test_file_stems_are_safe_and_distinct():
    assert file_stems(["priority", "Queue name", "queue-name", "ü", "Priorität", "Größe", "优先级"]) == [
        "field_priority", "field_queue_name", "field_queue_name_", "field_u", "field_prioritat", "field_grosse",
        "field_column"]
