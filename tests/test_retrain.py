"""Retraining with champion/challenger promotion: merging the corrections into the export, the
decision rule, and one real retrain through the CLI (challenger trained, evaluated beside the
champion on the fixed holdout, promoted, recorded in the history)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from csv_files import read_csv, read_jsonl, write_csv

from classifier.cli import _feedback_corrections, build_parser, main
from classifier.errors import UserError
from classifier.evaluate import EvaluationOptions, evaluate
from classifier.feedback import FeedbackEvent, open_store
from classifier.report import FieldComparison, Interval
from classifier.repository import EVALUATION_REPORT, HISTORY_FILE, INCOMING_DIR, ModelRepository
from classifier.retrain import (
    EVALUATION_SET_FILE,
    Columns,
    Correction,
    MergeReport,
    PromotionPolicy,
    TrainedOn,
    corrections_from_file,
    decide,
    make_holdout,
    merge_corrections,
    retrain,
)
from classifier.text import TextOptions, ticket_text

OLD, NEW = "2026-01-01T00:00:00+00:00", "2026-12-01T00:00:00+00:00"  # before and after the champion


def export_rows() -> list[dict[str, str]]:
    return [{"id": f"T-{i}", "Subject": f"subject {i}", "Body": f"body of ticket {i}",
             "Category": "billing" if i % 2 else "login"} for i in range(10)]


def test_corrections_relabel_join_conflict_and_stay_out_of_the_holdout(tmp_path: Path) -> None:
    unlabelled = {"id": "T-10", "Subject": "subject 10", "Body": "body of ticket 10", "Category": ""}  # not a queue
    export = write_csv(tmp_path / "export.csv", [*export_rows(), unlabelled])
    holdout = [{"subject": f"subject {i}", "body": f"body of ticket {i}", "label": "billing", "id": f"T-{i}"}
               for i in (7, 9)]
    corrections = [
        Correction("T-1", "login", None, OLD),  # relabelled
        Correction("T-2", "login", None, OLD),  # confirmed
        Correction("T-3", "login", None, OLD), Correction("T-3", "billing", None, NEW),  # a conflict: latest wins
        Correction("T-9", "login", None, NEW),  # a holdout ticket: never trained on
        Correction("T-7", "billing", None, NEW),  # a holdout ticket confirmed
        Correction("N-1", "billing", {"subject": "new one", "body": "a ticket only feedback holds"}, OLD),
        Correction("N-2", "billing", None, OLD),  # no text anywhere
        Correction("N-4", "billing", {"priority": "high"}, OLD),  # a corrections file's column, but no text
        Correction("N-3", "login", {"text": "a whole ticket, as the API's 'text'"}, OLD),  # read as the service did
        *[Correction(f"Q-{i}", ("shipping", "Shipping")[i], {"subject": "where is my parcel", "body": f"order {i}"},
                     OLD) for i in range(2)],  # a new label with two tickets (in two spellings): too few to train yet
    ]
    training, evaluation = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    report = merge_corrections(Columns(("subject", "body"), "category").resolve(export), corrections, training,
                               evaluation, holdout=holdout, known_labels={"Billing", "login"}, since="2026-06-01",
                               min_class_count=5)
    rows = {row["id"]: {**row, "label": row["Category"]} for row in read_jsonl(training)}
    assert rows["T-1"]["label"] == "login" and rows["T-2"]["label"] == "login" and rows["T-3"]["label"] == "billing"
    assert "T-9" not in rows and "T-7" not in rows and report.held_out == 2
    scored = {row["id"]: row["Category"] for row in read_jsonl(evaluation)}
    assert scored["T-9"] == "login" and report.holdout_relabelled == 1  # scored against the agent's label
    assert report.holdout_confirmed == 1 and scored["T-7"] == "billing"
    assert "holdout tickets agents labelled (scored, never trained on): 1 relabelled, 1 confirmed" in report.lines()[2]
    assert rows["N-1"]["subject"] == "new one" and rows["N-1"]["label"] == "billing"
    assert (rows["N-3"]["subject"], rows["N-3"]["body"]) == ("", "a whole ticket, as the API's 'text'")
    assert (report.corrected, report.confirmed, report.added, report.without_text) == (1, 2, 4, 2)
    assert report.conflicts == [{"ticket_id": "T-3", "labels": ["login", "billing"]}]
    # The model's "Billing" is the export's "billing": no new label, whatever the spelling.
    assert report.new_labels == {} and report.too_few == {"shipping": 2}
    assert not any(row["label"].lower() == "shipping" for row in rows.values())
    assert any("too few tickets" in line for line in report.lines())


@pytest.mark.parametrize("holdout_id", ["", "H-1"], ids=["holdout without ids", "ids of another system"])
def test_a_holdout_ticket_is_known_by_its_text_where_the_ids_cannot_match(tmp_path: Path, holdout_id: str) -> None:
    export = write_csv(tmp_path / "export.csv", export_rows())
    holdout = [{"subject": "subject 9", "body": "body of ticket 9", "label": "billing", "id": holdout_id}]
    report = merge_corrections(Columns(("subject", "body"), "category").resolve(export), [], tmp_path / "t.jsonl",
                               tmp_path / "e.jsonl", holdout=holdout, known_labels={"billing", "login"},
                               since="2026-06-01", min_class_count=1)
    assert report.held_out == 1 and "T-9" not in {row["id"] for row in read_jsonl(tmp_path / "t.jsonl")}


def test_a_correction_relabels_every_row_of_its_ticket_and_times_compare_as_instants(tmp_path: Path) -> None:
    updated = {**export_rows()[1], "Body": "body of ticket 1, updated"}  # an export listing a ticket twice
    export = write_csv(tmp_path / "export.csv", [*export_rows(), updated])
    corrections = [Correction("T-1", "login", None, OLD),
                   Correction("T-4", "billing", None, "2026-12-07T09:30:00Z"),  # the later one, in UTC
                   Correction("T-4", "login", None, "2026-12-07T10:00:00+02:00")]  # 08:00 UTC: the earlier
    report = merge_corrections(Columns(("subject", "body"), "category").resolve(export), corrections,
                               tmp_path / "t.jsonl", tmp_path / "e.jsonl", holdout=[],
                               known_labels={"billing", "login"}, since="2026-06-01", min_class_count=5)
    assert (report.corrected, report.confirmed) == (2, 0)  # tickets: T-1 once, however many rows
    labels = [(row["id"], row["Category"]) for row in read_jsonl(tmp_path / "t.jsonl")]
    assert [label for ticket, label in labels if ticket == "T-1"] == ["login", "login"]
    assert dict(labels)["T-4"] == "billing" and len(labels) == 11  # nothing added as a feedback-only ticket


def test_a_correction_time_that_is_not_iso_8601_is_refused_with_its_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [{"ticket_id": f"T-{i}", "label": "login", "text": "t", "received_at": at}
                                          for i, at in enumerate([NEW, "07/12/2026"])])
    with pytest.raises(UserError, match=r"c.csv: row 3: received_at '07/12/2026' is not an ISO 8601 time"):
        corrections_from_file(path)


def test_recent_corrected_tickets_are_partly_kept_for_evaluation(tmp_path: Path) -> None:
    export = write_csv(tmp_path / "export.csv", export_rows())
    corrections = [Correction(f"N-{i}", "billing", {"subject": "s", "body": f"new ticket {i}"}, NEW)
                   for i in range(50)]
    report = merge_corrections(Columns(("subject", "body"), "category").resolve(export), corrections,
                               tmp_path / "t.jsonl", tmp_path / "e.jsonl", holdout=[],
                               known_labels={"billing", "login"}, since="2026-06-01", min_class_count=5)
    kept = read_jsonl(tmp_path / "e.jsonl")
    assert 0 < report.evaluated == len(kept) < 25 and report.added + report.evaluated == 50
    assert not {row["id"] for row in kept} & {row["id"] for row in read_jsonl(tmp_path / "t.jsonl")}


def test_the_fields_of_a_corrected_ticket_are_kept_and_those_only_feedback_knows_are_unknown(tmp_path: Path) -> None:
    rows = [{**row, "Priority": "high" if i % 3 else "low", "Tags": "refund|vip" if i % 2 else ""}
            for i, row in enumerate(export_rows())]
    export = write_csv(tmp_path / "export.csv", rows)
    holdout = [{"subject": "subject 9", "body": "body of ticket 9", "label": "billing", "id": "T-9",
                "fields": {"priority": "low", "tags": "vip"}}]
    corrections = [Correction("T-1", "login", None, OLD),
                   Correction("N-1", "billing", {"subject": "new one", "body": "only feedback has it"}, OLD),
                   Correction("Q-1", "shipping", {"subject": "parcel", "body": "a new queue, too few"}, OLD)]
    report = merge_corrections(Columns(("subject", "body"), "category", ("priority", "tags")).resolve(export),
                               corrections, tmp_path / "t.jsonl", tmp_path / "e.jsonl", holdout=holdout,
                               known_labels={"billing", "login"}, since="2026-06-01", min_class_count=2)
    trained = {row["id"]: row for row in read_jsonl(tmp_path / "t.jsonl")}
    # Relabelled, its other fields as the export has them (under the names training reads); an empty tags
    # cell stays "no tags".
    assert (trained["T-1"]["Category"], trained["T-1"]["priority"], trained["T-1"]["tags"]) == \
        ("login", "high", "refund|vip")
    assert trained["T-0"]["tags"] == ""
    assert (trained["N-1"]["priority"], trained["N-1"]["tags"]) == (None, None)  # unknown, not empty
    assert "T-9" not in trained and [row["tags"] for row in read_jsonl(tmp_path / "e.jsonl")] == ["vip"]
    assert report.fields_unknown == 1 and report.field_columns == ["priority", "tags"]
    assert "1 ticket(s) only the feedback holds train the label alone: their priority, tags unknown" in report.lines()

    # Read back as training reads the champion's field columns: the unknown ticket is left out of the fields.
    from classifier.data import load_tickets
    tickets, _ = load_tickets(tmp_path / "t.jsonl", TextOptions(fields=("subject", "body")), "category",
                              field_columns=("priority",), tags_column="tags", tags_delimiter="|")
    by_id = dict(zip(tickets.ids, range(len(tickets.ids))))
    assert tickets.fields["priority"][by_id["N-1"]] == "" and tickets.fields["tags"][by_id["N-1"]] is None
    assert tickets.fields["tags"][by_id["T-1"]] == ["refund", "vip"] and tickets.fields["tags"][by_id["T-0"]] == []


def test_a_json_exports_tags_keep_their_lists_and_nulls(tmp_path: Path) -> None:
    export = tmp_path / "export.jsonl"
    export.write_text("\n".join(json.dumps({**row, "priority": None if i == 2 else "high",
                                            "tags": None if i == 2 else ["refund"] if i % 2 else []})
                                for i, row in enumerate(export_rows())))
    merge_corrections(Columns(("subject", "body"), "category", ("priority", "tags")).resolve(export), [],
                      tmp_path / "t.jsonl", tmp_path / "e.jsonl", holdout=[],
                      known_labels={"billing", "login"}, since="2026-06-01", min_class_count=1)
    trained = {row["id"]: row for row in read_jsonl(tmp_path / "t.jsonl")}
    assert (trained["T-1"]["tags"], trained["T-0"]["tags"], trained["T-2"]["tags"]) == (["refund"], [], None)
    assert trained["T-2"]["priority"] is None


def test_a_holdout_given_in_any_format_is_kept_as_csv_and_giving_it_again_changes_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from classifier.retrain import _holdout, _keep_holdout

    repository = ModelRepository(tmp_path / "models")
    model = repository.model_dir("tickets")
    model.mkdir(parents=True)
    (model / "holdout.csv").write_text("something,else\n1,2\n")  # one this model's columns cannot read
    given = tmp_path / "holdout.jsonl"
    given.write_text("\n".join(json.dumps(row) for row in export_rows()[:4]))
    columns = Columns(("subject", "body"), "category")

    def set_holdout(path: Path) -> list[dict]:
        scratch = tmp_path / "scratch"
        scratch.mkdir(exist_ok=True)
        rows, made = _holdout(repository, "tickets", tmp_path / "export.csv",
                              columns.resolve(path, fields_required=False), columns, None, scratch)
        _keep_holdout(made, model / "holdout.csv", path, len(rows), columns)
        return rows

    with caplog.at_level(logging.INFO, logger="classifier.retrain"):
        rows = set_holdout(given)
        assert [row["id"] for row in rows] == ["T-0", "T-1", "T-2", "T-3"]
        assert f"is now the 4 tickets of {given}, kept as {model / 'holdout.csv'}; the one before could not be " \
               "read by this model's columns" in caplog.text
        kept = (model / "holdout.csv").read_bytes()
        caplog.clear()
        for again in (model / "holdout.csv", given):  # the kept file itself, or the file given before
            assert set_holdout(again) == rows
        assert "is now" not in caplog.text and (model / "holdout.csv").read_bytes() == kept


def test_a_holdout_spelling_the_columns_otherwise_is_read_by_the_champions_names(tmp_path: Path) -> None:
    holdout = write_csv(tmp_path / "holdout.csv", [{"SUBJECT": "s", "body": "b", "CATEGORY": "billing", "ID": "T-1",
                                                    "Priority": "low"}])
    resolved = Columns(("subject", "body"), "category", ("priority", "tags")).resolve(holdout, fields_required=False)
    assert resolved.row(resolved.records[0][1]) == {"subject": "s", "body": "b", "label": "billing", "id": "T-1",
                                                    "fields": {"priority": "low", "tags": None}}


def report_with(accuracy: float, champion: float, f1_delta: dict[str, float], support: int = 30) -> dict:
    metrics = {"accuracy": accuracy, "macro_f1": accuracy, "tickets": 100}
    return {"metrics": metrics, "per_class": [{"label": label, "support": support} for label in f1_delta],
            "compare": {"metrics": {**metrics, "accuracy": champion}, "f1_delta": f1_delta}}


@pytest.mark.parametrize("report, promoted, named", [
    (report_with(0.91, 0.90, {"a": 0.02, "b": -0.01}), True, "+1.00 points"),
    (report_with(0.902, 0.90, {"a": 0.0}), False, "the margin is +0.50"),
    (report_with(0.95, 0.90, {"a": 0.1, "b": -0.2}), False, "b -0.200"),
    (report_with(0.95, 0.90, {"a": 0.1, "b": -0.2}, support=5), True, "no label"),  # too few to count
])
def test_promotion_needs_the_margin_and_no_well_supported_label_losing(report: dict, promoted: bool,
                                                                        named: str) -> None:
    decision = decide(report, PromotionPolicy(margin=0.005, tolerance=0.05, min_support=20))
    assert decision.promoted is promoted and named in " ".join(decision.reasons)
    if promoted:  # a margin of -1 given shows as -100.00: a forced promotion says so
        assert "the margin is +0.50" in " ".join(decision.reasons)


def report_with_fields(*fields: FieldComparison) -> dict:
    """A report better on the label by a point, with these field comparisons against the champion."""
    report = report_with(0.91, 0.90, {"a": 0.0})
    report["compare"]["fields"] = {field.name: dataclasses.asdict(field) for field in fields}
    return report


def priority(this: float, other: float, low: float, high: float, tickets: int = 150) -> FieldComparison:
    return FieldComparison("priority", "accuracy", this, other, tickets, Interval(this - other, low, high))


@pytest.mark.parametrize("fields, promoted, named, losses", [
    ([priority(0.62, 0.70, -0.13, -0.03)], False, "fields that lose more than the tolerance (5.0 points of accuracy, "
     "0.050 of micro-F1), beyond chance: priority accuracy -8.0 points (95 % interval -13.0 to -3.0: worse beyond "
     "chance) on 150 tickets", {"priority": 0.08}),
    # The same drop within chance, one of exactly the tolerance, one on too few tickets: promoted.
    ([priority(0.62, 0.70, -0.15, +0.01)], True, "no field loses more beyond chance either (priority accuracy "
     "-8.0 points (95 % interval -15.0 to +1.0: within chance) on 150 tickets)", {}),
    ([priority(0.75, 0.80, -0.08, -0.02)], True, "-5.0 points (95 % interval -8.0 to -2.0: worse beyond chance) on "
     "150 tickets)", {}),
    ([priority(0.62, 0.70, -0.13, -0.03, tickets=10)], True, "0.05 F1", {}),
    # A champion's field the challenger could not be measured on: all of its figure lost, beyond the tolerance
    # or not.
    ([FieldComparison("tags", "micro-F1", None, 0.6, 300, None)], False, "tags: the champion's micro-F1 is 0.600 "
     "on 300 tickets, and the challenger could not be measured on it", {"tags": 0.6}),
    ([FieldComparison("tags", "micro-F1", None, 0.04, 300, None)], True, "no field loses more beyond chance either "
     "(tags: the challenger could not be measured on it, the champion's micro-F1 is 0.040, within the tolerance)",
     {}),
])
def test_a_challenger_better_on_the_label_is_not_promoted_over_a_field_it_loses(
        fields: list[FieldComparison], promoted: bool, named: str, losses: dict) -> None:
    decision = decide(report_with_fields(*fields), PromotionPolicy(margin=0.005, tolerance=0.05, min_support=20))
    assert decision.promoted is promoted and decision.field_losses == pytest.approx(losses)
    said = "; ".join(decision.reasons)
    assert said.endswith(named) if promoted else named in said  # a field on too few tickets goes unmentioned


def test_a_label_losing_exactly_the_tolerance_does_not_block() -> None:
    assert decide(report_with(0.91, 0.90, {"a": 0.75 - 0.8}), PromotionPolicy(tolerance=0.05)).promoted


def test_a_margin_of_minus_one_and_a_tolerance_of_one_promote_whatever_the_figures() -> None:
    report = report_with_fields(priority(0.10, 0.90, -0.85, -0.75),
                                FieldComparison("tags", "micro-F1", None, 0.9, 300, None))
    report["compare"]["f1_delta"] = {"a": -0.9}
    assert decide(report, PromotionPolicy(margin=-1, tolerance=1)).promoted  # as --margin's help says


@pytest.mark.parametrize("margin", ["5", "-2", "half"])
def test_a_margin_outside_minus_one_to_one_is_refused(margin: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["retrain", "models/tickets", "--data", "export.csv", "--margin", margin])
    assert "expected a share between -1 and 1 (0.005 is half a point)" in capsys.readouterr().err


@pytest.mark.parametrize("policy", [{"margin": 5}, {"margin": float("nan")}, {"tolerance": -0.1},
                                    {"tolerance": 2}, {"min_support": -1}])
def test_a_policy_out_of_range_is_refused_through_the_api_too(policy: dict) -> None:
    with pytest.raises(UserError, match="expected a"):
        PromotionPolicy(**policy)


def test_a_margin_of_minus_one_still_keeps_a_label_from_losing_more_than_the_tolerance() -> None:
    decision = decide(report_with(0.80, 0.90, {"a": -0.2}), PromotionPolicy(margin=-1, tolerance=0.05))
    assert not decision.promoted and decision.f1_losses == {"a": 0.2}


def test_corrections_file_reads_what_feedback_export_writes(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [{"ticket_id": "T-1", "label": "login", "subject": "s", "body": "b",
                                            "received_at": NEW}])
    assert corrections_from_file(path) == [Correction("T-1", "login", {"subject": "s", "body": "b"}, NEW)]


def test_retrain_of_a_model_with_fields_trains_them_again(fields_bundle: Path, fields_csv: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    repository = ModelRepository(tmp_path / "models")
    repository.add_version("tickets", fields_bundle)
    model = repository.model_dir("tickets")
    rows = read_csv(fields_csv)
    corrections = [Correction(rows[0]["id"], rows[1]["category"], None, NEW),
                   Correction("N-1", rows[2]["category"], {"subject": "a ticket only feedback holds",
                                                           "body": rows[2]["body"]}, OLD)]
    # A holdout without the tags column (cut from an export before the model had tags): scored without them.
    holdout = write_csv(tmp_path / "holdout.csv", [{k: v for k, v in row.items() if k != "tags"}
                                                   for row in rows[-12:]])
    with caplog.at_level(logging.INFO, logger="classifier.retrain"):
        result = retrain(model, fields_csv, corrections, holdout_path=holdout,
                         policy=PromotionPolicy(margin=-1, tolerance=1, min_support=0),
                         training_overrides={"epochs": 1})
    assert f"the fixed holdout of every retrain is now the 12 tickets of {holdout}" in caplog.text
    kept_holdout = (model / "holdout.csv").read_bytes()
    challenger = result.version.manifest()
    assert [(field.name, field.kind) for field in challenger.fields] == [("priority", "single"), ("tags", "tags")]
    assert challenger.export is not None  # served as the champion: exported
    trained = {row["id"]: row for row in read_jsonl(result.version.path / "training-data.jsonl")}
    assert (trained["N-1"]["priority"], trained["N-1"]["tags"]) == (None, None)
    assert trained[rows[0]["id"]]["tags"] == rows[0]["tags"] and result.merge.fields_unknown == 1
    assert result.report["fields"]["priority"]["tickets"] > 0  # scored on the holdout's priorities
    assert "reason" in result.report["fields"]["tags"] and "tickets" not in result.report["fields"]["tags"]
    # The champion's fields on the same tickets, as its own evaluation finds them: the decision weighs them.
    champion = evaluate(fields_bundle, result.version.path / EVALUATION_REPORT.parent / EVALUATION_SET_FILE,
                        tmp_path / "champion", EvaluationOptions(baseline=False))
    compared = result.report["compare"]["fields"]
    assert list(compared) == ["priority"]  # tags: not in the holdout

    def right(section: dict) -> float:  # tickets right, of those with a value (one it does not know: a mistake)
        return section["metrics"]["accuracy"] * section["tickets"]

    with_value = champion["fields"]["priority"]["tickets"] + sum(champion["fields"]["priority"]["unknown_values"]
                                                                 .values())
    assert compared["priority"]["tickets"] == with_value  # both on the same holdout tickets
    assert compared["priority"]["this"] * with_value == pytest.approx(right(result.report["fields"]["priority"]))
    assert compared["priority"]["other"] * with_value == pytest.approx(right(champion["fields"]["priority"]))
    assert compared["priority"]["gap"]["value"] == pytest.approx(compared["priority"]["this"]
                                                                 - compared["priority"]["other"])
    assert "no field loses more beyond chance either (priority accuracy " in "; ".join(result.decision.reasons)
    assert f"<td class='name'>priority: accuracy ({compared['priority']['tickets']} tickets)</td>" in (
        result.version.path / EVALUATION_REPORT.parent / "report.html").read_text(encoding="utf-8")

    without_tags = write_csv(tmp_path / "without-tags.csv", [{k: v for k, v in row.items() if k != "tags"}
                                                              for row in rows])
    with pytest.raises(UserError, match=r"without-tags.csv: no column 'tags'; the model also predicts priority, "
                                        r"tags, and retrain trains .* or train a version of the label alone with "
                                        rf"'ticketclf train EXPORT --repository {re.escape(str(repository.root))} "
                                        "--name tickets'"):
        retrain(model, without_tags, [], holdout_path=fields_csv)  # refused before the holdout changes
    assert (model / "holdout.csv").read_bytes() == kept_holdout
    with pytest.raises(UserError, match=r"fields.csv: holds every ticket of the export \(\d+\), which would leave "
                                        "nothing to train on"):
        retrain(model, fields_csv, [], holdout_path=fields_csv)  # the export as its own holdout
    assert (model / "holdout.csv").read_bytes() == kept_holdout
    # One leaving a ticket of a single label to train on: the training fails, and the holdout stays as it was.
    only_one = write_csv(tmp_path / "all-but-one.csv", rows[1:])
    with pytest.raises(UserError, match=r"fewer than 5 tickets.* \(training the challenger on 1 tickets, merged "
                                        r"from the export's \d+ and the corrections, the \d+ holdout tickets left "
                                        r"out; the --holdout file was not kept\)"):
        retrain(model, fields_csv, [], holdout_path=only_one)
    assert (model / "holdout.csv").read_bytes() == kept_holdout
    # A --holdout file that cannot be read as one fails before it replaces the repository's.
    unlabelled = write_csv(tmp_path / "unlabelled.csv", [{"subject": row["subject"], "body": row["body"]}
                                                         for row in rows[-12:]])
    with pytest.raises(UserError, match="unlabelled.csv: label column 'category' not found; .* retrain reads a "
                                        "file by the columns the model was trained on; give it one that has them"):
        retrain(model, fields_csv, [], holdout_path=unlabelled)
    assert (model / "holdout.csv").read_bytes() == kept_holdout
    assert [version.number for version in repository.versions("tickets")] == [1, 2]


def test_retrain_promotes_a_better_challenger_and_records_why(tiny_bundle: Path, tiny_csv: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    repository = ModelRepository(tmp_path / "models")
    repository.add_version("tickets", tiny_bundle)
    rows = read_csv(tiny_csv)
    corrections = write_csv(tmp_path / "corrections.csv", [
        {"ticket_id": rows[0]["id"], "label": rows[1]["category"], "subject": "", "body": "", "received_at": NEW}])
    model = str(repository.model_dir("tickets"))
    # A margin of -1 promotes whatever the figures: the test is about the loop, not a tiny model's accuracy.
    code = main(["retrain", model, "--data", str(tiny_csv), "--corrections", str(corrections), "--epochs", "1",
                 "--margin", "-1", "--tolerance", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "version 2 promoted" in out and "relabelled" in out
    assert "holdout tickets are in the champion's training file, which favours it" in out  # it trained on all
    assert repository.serving_state("tickets").version == 2
    assert (repository.model_dir("tickets") / "holdout.csv").is_file()
    version = repository.version("tickets", 2)
    assert version.evaluation() is not None and (version.path / "training-data.jsonl").is_file()
    scored = version.path / EVALUATION_REPORT.parent / EVALUATION_SET_FILE  # the report names the file it keeps
    assert json.loads((version.path / EVALUATION_REPORT).read_text())["data"]["path"] == str(scored)
    # Trained on a scratch file, gone now: the manifest names the copy the version keeps, wherever it moves.
    assert version.manifest().data.train.path == version.manifest().data.validation.path == "training-data.jsonl"
    data_report = json.loads((version.path / "reports" / "data_report.json").read_text())
    assert list(data_report["files"]) == ["training-data.jsonl"]  # its row numbers are the copy's lines
    assert not list((repository.model_dir("tickets") / INCOMING_DIR).iterdir())
    assert main(["models", "show", f"{model}", "2"]) == 0
    assert f"training data: {version.path / 'training-data.jsonl'} (sha256 " in capsys.readouterr().out
    last = repository.history("tickets")[-1]
    assert last.action == "promote" and last.details["decision"]["promoted"] is True
    assert set(last.details["decision"]["champion"]) == {"accuracy", "macro_f1", "tickets"}
    assert (repository.model_dir("tickets") / HISTORY_FILE).is_file()

    assert "no feedback database at" not in out  # --corrections given

    # --no-promote stages only; the holdout made by the first retrain is reused. Without --feedback, the
    # corrections are those the service stored in its default database, the ticket sent as one 'text'.
    with open_store(model=model, create=True) as store:
        store.add([FeedbackEvent("N-1", rows[3]["category"], {"text": "a new ticket, sent whole as the API's text"})])
    shutil.copy(repository.model_dir("tickets") / "holdout.csv", tmp_path / "holdout-before.csv")
    code = main(["retrain", model, "--data", str(tiny_csv), "--epochs", "1", "--margin", "-1", "--no-promote"])
    out = capsys.readouterr().out
    assert f"1 tickets labelled by agents in sqlite:///{repository.model_dir('tickets') / 'feedback.sqlite'}" in out
    assert "1 new tickets added" in out  # N-1 is not among the recent ones kept for evaluation (its hash)
    assert code == 0 and repository.serving_state("tickets").version == 2
    assert repository.aliases("tickets")["challenger"] == 3
    assert (repository.model_dir("tickets") / "holdout.csv").read_bytes() == \
        (tmp_path / "holdout-before.csv").read_bytes()
    assert "staged only" in repository.history("tickets")[-1].reason


def test_a_challenger_is_not_promoted_over_a_champion_it_was_not_compared_with(
        tiny_bundle: Path, tiny_csv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repository = ModelRepository(tmp_path / "models")
    for _ in range(2):
        repository.add_version("tickets", tiny_bundle)

    def promoted_meanwhile() -> Iterator[Correction]:  # read once the champion is known: another retrain won
        repository.promote("tickets", 2)
        yield from ()

    holdout = write_csv(tmp_path / "holdout.csv", read_csv(tiny_csv)[-8:])
    with caplog.at_level(logging.WARNING, logger="classifier.retrain"):
        result = retrain(repository.model_dir("tickets"), tiny_csv, promoted_meanwhile(), holdout_path=holdout,
                         policy=PromotionPolicy(margin=-1, tolerance=1), training_overrides={"epochs": 1})
    assert result.champion.number == 1 and not result.decision.promoted
    # Nor is its --holdout kept: the new champion may have trained on those tickets.
    assert not (repository.model_dir("tickets") / "holdout.csv").exists()
    assert f"{holdout} is not kept as the fixed holdout: version 2 became the champion" in caplog.text
    assert repository.serving_state("tickets").version == 2 and repository.aliases("tickets")["challenger"] == 3
    last = repository.history("tickets")[-1]
    assert last.action == "retrain" and "version 2 became the champion after version 3 was compared with version 1" \
        in last.reason and "retrain again" in last.reason


def test_the_first_holdout_is_drawn_from_tickets_the_champion_did_not_train_on(tmp_path: Path) -> None:
    rows = [{"id": f"T-{i}", "subject": f"subject {i}", "body": f"ticket number {i}",
             "category": ("billing", "login")[i % 2]} for i in range(400)]
    export, holdout = write_csv(tmp_path / "export.csv", rows), tmp_path / "holdout.csv"
    options = TextOptions(fields=("subject", "body"))
    trained = TrainedOn({ticket_text(row, options) for row in rows[:300]}, options)  # the champion's 300
    make_holdout(export, holdout, Columns(("subject", "body"), "category"), trained, tmp_path)
    drawn = read_csv(holdout)
    assert len(drawn) == 40 and all(int(row["id"][2:]) >= 300 for row in drawn)  # a tenth of 400, all unseen
    assert {row["category"] for row in drawn} == {"billing", "login"}

    make_holdout(export, holdout, Columns(("subject", "body"), "category"),  # 60 unseen: a tenth of 400 would
                 TrainedOn({ticket_text(row, options) for row in rows[:340]}, options), tmp_path)  # leave 20 to learn
    drawn = read_csv(holdout)
    as_holdout = [{"subject": row["subject"], "body": row["body"], "label": row["category"], "id": row["id"]}
                  for row in drawn]
    assert len(drawn) == 40 and trained.count(as_holdout, ["subject", "body"]) > 0  # from the whole export, as before
    # Which the retrain's output then says, as it says when it cannot tell.
    assert any("holdout tickets are in the champion's training file" in line
               for line in MergeReport(holdout_trained=3).lines())
    assert any("cannot be told" in line for line in MergeReport(holdout_trained=None).lines())
    assert not any("holdout" in line for line in MergeReport(holdout_trained=0).lines()[1:])


def test_retrain_reads_the_feedback_database_the_service_writes(tiny_bundle: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    repository = ModelRepository(tmp_path / "models")
    repository.add_version("tickets", tiny_bundle)
    model = repository.model_dir("tickets")

    def corrections(*flags: str) -> list[str]:
        args = build_parser().parse_args(["retrain", str(model), "--data", "export.csv", *flags])
        return [correction.ticket_id for correction in _feedback_corrections(args)]

    monkeypatch.delenv("TICKETCLF_FEEDBACK_DB", raising=False)
    assert corrections() == [] and "no feedback database at" in capsys.readouterr().out
    with open_store(model=model, create=True) as store:  # where `ticketclf serve models/tickets` keeps it
        store.add([FeedbackEvent("T-1", "billing")])
    assert corrections() == ["T-1"] and corrections("--no-feedback") == []
    elsewhere = tmp_path / "elsewhere.sqlite"
    with open_store(str(elsewhere), create=True) as store:
        store.add([FeedbackEvent("T-2", "login")])
    monkeypatch.setenv("TICKETCLF_FEEDBACK_DB", str(elsewhere))  # as the service was told
    assert corrections() == ["T-2"] and f"1 tickets labelled by agents in sqlite:///{elsewhere}" in \
        capsys.readouterr().out
    monkeypatch.setenv("TICKETCLF_FEEDBACK_DB", "off")  # the service stores none
    assert corrections() == [] and "feedback is off" in capsys.readouterr().out
    assert corrections("--feedback", str(elsewhere)) == ["T-2"]
