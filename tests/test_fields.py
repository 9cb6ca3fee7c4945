"""Fields besides the label (classifier.fields): tags read from CSV and JSON, joint training with a
field missing in some rows, the heads in the ONNX graph, and predictions per field."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from csv_files import read_csv, write_csv

from classifier import bundle, fields
from classifier.data import load_tickets, prepare_data
from classifier.errors import UserError
from classifier.fields import choose_tag_thresholds, detect_delimiter, tag_matrix
from classifier.options import DataOptions
from classifier.predict import Predictor


def tickets_with_tags(cells: list[str]) -> list[dict[str, str]]:
    return [{"subject": f"ticket {i}", "body": "text", "category": "a" if i % 2 else "b", "tags": cell}
            for i, cell in enumerate(cells)]


# ---------------------------------------------------------------- reading tags


@pytest.mark.parametrize("cells, expected", [
    (["refund|vip", "api", ""], [["refund", "vip"], ["api"], []]),
    (["refund, vip", "api , outage", "api"], [["refund", "vip"], ["api", "outage"], ["api"]]),
    (["refund; vip", "a;b;a", "x"], [["refund", "vip"], ["a", "b"], ["x"]]),
    (['["refund", "vip"]', '[]', '["a, b"]'], [["refund", "vip"], [], ["a, b"]]),
])
def test_tags_cells_of_a_csv_are_split_by_the_delimiter_found(tmp_path: Path, cells: list[str],
                                                               expected: list[list[str]]) -> None:
    path = write_csv(tmp_path / "t.csv", tickets_with_tags(cells))
    tickets, _ = load_tickets(path, tags_column="tags")
    assert tickets.fields["tags"] == expected


def test_tags_of_a_json_export_are_lists_and_null_is_unknown(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    records = [{"subject": "a", "body": "b", "category": "x", "tags": ["refund", "vip"]},
               {"subject": "c", "body": "d", "category": "y", "tags": None},
               {"subject": "e", "body": "f", "category": "y", "tags": []}]
    path.write_text("\n".join(json.dumps(record) for record in records), encoding="utf-8")
    tickets, _ = load_tickets(path, tags_column="tags")
    assert tickets.fields["tags"] == [["refund", "vip"], None, []]
    # An unknown ticket is masked in the training targets; a ticket without tags is all negatives.
    assert tag_matrix(tickets.fields["tags"], ["refund", "vip"]).tolist() == [[1, 1], [-1, -1], [0, 0]]


def test_a_given_delimiter_wins_over_detection(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", tickets_with_tags(["refund vip", "a,b c"]))
    tickets, _ = load_tickets(path, tags_column="tags", tags_delimiter=" ")
    assert tickets.fields["tags"] == [["refund", "vip"], ["a,b", "c"]]
    assert detect_delimiter(["a|b", "c,d", "e|f"]) == "|"
    assert detect_delimiter(["one", "two"]) is None


def test_a_given_delimiter_no_cell_holds_is_refused_when_another_is_common(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", tickets_with_tags(["refund|vip", "api|outage", "api"]))
    # Read with ',' each cell would be one tag, 'refund|vip', and the model would learn those as tags.
    with pytest.raises(UserError, match=r"t.csv: the tags delimiter ',' is in none of the 'tags' cells, while 2 "
                                        r"of them hold '\|'; to train on them, give --tags-delimiter '\|'"):
        load_tickets(path, tags_column="tags", tags_delimiter=",")
    # Cells of one tag each hold no delimiter at all: nothing to tell, the given one is taken.
    path = write_csv(tmp_path / "single.csv", tickets_with_tags(["refund", "api", ""]))
    assert load_tickets(path, tags_column="tags", tags_delimiter=",")[0].fields["tags"] == [["refund"], ["api"], []]


def _error(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except UserError as error:
        return str(error)
    raise AssertionError("no UserError")


@pytest.mark.parametrize("cell, message", [
    ('["refund", "vip"', "row 3, column 'tags': starts like a JSON list of tags but is not one"),
    ('[{"name": "vip"}]', "row 3, column 'tags': a list of tags must hold text only"),
])
def test_bad_tags_cells_are_one_line_naming_the_row(tmp_path: Path, cell: str, message: str) -> None:
    path = write_csv(tmp_path / "t.csv", tickets_with_tags(["api", cell]))
    error = _error(lambda: load_tickets(path, tags_column="tags"))
    assert message in error and "\n" not in error


def test_bad_tags_columns_are_one_line_errors(tmp_path: Path, sample_csv: Path) -> None:
    missing = _error(lambda: prepare_data(sample_csv, DataOptions(tags_column="labels")))
    assert "column 'labels' not found" in missing and "--tags-column" in missing
    same = _error(lambda: prepare_data(sample_csv, DataOptions(label_column="category", tags_column="category")))
    assert "column 'category' is the label column" in same
    path = write_csv(tmp_path / "rare.csv",  # every ticket a tag of its own
                     [dict(row, tags=f"tag{i}") for i, row in enumerate(read_csv(sample_csv))])
    rare = _error(lambda: prepare_data(path, DataOptions(tags_column="tags")))
    assert re.search(r"no tag in column 'tags' is on 5 training tickets or more \(1\d\d\d tags in all\)", rare)
    for error in (missing, same, rare):
        assert "\n" not in error


def test_the_data_report_counts_each_field(fields_csv: Path) -> None:
    data = prepare_data(fields_csv, DataOptions(label_column="category", field_columns=("priority",),
                                                tags_column="tags"))
    rows = read_csv(fields_csv)
    priority = data.report.fields["priority"]
    assert priority["tickets_without"] == sum(not row["priority"] for row in rows)
    assert priority["classes"] == len({row["priority"] for row in rows if row["priority"]})
    tags = data.report.fields["tags"]
    assert tags["tickets_without"] == 0  # an empty cell is a ticket without tags, not an unknown one
    assert "legal" not in [spec for spec in data.fields if spec.kind == "tags"][0].labels  # on too few tickets
    lines = "\n".join(data.report.summary_lines())
    assert "field 'priority' (single label)" in lines and "field 'tags' (tags)" in lines


def test_a_frequent_tag_gets_the_threshold_of_its_best_f1() -> None:
    positives = fields.MIN_TAG_POSITIVES
    scores = np.concatenate([np.linspace(0.9, 0.7, positives), [0.4, 0.2], [0.05]])[:, None]
    truth = np.concatenate([np.ones(positives), [0, 0], [-1]])[:, None].astype(np.float32)
    assert choose_tag_thresholds(scores, truth) == [pytest.approx((0.7 + 0.4) / 2)]  # all positives, no negative


def test_rare_tags_share_one_threshold_so_a_lone_positive_cannot_give_a_tag_to_everyone() -> None:
    # Tag 0: its one positive scored lowest of all; chosen alone, F1 picks a threshold under it and gives
    # the tag to every ticket. Tag 1: scored well. Together they choose a threshold that suits them both.
    rng = np.random.default_rng(0)
    scores = np.column_stack([np.r_[rng.uniform(0.05, 0.3, 49), 0.01],
                              np.r_[rng.uniform(0.7, 0.9, 8), rng.uniform(0, 0.3, 42)]])
    truth = np.column_stack([np.r_[np.zeros(49), 1], np.r_[np.ones(8), np.zeros(42)]]).astype(np.float32)
    first, second = choose_tag_thresholds(scores, truth)
    assert first == second and 0.3 < first < 0.7


def test_tags_with_too_few_positives_together_keep_the_default_threshold() -> None:
    scores = np.array([[0.9, 0.02], [0.7, 0.1], [0.4, 0.3], [0.2, 0.05]])
    truth = np.array([[1, 0], [1, 0], [0, 1], [-1, -1]], dtype=np.float32)
    assert choose_tag_thresholds(scores, truth) == [fields.DEFAULT_TAG_THRESHOLD] * 2


# ---------------------------------------------------------------- training, export, prediction


@pytest.mark.parametrize(("answers", "threshold"), [("always the most common", 1.01), ("always right", 0.5)])
def test_a_field_no_better_than_its_most_common_value_flags_every_answer(
        sample_csv: Path, answers: str, threshold: float, caplog: pytest.LogCaptureFixture) -> None:
    from classifier.train import _field_targets, field_heads

    data = prepare_data(sample_csv, DataOptions(label_column="category", field_columns=("priority",),
                                                validation_fraction=0.2))
    truth = _field_targets(data, data.validation)["field_labels"]
    known = truth[:, 0][truth[:, 0] != fields.MISSING]
    assert len(known) >= 50  # enough validation tickets to judge the field
    [priority] = data.fields
    chosen = np.full(len(truth), np.bincount(known).argmax()) if answers.startswith("always the") else \
        np.where(truth[:, 0] == fields.MISSING, 0, truth[:, 0])
    field_logits = 40 * np.eye(len(priority.labels))[chosen]  # sure to the last decimal shown: still reviewed
    label_ids = np.array([data.labels.index(label) for label in data.validation.labels])
    label_logits = np.eye(len(data.labels))[label_ids]
    [section] = field_heads(data, cast(Any, None), (label_logits, field_logits), (label_ids, truth))
    assert section.threshold == threshold
    assert section.validation_metrics["most_common_share"] == pytest.approx(np.bincount(known).max() / len(known))
    assert ("every answer of it is flagged needs_review" in caplog.text) == (threshold > 1)


def test_a_field_with_too_few_validation_tickets_to_judge_routes_unchecked_and_says_so(
        sample_csv: Path, caplog: pytest.LogCaptureFixture) -> None:
    from classifier.train import _field_targets, field_heads

    data = prepare_data(sample_csv, DataOptions(label_column="category", field_columns=("priority",),
                                                validation_fraction=0.03))
    truth = _field_targets(data, data.validation)["field_labels"]
    known = truth[:, 0][truth[:, 0] != fields.MISSING]
    assert 0 < len(known) < 50
    [priority] = data.fields
    field_logits = 40 * np.eye(len(priority.labels))[np.full(len(truth), np.bincount(known).argmax())]
    label_ids = np.array([data.labels.index(label) for label in data.validation.labels])
    [section] = field_heads(data, cast(Any, None), (np.eye(len(data.labels))[label_ids], field_logits),
                            (label_ids, truth))
    assert section.threshold == 0.5  # no better than the most common value, but too few tickets to tell
    assert f"field 'priority': {len(known)} validation tickets have a value, too few (under 50) to tell" in caplog.text


def test_a_field_that_avoids_most_mistakes_of_its_most_common_value_is_a_guide() -> None:
    assert fields.hardly_beats_majority(0.4375, 0.42)  # the sample's priority: 3 % of the mistakes avoided
    assert fields.hardly_beats_majority(0.55, 0.5)  # 10 %
    assert not fields.hardly_beats_majority(0.995, 0.96)  # one value on 96 % of tickets, 88 % avoided
    assert not fields.hardly_beats_majority(0.8, 0.5)


def test_one_bundle_learns_every_field(fields_bundle: Path) -> None:
    manifest = bundle.read_manifest(fields_bundle)
    assert manifest.fields is not None
    priority, tags = manifest.fields
    assert (priority.name, priority.kind, tags.name, tags.kind) == ("priority", "single", "tags", "tags")
    assert priority.validation_metrics["tickets"] > 0 and 0 <= priority.validation_metrics["accuracy"] <= 1
    assert set(tags.per_class) == set(tags.labels) and "legal" in tags.left_out
    assert (fields_bundle / bundle.FIELD_HEADS_FILE).is_file()
    assert bundle.FIELD_HEADS_FILE in (manifest.integrity.files if manifest.integrity else {})


def test_the_training_summary_shows_the_labels_macro_f1_not_the_mean_over_fields(
        fields_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from classifier.cli import _print_training_summary

    metrics = bundle.read_manifest(fields_bundle).training.validation_metrics
    assert metrics["macro_f1"] != metrics["label_macro_f1"]  # the mean over the fields, which early stopping watches
    _print_training_summary(fields_bundle)
    out = capsys.readouterr().out
    assert f"validation accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['label_macro_f1']:.4f}\n" in out
    assert out.splitlines()[2].startswith("  served (")  # what serves first, the model alone after it


def test_the_exported_heads_compute_what_pytorch_does(fields_bundle: Path, fields_csv: Path) -> None:
    texts = bundle.read_examples(fields_bundle)[0][:40]
    torch = Predictor.load(fields_bundle, engine="torch").outputs(texts, cleaned=True)
    fp32 = Predictor.load(fields_bundle, engine="fp32").outputs(texts, cleaned=True)
    assert len(torch.fields) == len(fp32.fields) == 2
    for expected, got in zip(torch.fields, fp32.fields):
        np.testing.assert_allclose(got, expected, atol=1e-4)
    drift = bundle.read_manifest(fields_bundle).export.drift.fields  # type: ignore[union-attr]
    assert set(drift) == {"priority", "tags"}
    assert all(field["fp32_agreement"] == 1.0 for field in drift.values())


def test_predictions_carry_every_field(fields_bundle: Path) -> None:
    manifest = bundle.read_manifest(fields_bundle)
    priority, tags = manifest.fields or []
    predictions = Predictor.load(fields_bundle).predict(["I was charged twice, please refund me",
                                                         "The app crashes when I export a CSV"])
    for prediction in predictions:
        answer = prediction.to_dict()
        assert answer["label"] in manifest.labels
        field = answer["fields"]["priority"]
        assert field["label"] in priority.labels and field["label"] == field["top_k"][0]["label"]
        assert field["needs_review"] == (field["confidence"] < priority.threshold_of(field["label"])
                                         or prediction.review_reason == "out_of_scope")
        scores = [tag["score"] for tag in answer["tags"]]
        assert scores == sorted(scores, reverse=True)
        assert all(tag["tag"] in tags.labels and tag["score"] >= tags.threshold_of(tag["tag"]) - 1e-6
                   for tag in answer["tags"])


def test_the_fields_of_a_ticket_out_of_scope_need_review_too(fields_bundle: Path, tmp_path: Path,
                                                             hand_edit: Callable[[Path, Any], None]) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(fields_bundle, copy)

    def every_ticket_out_of_scope_and_every_priority_sure(manifest: dict[str, Any]) -> None:
        manifest["out_of_scope"]["threshold"] = 0.0
        for field in manifest["fields"]:
            if field["kind"] == "single":  # no priority is flagged for its own confidence
                field.update(threshold=0.0, per_class={})

    hand_edit(copy, every_ticket_out_of_scope_and_every_priority_sure)
    predictions = Predictor.load(copy).predict(["I was charged twice, please refund me", "What's the weather?"])
    assert all(p.review_reason == "out_of_scope" for p in predictions)
    assert all(cast(dict, p.fields)["priority"]["needs_review"] for p in predictions)


def test_models_show_lists_each_field_with_its_review_thresholds(fields_bundle: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from classifier.cli import main

    model = str(tmp_path / "models" / "tickets")
    assert main(["models", "add", model, str(fields_bundle)]) == 0
    capsys.readouterr()
    assert main(["models", "show", model]) == 0
    priority, tags = bundle.read_manifest(fields_bundle).fields or []
    shown = capsys.readouterr().out
    review = ("every answer needs review" if priority.threshold > 1  # training found it no guide
              else f"review threshold {priority.threshold} (0 per class)")
    assert (f"\n  field priority (single, {len(priority.labels)} labels): validation accuracy "
            f"{priority.validation_metrics['accuracy']:.4f}; {review}\n") in shown
    assert f"\n  field tags (tags, {len(tags.labels)} tags): validation micro-F1 " in shown


def test_a_bundle_of_the_label_alone_is_as_before(exported_bundle: Path) -> None:
    raw = json.loads((exported_bundle / bundle.MANIFEST).read_text(encoding="utf-8"))
    assert "fields" not in raw and not (exported_bundle / bundle.FIELD_HEADS_FILE).exists()
    answer = Predictor.load(exported_bundle).predict(["I was charged twice"])[0].to_dict()
    assert "fields" not in answer and "tags" not in answer


def test_field_heads_start_at_the_priors_and_learn_faster(fields_csv: Path, tmp_path: Path) -> None:
    from classifier import train
    from classifier.options import TrainingOptions

    data = prepare_data(fields_csv, DataOptions(label_column="category", field_columns=("priority",),
                                                tags_column="tags"))
    options = TrainingOptions(max_length=64)
    model = train._with_field_heads(train._load_model(train.default_base_model(), data.labels, options), data,
                                    options)
    tags = data.fields[1]
    truth = tag_matrix(data.train.fields["tags"], tags.labels)
    rate = truth[truth[:, 0] >= 0].mean(axis=0)
    np.testing.assert_allclose(model.heads[1].bias.detach().numpy(), np.log(rate / (1 - rate)), rtol=1e-5)
    trainer, _ = train._build_trainer(model, train._load_tokenizer(train.default_base_model()), data, options, 64,
                                      tmp_path)
    optimizer = trainer.create_optimizer()
    heads = {id(parameter) for parameter in model.heads.parameters()}
    rates = {id(parameter): group["lr"] for group in optimizer.param_groups for parameter in group["params"]}
    assert {rates[key] for key in heads} == {options.peak_learning_rate * train.HEAD_LR_MULTIPLIER}
    assert {rate for key, rate in rates.items() if key not in heads} == {options.peak_learning_rate}
