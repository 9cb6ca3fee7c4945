"""The HTTP API of a bundle that predicts several fields in one pass (category, priority and tags): the
per-field results in /classify, /labels, /metrics and the OpenAPI document, and a bundle of the label
alone answering exactly as before."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from service_helpers import TICKET, ctx, metric_values

from classifier.manifest import FieldHead
from classifier.predict import Predictor
from service import create_app

# What a prediction of a bundle of the label alone has, and always had.
LABEL_KEYS = {"id", "label", "confidence", "needs_review", "review_reason", "out_of_scope_score", "truncated", "top_k"}


@pytest.fixture(scope="module")
def fields_app(fields_bundle: Path) -> Flask:
    return create_app({"BUNDLE": fields_bundle, "THREADS": 1, "API_KEYS": "", "LOG_TEXT": False,
                       "RELOAD_INTERVAL": 0})


@pytest.fixture()
def fields_client(fields_app: Flask) -> FlaskClient:
    return fields_app.test_client()


@pytest.fixture(scope="module")
def fields_predictor(fields_app: Flask) -> Predictor:
    return ctx(fields_app).model().predictor


@pytest.fixture(scope="module")
def heads(fields_predictor: Predictor) -> dict[str, FieldHead]:
    fields = fields_predictor.manifest.fields
    assert fields is not None
    return {spec.name: spec for spec in fields}


@pytest.fixture(scope="module")
def batch(fields_csv: Path) -> list[dict[str, Any]]:
    """Thirty tickets of the training file, as a helpdesk would send them."""
    with open(fields_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:30]
    return [{"id": row["id"], "subject": row["subject"], "body": row["body"]} for row in rows]


def check_fields(prediction: dict[str, Any], heads: dict[str, FieldHead], top_k: int) -> None:
    """A multi-field prediction: the label's keys as ever, each single-label field's result, the tags given."""
    assert set(prediction) == LABEL_KEYS | {"fields", "tags"}
    singles = {name for name, spec in heads.items() if spec.kind == "single"}
    assert set(prediction["fields"]) == singles == {"priority"}
    for name in singles:
        spec, field = heads[name], prediction["fields"][name]
        assert set(field) == {"label", "confidence", "needs_review", "top_k"}
        assert field["label"] in spec.labels and 0 <= field["confidence"] <= 1
        assert field["needs_review"] == (field["confidence"] < spec.threshold_of(field["label"])
                                         or prediction["review_reason"] == "out_of_scope")
        assert len(field["top_k"]) == min(top_k, len(spec.labels))
        assert field["top_k"][0] == {"label": field["label"], "score": field["confidence"]}
        scores = [item["score"] for item in field["top_k"]]
        assert scores == sorted(scores, reverse=True) and all(item["label"] in spec.labels for item in field["top_k"])
    [tags] = [spec for spec in heads.values() if spec.kind == "tags"]
    given = prediction["tags"]
    assert isinstance(given, list) and len({item["tag"] for item in given}) == len(given)
    for item in given:
        assert set(item) == {"tag", "score"} and item["tag"] in tags.labels
        assert tags.threshold_of(item["tag"]) <= item["score"] <= 1
    assert [item["score"] for item in given] == sorted((item["score"] for item in given), reverse=True)


# ------------------------------------------------------------------ classify


def test_a_multi_field_bundle_answers_every_field_beside_the_label(fields_client: FlaskClient,
                                                                   fields_predictor: Predictor,
                                                                   heads: dict[str, FieldHead]) -> None:
    response = fields_client.post("/classify", json={"id": "T-1", **TICKET, "top_k": 2})
    assert response.status_code == 200
    [prediction] = response.get_json()["predictions"]
    check_fields(prediction, heads, top_k=2)
    assert prediction["label"] in fields_predictor.labels and prediction["top_k"][0]["label"] == prediction["label"]
    assert prediction == {"id": "T-1", **fields_predictor.predict([TICKET], top_k=2)[0].to_dict()}


def test_a_batch_answers_every_field_of_every_ticket_in_order(fields_client: FlaskClient,
                                                              fields_predictor: Predictor, heads: dict[str, FieldHead],
                                                              batch: list[dict[str, Any]]) -> None:
    response = fields_client.post("/classify", json={"tickets": batch})
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    assert [p["id"] for p in predictions] == [ticket["id"] for ticket in batch]
    for prediction in predictions:
        check_fields(prediction, heads, top_k=3)
    assert any(prediction["tags"] for prediction in predictions)  # the tags head gives tags, not only empty lists
    records = [{key: ticket[key] for key in ("subject", "body")} for ticket in batch]
    expected = [p.to_dict() for p in fields_predictor.predict(records)]
    assert [{key: value for key, value in p.items() if key != "id"} for p in predictions] == expected


def test_a_zendesk_webhook_gets_the_fields_too(fields_client: FlaskClient, heads: dict[str, FieldHead]) -> None:
    body = {"ticket": {"id": 35436, "subject": "Refund", "description": "I was charged twice, please refund"}}
    [prediction] = fields_client.post("/classify", json=body).get_json()["predictions"]
    check_fields(prediction, heads, top_k=3)


def test_a_bundle_of_the_label_alone_answers_as_before(client: FlaskClient) -> None:
    for body in ({"text": "I was charged twice"}, {"tickets": [{"id": 1, **TICKET}, {"id": 2, "text": "login"}]}):
        response = client.post("/classify", json=body)
        assert response.status_code == 200
        for prediction in response.get_json()["predictions"]:
            assert set(prediction) == LABEL_KEYS  # no "fields" or "tags", not even null
        assert b'"fields"' not in response.data and b'"tags"' not in response.data


# ------------------------------------------------------------------ labels


def test_labels_list_every_field_with_its_thresholds(fields_client: FlaskClient, fields_predictor: Predictor,
                                                     heads: dict[str, FieldHead]) -> None:
    body = fields_client.get("/labels").get_json()
    assert set(body) == {"model", "labels", "out_of_scope_threshold", "fields"}
    assert [item["label"] for item in body["labels"]] == fields_predictor.labels  # the main label as before
    assert all(item["threshold"] == fields_predictor.threshold(item["label"]) for item in body["labels"])
    assert [(field["name"], field["kind"]) for field in body["fields"]] == [(spec.name, spec.kind)
                                                                            for spec in heads.values()]
    assert {field["kind"] for field in body["fields"]} == {"single", "tags"}
    for field in body["fields"]:
        spec = heads[field["name"]]
        assert field["labels"] == [{"label": label, "threshold": spec.threshold_of(label)} for label in spec.labels]


def test_labels_say_why_every_answer_of_a_field_needs_review(fields_bundle: Path, tmp_path: Path, hand_edit) -> None:
    bundle = Path(shutil.copytree(fields_bundle, tmp_path / "fields"))

    def as_training_leaves_a_field_no_better_than_its_most_common_value(manifest: dict) -> None:
        [priority] = [field for field in manifest["fields"] if field["name"] == "priority"]
        priority.update(threshold=1.01, per_class={})
        priority["validation_metrics"].update(accuracy=0.417, most_common_share=0.344)

    hand_edit(bundle, as_training_leaves_a_field_no_better_than_its_most_common_value)
    app = create_app({"BUNDLE": bundle, "THREADS": 1, "API_KEYS": "", "RELOAD_INTERVAL": 0})
    notes = {field["name"]: field["always_review"] for field in app.test_client().get("/labels").get_json()["fields"]}
    assert notes["priority"].startswith("validation accuracy 41.7% is hardly above always answering its most "
                                        "common value (34.4%)")
    assert notes["tags"] is None


def test_labels_of_a_bundle_of_the_label_alone_are_as_before(client: FlaskClient) -> None:
    assert set(client.get("/labels").get_json()) == {"model", "labels", "out_of_scope_threshold"}


# ------------------------------------------------------------------ metrics


def field_series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {key: value for key, value in metric_values(text).items()
            if key[0] in ("ticketclf_field_predictions_total", "ticketclf_field_needs_review_total",
                          "ticketclf_tags_total")}


def test_metrics_count_each_fields_labels_and_the_tags_given(fields_client: FlaskClient,
                                                             batch: list[dict[str, Any]]) -> None:
    before = metric_values(fields_client.get("/metrics").get_data(as_text=True))
    predictions = fields_client.post("/classify", json={"tickets": batch[:12]}).get_json()["predictions"]
    after = metric_values(fields_client.get("/metrics").get_data(as_text=True))

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    priorities = Counter(p["fields"]["priority"]["label"] for p in predictions)
    for label, count in priorities.items():
        assert grew("ticketclf_field_predictions_total", field="priority", label=label) == count
    assert grew("ticketclf_field_needs_review_total", field="priority") == sum(
        p["fields"]["priority"]["needs_review"] for p in predictions)
    tags = Counter(item["tag"] for p in predictions for item in p["tags"])
    assert tags  # some tags were given: their counts are checked, not only their absence
    for tag, count in tags.items():
        assert grew("ticketclf_tags_total", tag=tag) == count
    grown = {key for key, value in after.items() if value != before.get(key, 0)
             and key[0] in ("ticketclf_field_predictions_total", "ticketclf_tags_total")}
    assert len(grown) == len(priorities) + len(tags)  # nothing else: no series for tags not given
    assert grew("ticketclf_predictions_total", label=predictions[0]["label"]) >= 1  # the label's own, as before


def test_a_bundle_of_the_label_alone_counts_no_fields(client: FlaskClient) -> None:
    before = field_series(client.get("/metrics").get_data(as_text=True))
    assert client.post("/classify", json={"tickets": [{"text": "refund please"}, TICKET]}).status_code == 200
    assert field_series(client.get("/metrics").get_data(as_text=True)) == before


# ------------------------------------------------------------------ the access log (LOG_TEXT)


@pytest.fixture()
def access_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler, logger = Lines(), logging.getLogger("ticketclf.access")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def test_the_text_log_names_each_fields_label_and_the_tags(fields_app: Flask, access_lines: list[str]) -> None:
    fields_app.config["LOG_TEXT"] = True
    try:
        [prediction] = fields_app.test_client().post("/classify", json={"id": "T-7", **TICKET}).get_json()[
            "predictions"]
    finally:
        fields_app.config["LOG_TEXT"] = False
    [logged] = json.loads(access_lines[-1])["tickets"]
    assert logged["id"] == "T-7" and logged["label"] == prediction["label"]
    assert logged["fields"] == {"priority": prediction["fields"]["priority"]["label"]}
    assert logged["tags"] == [item["tag"] for item in prediction["tags"]]


# ------------------------------------------------------------------ OpenAPI


def test_openapi_documents_fields_and_tags_as_optional(fields_client: FlaskClient) -> None:
    document = fields_client.get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    prediction = schemas["PredictionOut"]
    for key in ("fields", "tags"):
        assert key in prediction["properties"] and key not in prediction["required"]
        documented = prediction["properties"][key]
        assert documented["description"] and documented["examples"]
        assert "null" not in json.dumps(documented) and "default" not in documented  # left out, never null
    assert prediction["properties"]["fields"]["additionalProperties"] == {
        "$ref": "#/components/schemas/FieldPredictionOut"}
    assert prediction["properties"]["tags"]["items"] == {"$ref": "#/components/schemas/TagScore"}
    assert set(schemas["FieldPredictionOut"]["properties"]) == {"label", "confidence", "needs_review", "top_k"}
    assert set(schemas["TagScore"]["properties"]) == {"tag", "score"}
    labels = schemas["LabelsResponse"]
    assert "fields" in labels["properties"] and "fields" not in labels["required"]
    assert set(schemas["FieldLabelsOut"]["properties"]) == {"name", "kind", "labels", "always_review"}


def test_answers_of_both_bundles_fit_the_openapi_document(fields_client: FlaskClient, client: FlaskClient,
                                                          batch: list[dict[str, Any]]) -> None:
    for http in (fields_client, client):
        document = http.get("/openapi.json").get_json()

        def validator(name: str, document: dict[str, Any] = document) -> Draft202012Validator:
            return Draft202012Validator({**document, "$ref": f"#/components/schemas/{name}"})

        classified = http.post("/classify", json={"tickets": batch[:5], "top_k": 2}).get_json()
        validator("ClassifyResponse").validate(classified)
        validator("LabelsResponse").validate(http.get("/labels").get_json())
        for example in document["components"]["schemas"]["PredictionOut"]["properties"]["fields"]["examples"]:
            for field in example.values():
                validator("FieldPredictionOut").validate(field)
        for example in document["components"]["schemas"]["LabelsResponse"]["properties"]["fields"]["examples"]:
            for field in example:
                validator("FieldLabelsOut").validate(field)


# ------------------------------------------------------------------ the last good model's copy


def test_the_copy_for_restarting_workers_keeps_the_field_heads(fields_app: Flask, fields_bundle: Path,
                                                               fields_predictor: Predictor, tmp_path: Path) -> None:
    """A restarting worker serves the copy of the last good model: it must load with its fields' heads."""
    from classifier import bundle
    from service.model import BundleSource, _snapshot

    copy = _snapshot(ctx(fields_app).served.current, tmp_path / "snapshots", BundleSource(fields_bundle))
    assert copy is not None and (copy / bundle.FIELD_HEADS_FILE).is_file()
    assert not (copy / "model.safetensors").exists()  # the weights the int8 model does not need stay out
    loaded = Predictor.load(copy, threads=1)
    assert loaded.engine_kind == fields_predictor.engine_kind
    assert [p.to_dict() for p in loaded.predict([TICKET])] == [p.to_dict() for p in fields_predictor.predict([TICKET])]
