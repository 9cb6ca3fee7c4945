"""The HTTP service on the real exported bundle: every route and error through Flask's test
client, auth on and off, the access log, a bounded schemathesis run, and real gunicorn."""

from __future__ import annotations

import ast
import http.client
import inspect
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from gunicorn import util as gunicorn_util
from gunicorn.app.base import Application, BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.errors import HaltServer
from gunicorn.http.body import Body, EOFReader, LengthReader
from gunicorn.http.errors import LimitRequestLine
from gunicorn.workers.base import Worker
from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from classifier.errors import UserError
from classifier.predict import Predictor
from service import create_app
from service import server as server_module
from service import settings as service_settings
from service import worker as service_worker
from service.context import EXTENSION, Context
from service.schemas import ZendeskTicket, zendesk_record
from service.server import serve
from service.worker import bytes_waiting, request_read_whole

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("first-key", "second-key")
TICKET = {"subject": "Charged twice", "body": "I was billed two times for my subscription this month."}


@pytest.fixture(scope="module")
def app(exported_bundle: Path) -> Flask:
    return create_app({"BUNDLE": exported_bundle, "THREADS": 1, "API_KEYS": "", "LOG_TEXT": False})


@pytest.fixture(scope="module")
def auth_app(exported_bundle: Path) -> Flask:
    return create_app({"BUNDLE": exported_bundle, "THREADS": 1, "API_KEYS": ",".join(KEYS), "LOG_TEXT": True})


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def predictor(app: Flask) -> Predictor:
    return ctx(app).model.predictor


def ctx(app: Flask) -> Context:
    return app.extensions[EXTENSION]


def error_of(response: Any, status: int) -> dict[str, str]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]


# ------------------------------------------------------------------ classify


def test_classify_text_returns_the_documented_shape(client: FlaskClient, predictor: Predictor) -> None:
    response = client.post("/classify", json={"text": "I was charged twice for my subscription"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == {"name": predictor.name, "version": predictor.version}
    [prediction] = body["predictions"]
    assert set(prediction) == {"id", "label", "confidence", "needs_review", "truncated", "top_k"}
    assert prediction["id"] is None and prediction["label"] in predictor.labels
    assert len(prediction["top_k"]) == 3 and prediction["top_k"][0]["label"] == prediction["label"]
    scores = [item["score"] for item in prediction["top_k"]]
    assert scores == sorted(scores, reverse=True) and prediction["confidence"] == scores[0]


def test_classify_fields_matches_the_predictor(client: FlaskClient, predictor: Predictor) -> None:
    response = client.post("/classify", json={"id": "T-1", **TICKET, "priority": "high"})
    [prediction] = response.get_json()["predictions"]
    assert prediction == {"id": "T-1", **predictor.predict([TICKET])[0].to_dict()}


def test_field_names_in_any_case_read_as_the_python_api_reads_them(client: FlaskClient,
                                                                    predictor: Predictor) -> None:
    capitalised = {"ID": "T-2", "Subject": TICKET["subject"], "BODY": TICKET["body"]}
    [prediction] = client.post("/classify", json=capitalised).get_json()["predictions"]
    assert prediction == {"id": "T-2", **predictor.predict([TICKET])[0].to_dict()}
    assert predictor.predict([capitalised]) == predictor.predict([TICKET])


def test_a_text_record_reads_as_the_service_reads_it(client: FlaskClient, predictor: Predictor) -> None:
    text = "I was charged twice for my subscription"
    [prediction] = client.post("/classify", json={"text": text}).get_json()["predictions"]
    assert predictor.predict([{"text": text}])[0].to_dict() == {k: v for k, v in prediction.items() if k != "id"}


def test_batch_keeps_order_ids_and_top_k(client: FlaskClient, predictor: Predictor) -> None:
    tickets = [{"id": 7, **TICKET}, {"text": "How do I reset my password?"}, {"id": "x", "body": "The app crashes"}]
    response = client.post("/classify", json={"tickets": tickets, "top_k": 2})
    predictions = response.get_json()["predictions"]
    expected = predictor.predict([TICKET, "How do I reset my password?", {"body": "The app crashes"}], top_k=2)
    assert [p["id"] for p in predictions] == [7, None, "x"]
    assert [p["label"] for p in predictions] == [e.label for e in expected]
    assert all(len(p["top_k"]) == 2 for p in predictions)
    # Shape keys in any case, as ticket fields are read.
    again = client.post("/classify", json={"Tickets": tickets, "Top_K": 2}).get_json()["predictions"]
    assert again == predictions


def test_zendesk_webhook_maps_description_to_the_body(client: FlaskClient, predictor: Predictor) -> None:
    webhook = {"ticket": {"id": 4821, "subject": TICKET["subject"], "description": TICKET["body"],
                          "status": "new", "requester": {"email": "a@example.com"}}}
    [prediction] = client.post("/classify", json=webhook).get_json()["predictions"]
    assert prediction == {"id": 4821, **predictor.predict([TICKET])[0].to_dict()}
    # Zendesk's API sets the description as the first comment's body; keys in any case, as elsewhere.
    for same in ({"subject": TICKET["subject"], "comment": {"body": TICKET["body"]}},
                 {"subject": TICKET["subject"], "description": "", "comment": {"body": TICKET["body"]}},
                 {"Subject": TICKET["subject"], "Description": TICKET["body"]},
                 {"subject": TICKET["subject"], "description": " ", "Comment": {"Body": TICKET["body"]}}):
        [prediction] = client.post("/classify", json={"Ticket": same}).get_json()["predictions"]
        assert prediction == {"id": None, **predictor.predict([TICKET])[0].to_dict()}, same
    # The body under a name the webhook does not read would leave only the subject: refused.
    misnamed = {"ticket": {"subject": TICKET["subject"], "body": TICKET["body"]}}
    message = error_of(client.post("/classify", json=misnamed), 422)["message"]
    assert "body goes in 'description'" in message and "'body'" in message


@pytest.mark.parametrize(("fields", "expected"), [
    (("subject", "body"), {"subject": "S", "body": "D"}),
    (("subject", "description"), {"subject": "S", "description": "D"}),
    (("text",), {"text": "S\nD"}),  # a one-text model reads subject and description together
    (("body",), {"body": "S\nD"}),
    (("ticket.subject", "ticket.description"), {"ticket.subject": "S", "ticket.description": "D"}),  # nested export
])
def test_zendesk_record_follows_the_bundle_fields(fields: tuple[str, ...], expected: dict[str, str]) -> None:
    assert zendesk_record(ZendeskTicket(subject="S", description="D"), fields) == expected


def test_long_ticket_is_truncated_and_flagged_not_refused(client: FlaskClient) -> None:
    response = client.post("/classify", json={"text": "my invoice is wrong " * 3000})
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["truncated"] is True


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({"data": "text=hello", "content_type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ({"data": "hello"}, 415, "unsupported_media_type"),
    ({"data": "{\"text\": ", "content_type": "application/json"}, 400, "bad_json"),
    ({"data": b"{\"text\": \"\xff\"}", "content_type": "application/json"}, 400, "bad_json"),
    ({"data": "[" * 100_000, "content_type": "application/json"}, 400, "bad_json"),
    ({"data": '{"text": "hi"}'.encode("utf-16"), "content_type": "application/json"}, 400, "bad_json"),
    ({"data": '{"text": "\\ud800 charged"}', "content_type": "application/json"}, 400, "bad_json"),
    ({"data": '{"text": "card", "id": "\\udfff"}', "content_type": "application/json"}, 400, "bad_json"),
    ({"data": '{"tickets": [{"subject": "\\udbff"}]}', "content_type": "application/json"}, 400, "bad_json"),
    ({"data": '{"a": ' + "[" * 900 + "]" * 900 + ', "text": "\\udc00 card"}', "content_type": "application/json"},
     400, "bad_json"),  # nested deeper than Python recursion goes, with a lone surrogate
    ({"data": "{}", "content_type": "application/json", "headers": {"Content-Encoding": "gzip"}}, 415,
     "unsupported_media_type"),
    ({"data": "{\"text\": \"" + "a" * (1024 * 1024) + "\"}", "content_type": "application/json"}, 413,
     "payload_too_large"),
])
def test_unreadable_bodies(client: FlaskClient, kwargs: dict[str, Any], status: int, code: str) -> None:
    assert error_of(client.post("/classify", **kwargs), status)["code"] == code


def test_a_utf8_byte_order_mark_and_identity_encoding_are_accepted(client: FlaskClient) -> None:
    body = '\ufeff{"text": "card lost"}'.encode()  # some Windows and .NET clients send one
    response = client.post("/classify", data=body, content_type="application/json",
                           headers={"Content-Encoding": "Identity"})
    assert response.status_code == 200


def test_an_escaped_surrogate_pair_is_one_character(client: FlaskClient) -> None:
    body = '{"text": "\\ud83d\\ude00 I was charged twice", "id": "\\ud83d\\udcb8"}'  # JSON encoders' ASCII form
    response = client.post("/classify", data=body, content_type="application/json")
    assert response.status_code == 200 and response.get_json()["predictions"][0]["id"] == "\U0001f4b8"


def test_a_key_given_twice_is_refused_not_overwritten(client: FlaskClient) -> None:
    body = '{"tickets": [{"text": "refund please"}], "tickets": [{"text": "cannot log in"}]}'
    error = error_of(client.post("/classify", data=body, content_type="application/json"), 400)
    assert error["code"] == "bad_json" and "'tickets' is given twice" in error["message"]


def test_a_body_of_many_keys_is_checked_for_duplicates_in_linear_time(client: FlaskClient) -> None:
    # 80,000 keys with the repeat last: counting each key's occurrences took about 40 s, past the worker timeout.
    body = "{" + ",".join(f'"k{i}":0' for i in range(80_000)) + ',"k79999":1}'
    started = time.perf_counter()
    error = error_of(client.post("/classify", data=body, content_type="application/json"), 400)
    assert "'k79999' is given twice" in error["message"] and time.perf_counter() - started < 10


def test_a_number_too_long_to_read_is_a_400_without_python_advice(client: FlaskClient) -> None:
    body = '{"text": "refund please", "id": ' + "1" * 5_000 + "}"
    error = error_of(client.post("/classify", data=body, content_type="application/json"), 400)
    assert error == {"code": "bad_json", "message": "the body holds a number of more than 4,300 digits"}


@pytest.mark.parametrize("extra", [{"title": "Ms"}, {"content": {"attachments": []}}, {"message": ""},
                                   {"priority": "high"}])
def test_keys_that_hold_no_ticket_body_are_ignored(client: FlaskClient, extra: dict) -> None:
    response = client.post("/classify", json={"subject": "Printer jam", **extra})
    assert response.status_code == 200, response.get_json()


def test_null_keys_do_not_count_as_a_second_request_shape(client: FlaskClient) -> None:
    response = client.post("/classify", json={"tickets": [{"id": 1, "text": "refund please"}], "text": None})
    assert response.status_code == 200 and [p["id"] for p in response.get_json()["predictions"]] == [1]


def test_a_model_giving_nan_is_a_500_naming_the_model_not_the_ticket(bundle_copy: Path, poison_word) -> None:
    poison_word(bundle_copy, "please")  # scores NaN for tickets with "please" (not in the warm-up texts)
    client = create_app({"BUNDLE": bundle_copy, "ENGINE": "fp32", "THREADS": 1, "API_KEYS": ""}).test_client()
    assert client.post("/classify", json={"text": "my card is blocked"}).status_code == 200
    error = error_of(client.post("/classify", json={"text": "a refund please"}), 500)
    assert error["code"] == "model_error" and "export or train the bundle again" in error["message"]


def test_body_limit_is_configurable_and_bugs_are_json_500s(exported_bundle: Path) -> None:
    app = create_app({"BUNDLE": exported_bundle, "THREADS": 1, "API_KEYS": "", "MAX_CONTENT_LENGTH": 100})
    app.add_url_rule("/bug", "bug", lambda: 1 // 0)  # a stand-in for a bug in a view
    client = app.test_client()
    assert "limit: 100 bytes" in error_of(client.post("/classify", json={"text": "x" * 200}), 413)["message"]
    assert error_of(client.get("/bug"), 500)["code"] == "internal_error"
    # Chunked bodies have no Content-Length; a server that de-chunks them says so (wsgi.input_terminated).
    chunked = {"headers": {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
               "environ_overrides": {"wsgi.input_terminated": True}}
    small = json.dumps({"text": "card not arriving"}).encode()
    assert client.post("/classify", input_stream=io.BytesIO(small), **chunked).status_code == 200
    for over in (json.dumps({"text": "x" * 200}).encode(), small + b" " * 200):  # never parsed cut short
        assert error_of(client.post("/classify", input_stream=io.BytesIO(over), **chunked), 413)["code"] == \
            "payload_too_large"


@pytest.mark.parametrize(("body", "named"), [
    ({}, "missing ticket text"),
    ({"title": "Refund", "content": "charged twice"}, "(this model does not read 'content', 'title')"),
    ([{"text": "a list"}], "JSON object"),
    ("just a string", "JSON object"),
    ({"text": 5}, "text: Input should be a valid string"),
    ({"subject": ["a"]}, "subject: Input should be a valid string"),
    ({"text": "a", "subject": "b"}, "either 'text' or the ticket's fields (subject), not both"),
    ({"text": "a", "id": 1.5}, "id: Input should be a string or an integer"),
    ({"text": "a", "top_k": 0}, "top_k"),
    ({"text": "a", "top_k": 1000}, "top_k"),
    ({"text": "a", "top_k": "3"}, "top_k"),
    ({"tickets": []}, "tickets: List should have at least 1 item"),
    ({"tickets": [{"text": "a"}] * 257}, "tickets: List should have at most 256 items"),
    ({"tickets": [{"text": "fine"}, {"subject": None}]}, "tickets[1]: missing ticket text"),
    ({"tickets": "not a list"}, "tickets"),
    ({"ticket": {"id": 1}}, "ticket: missing ticket text"),
    ({"tickets": [{"text": "a"}], "ticket": {"subject": "b"}}, "exactly one shape"),  # neither may be dropped
    ({"tickets": [{"text": "a"}], "text": "b"}, "exactly one shape"),
    ({"ticket": {"subject": "a"}, "text": "b"}, "exactly one shape"),
    ({"subject": "Card", "description": "where is my card"},  # the model reads subject and body
     "this model reads 'subject', 'body': the ticket has no 'body' but has 'description', which it does not read"),
    ({"tickets": [{"subject": "a", "Message": "b"}]}, "tickets[0]: this model reads"),
    ({"subject": "a", "body": " ", "description": "the real text"}, "the ticket has no 'body' but has 'description'"),
    ({"tickets": [{"text": "a"}], "Text": "b"}, "exactly one shape"),  # fields are read in any case
    ({"ticket": {"subject": "a"}, "Subject": "b"}, "exactly one shape"),
])
def test_schema_errors_are_422_naming_the_field(client: FlaskClient, body: Any, named: str) -> None:
    error = error_of(client.post("/classify", json=body), 422)
    assert error["code"] == "invalid_request" and named in error["message"]


def test_ticket_with_no_text_after_cleaning_is_422_naming_it_as_the_request_does(client: FlaskClient) -> None:
    body = {"tickets": [{"id": 1, "text": "ok"}, {"id": "T-2", "body": "<p> </p>"}, {"text": "> quoted only"}]}
    error = error_of(client.post("/classify", json=body), 422)
    assert error == {"code": "invalid_ticket", "message": "tickets[1] (id 'T-2'), tickets[2]: no text left after "
                     "cleaning (markup, quoted replies and signatures are removed)"}
    error = error_of(client.post("/classify", json={"id": 7, "text": "<br>"}), 422)
    assert error["message"].startswith("the ticket (id 7): no text left after cleaning")


def test_unknown_route_and_wrong_method(client: FlaskClient) -> None:
    assert error_of(client.get("/nowhere"), 404)["code"] == "not_found"
    response = client.get("/classify")
    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


# ------------------------------------------------------------------ other routes


def test_labels(client: FlaskClient, predictor: Predictor) -> None:
    body = client.get("/labels").get_json()
    assert [item["label"] for item in body["labels"]] == predictor.labels
    assert all(item["threshold"] == predictor.threshold(item["label"]) for item in body["labels"])


def test_health_and_ready(client: FlaskClient, predictor: Predictor) -> None:
    assert client.get("/health").get_json() == {"status": "ok"}
    assert client.get("/ready").get_json() == {"status": "ready",
                                               "model": {"name": predictor.name, "version": predictor.version}}


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_requests_predictions_and_model(client: FlaskClient, predictor: Predictor) -> None:
    before = metric_values(client.get("/metrics").get_data(as_text=True))
    prediction = client.post("/classify", json={"text": "refund please"}).get_json()["predictions"][0]
    client.open("/classify", method="FOOBAR")  # a method made up by the caller: counted under its route
    client.get("/nope")  # no route at all
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    after = metric_values(response.get_data(as_text=True))

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("ticketclf_http_requests_total", route="/classify", method="POST", status="200") == 1
    assert grew("ticketclf_http_request_duration_seconds_count", route="/classify") == 2  # the POST and the 405
    assert grew("ticketclf_predictions_total", label=prediction["label"]) == 1
    assert grew("ticketclf_needs_review_total") == prediction["needs_review"]
    assert grew("ticketclf_truncated_total") == prediction["truncated"] == 0
    assert grew("ticketclf_http_requests_total", route="/classify", method="other", status="405") == 1
    assert grew("ticketclf_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert not any(dict(labels).get("method") == "FOOBAR" for _, labels in after)  # one series per invented name
    served = json.loads((predictor.bundle_dir / "manifest.json").read_text())["serving"]["engine"]  # int8 or fp32
    info = ("ticketclf_model_info", (("engine", served), ("name", predictor.name),
                                     ("version", predictor.version)))
    assert after[info] == 1


def test_openapi_document_describes_this_bundle(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {"/classify", "/labels", "/health", "/ready", "/metrics", "/openapi.json"}
    ticket = document["components"]["schemas"]["Ticket"]
    assert {"id", "text", "subject", "body"} <= set(ticket["properties"])
    assert "security" not in document  # no keys configured


def test_request_id_is_echoed_or_made(client: FlaskClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    made = client.get("/health", headers={"X-Request-ID": "bad id with spaces"}).headers["X-Request-ID"]
    assert len(made) == 32 and " " not in made


# ------------------------------------------------------------------ auth and logs


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
                                     {"Authorization": "Basic Zmlyc3Qta2V5Og=="}, {"X-API-Key": "clé"}])
def test_auth_refuses_missing_or_wrong_keys(auth_app: Flask, headers: dict[str, str]) -> None:
    client = auth_app.test_client()
    for method, path in (("post", "/classify"), ("get", "/labels"), ("get", "/metrics"),
                         ("get", "/openapi.json"), ("get", "/nowhere")):
        response = getattr(client, method)(path, json={"text": "hello"} if method == "post" else None,
                                           headers=headers)
        assert error_of(response, 401)["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEYS[0]}"}, {"X-API-Key": KEYS[1]}])
def test_auth_accepts_either_header_and_any_key(auth_app: Flask, headers: dict[str, str]) -> None:
    client = auth_app.test_client()
    assert client.post("/classify", json={"text": "hello there"}, headers=headers).status_code == 200
    assert client.get("/labels", headers=headers).status_code == 200
    document = client.get("/openapi.json", headers=headers).get_json()
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert document["paths"]["/health"]["get"]["security"] == []


def test_probes_need_no_key(auth_app: Flask) -> None:
    client = auth_app.test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture()
def access_lines() -> Iterator[list[str]]:
    handler = Lines()
    logger = logging.getLogger("ticketclf.access")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def test_access_log_is_json_without_ticket_text(client: FlaskClient, access_lines: list[str]) -> None:
    client.post("/classify?x=1", json={"id": "T-9", "text": "my secret invoice number 4242"},
                headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.2"})
    [line] = access_lines
    entry = json.loads(line)
    assert entry["path"] == "/classify" and entry["status"] == 200 and entry["ticket_count"] == 1
    assert entry["forwarded_for"] == "203.0.113.7, 10.0.0.2"  # behind an ingress, "remote" is the ingress
    assert entry["duration_ms"] > 0 and entry["request_id"]
    assert "4242" not in line and "T-9" not in line and "tickets" not in entry


def test_access_log_has_text_only_when_enabled(auth_app: Flask, access_lines: list[str]) -> None:
    auth_app.test_client().post("/classify", json={"id": "T-9", "text": "my invoice 4242"},
                                headers={"X-API-Key": KEYS[0]})
    entry = json.loads(access_lines[-1])
    assert entry["tickets"][0]["id"] == "T-9" and entry["tickets"][0]["text"] == "my invoice 4242"
    assert KEYS[0] not in access_lines[-1]


# ------------------------------------------------------------------ schemathesis


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_fuzz_finds_no_server_error(app: Flask, mode: GenerationMode) -> None:
    # A strategy inside a plain test: schemathesis' own pytest integration breaks on pytest 9.
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: Any) -> None:
        case.call_and_validate(checks=checks)

    fuzz()


# ------------------------------------------------------------------ processes


def test_serving_path_imports_no_torch(exported_bundle: Path) -> None:
    code = ("import sys; from service import create_app; app = create_app({'BUNDLE': sys.argv[1]}); "
            "app.test_client().post('/classify', json={'text': 'hi'}); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum') "
            "or m in ('classifier.train', 'classifier.export')); print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code, str(exported_bundle)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "TICKETCLF_ACCESS_LOG": "0"})
    assert result.returncode == 0, result.stdout + result.stderr


def test_serve_refuses_a_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        serve(tmp_path / "missing")


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("TICKETCLF_MAX_BATCH", "abc", "TICKETCLF_MAX_BATCH: invalid literal"),
    ("TICKETCLF_MAX_BATCH", "0", r"MAX_BATCH \(TICKETCLF_MAX_BATCH\): must be at least 1"),
    ("TICKETCLF_ENGINE", "bogus", "unknown engine 'bogus'"),
    ("TICKETCLF_ENGINE", "fp32", "no fp32 ONNX model; run 'ticketclf export"),  # tiny_bundle is not exported
    ("TICKETCLF_LOG_TEXT", "maybe", "TICKETCLF_LOG_TEXT: expected true or false"),
    ("TICKETCLF_THREADS", "abc", "TICKETCLF_THREADS must be a whole number"),
    ("TICKETCLF_THREADS", "-3", "TICKETCLF_THREADS must be at least 1, got -3"),
    ("TICKETCLF_WORKERS", "0", "TICKETCLF_WORKERS must be at least 1, got 0"),
    ("TICKETCLF_WORKERS", "abc", "TICKETCLF_WORKERS must be a whole number"),
    ("WEB_CONCURRENCY", "two", "WEB_CONCURRENCY must be a whole number"),
    ("TICKETCLF_LOG_LEVEL", "verbose", "TICKETCLF_LOG_LEVEL must be debug, info"),
    ("TICKETCLF_API_KEYS", " , ", r"API_KEYS \(TICKETCLF_API_KEYS\): no key in"),
])
def test_serve_refuses_a_bad_setting_before_starting_workers(tiny_bundle: Path, variable: str, value: str,
                                                             message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("TICKETCLF_BUNDLE", "")  # serve() sets it; monkeypatch restores it afterwards
    monkeypatch.setattr(server_module._Gunicorn, "run", lambda self: pytest.fail("gunicorn started"))
    with pytest.raises(UserError, match=message):
        serve(tiny_bundle)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_call(port: int, method: str, path: str, body: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, json.dumps(body) if body is not None else None,
                           {"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@contextmanager
def running_server(bundle: Path, log: Path, *options: str, stop: int = signal.SIGTERM, **env: str) -> Iterator[int]:
    """``ticketclf serve`` on a free loopback port until ready; always stopped (by ``stop``), cleanly."""
    port = free_port()
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **env}
    for variable in ("PROMETHEUS_MULTIPROC_DIR", "GUNICORN_CMD_ARGS"):  # the server under test, not the caller's
        environment.pop(variable, None)
    command = [sys.executable, "-m", "classifier.cli", "serve", str(bundle), "--host", "127.0.0.1",
               "--port", str(port), *options]
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, preexec_fn=_default_sigint)
    try:
        wait_ready(server, port, timeout=90)
        yield port
    finally:
        server.send_signal(stop)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode == 0, log.read_text()


def _default_sigint() -> None:
    """In the server's process before it starts: a test suite run as a background job (`cmd &` in a
    script) has SIGINT ignored, the server would inherit that, and the SIGINT that stops it would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_ready(server: subprocess.Popen, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"server exited with {server.returncode}"
        try:
            if http_call(port, "GET", "/ready")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not ready after {timeout} s")


def test_gunicorn_serves_over_http(exported_bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    key = {"X-API-Key": KEYS[0]}
    with running_server(exported_bundle, log, "--workers", "2", TICKETCLF_API_KEYS=KEYS[0]) as port:
        assert http_call(port, "POST", "/classify", {"text": "hello"})[0] == 401
        for _ in range(4):  # spread over both workers
            status, body = http_call(port, "POST", "/classify", {"tickets": [TICKET, {"text": "hi"}]}, key)
            assert status == 200 and len(json.loads(body)["predictions"]) == 2
        values = metric_values(http_call(port, "GET", "/metrics", headers=key)[1])  # summed over workers
        assert values[("ticketclf_http_requests_total",
                       (("method", "POST"), ("route", "/classify"), ("status", "200")))] == 4
        assert sum(v for (name, _), v in values.items() if name == "ticketclf_predictions_total") == 8
    output = log.read_text()
    assert "Booting worker" in output and "Traceback" not in output and "hello" not in output


def test_gunicorn_worker_closes_at_once_only_after_reading_the_whole_request(exported_bundle: Path,
                                                                            tmp_path: Path) -> None:
    body = json.dumps({"text": "I was charged twice"}).encode()
    with running_server(exported_bundle, tmp_path / "server.log", "--workers", "1") as port:
        # A client that reads its answer but keeps the connection open must not hold the only
        # worker: gunicorn's lingering close would wait up to 2 s for it to close first.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle_client:
            status_line, _ = raw_exchange(idle_client, "/classify", body, len(body))
            assert status_line.startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert http_call(port, "POST", "/classify", {"text": "card not arriving"})[0] == 200
            assert time.monotonic() - started < 1.0
        # An answer given before the body was read (413) keeps the lingering close: closing
        # with unread bytes would reset the connection and could lose the answer.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as big_client:
            status_line, answer = raw_exchange(big_client, "/classify", b"x" * 65536, 2 * 1024 * 1024)
            assert status_line.startswith(b"HTTP/1.1 413")
            assert json.loads(answer)["error"]["code"] == "payload_too_large"
        # A chunked body has no Content-Length to refuse it by: over the limit, it is refused all the same.
        chunked = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            pieces = [b'{"text": "', *[b"x" * 65536] * 20, b'"}']  # 1.25 MiB, the limit is 1 MiB
            chunked.request("POST", "/classify", iter(pieces), {"Content-Type": "application/json"},
                            encode_chunked=True)
            response = chunked.getresponse()
            assert response.status == 413 and json.loads(response.read())["error"]["code"] == "payload_too_large"
        finally:
            chunked.close()


def test_gunicorn_answers_malformed_http_with_json_errors(exported_bundle: Path, tmp_path: Path) -> None:
    with running_server(exported_bundle, tmp_path / "server.log", "--workers", "1") as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:  # read by the app: 400
            client.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
            status, headers, body = read_answer(client)
        assert status == 400 and json.loads(body)["error"]["code"] == "bad_request"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:  # refused by gunicorn itself
            client.sendall(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_answer(client)
        assert status == 414 and b"content-type: application/json" in headers.lower()
        assert json.loads(body)["error"]["code"] == "uri_too_long"


def test_sigterm_answers_the_requests_already_waiting(exported_bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    body = json.dumps({"text": "I was charged twice"}).encode()
    request = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode()
    with running_server(exported_bundle, log, "--workers", "1", TMPDIR=str(tmp_path)) as port:
        busy = socket.create_connection(("127.0.0.1", port), timeout=10)
        busy.sendall(request + body[:5])  # the only worker now waits for the rest of this body
        time.sleep(0.3)
        waiting = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        for connection in waiting:
            connection.sendall(request + body)  # queued: no worker is free to accept them
        time.sleep(0.3)
        os.kill(master_pid(log), signal.SIGTERM)
        time.sleep(0.5)
        busy.sendall(body[5:])
        for connection in [busy, *waiting]:
            with connection:
                status, _, answer = read_answer(connection)
                assert status == 200 and json.loads(answer)["predictions"][0]["label"]
    assert not list(tmp_path.glob("ticketclf-metrics-*"))


def test_a_reloaded_server_still_removes_its_metrics_directory(exported_bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with running_server(exported_bundle, log, "--workers", "1", TMPDIR=str(tmp_path)) as port:
        [metrics_dir] = tmp_path.glob("ticketclf-metrics-*")
        os.kill(master_pid(log), signal.SIGHUP)  # gunicorn reads its config file again and replaces the workers
        deadline = time.monotonic() + 60
        while log.read_text().count("Booting worker") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        wait_ready_after_reload = time.monotonic() + 60
        while time.monotonic() < wait_ready_after_reload and http_call(port, "GET", "/ready")[0] != 200:
            time.sleep(0.2)
    assert not metrics_dir.exists()


def master_pid(log: Path) -> int:
    """gunicorn's "Listening at: http://... (PID)" line names the master."""
    line = next(line for line in log.read_text().splitlines() if "Listening at:" in line)
    return int(line.rsplit("(", 1)[1].rstrip(")"))


def read_answer(connection: socket.socket) -> tuple[int, bytes, bytes]:
    """Status, header block and body of one HTTP answer read up to the server's close."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def test_worker_closes_at_once_only_when_nothing_is_left_unread() -> None:
    read_whole = SimpleNamespace(body=Body(LengthReader(None, 0)))
    assert request_read_whole(read_whole)
    assert not request_read_whole(SimpleNamespace(body=Body(LengthReader(None, 10))))  # answered before the end
    assert not request_read_whole(SimpleNamespace(body=Body(EOFReader(None))))  # no length: unknown
    assert not request_read_whole(SimpleNamespace())
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        assert not bytes_waiting(server_side)
        client_side.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request or a trailing line
        assert bytes_waiting(server_side)
    server_side, client_side = socket.socketpair()
    with server_side:
        client_side.close()  # the client is done: nothing can arrive any more
        assert not bytes_waiting(server_side)


def raw_exchange(connection: socket.socket, path: str, body: bytes, declared_length: int) -> tuple[bytes, bytes]:
    """Send a POST (``body`` may be shorter than ``declared_length``), read the answer up to the server's FIN."""
    head = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared_length}\r\n\r\n").encode()
    connection.sendall(head + body)
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    head_part, _, answer = received.partition(b"\r\n\r\n")
    return head_part.split(b"\r\n", 1)[0], answer


def test_a_bundle_mistake_found_only_by_loading_stops_gunicorn_with_one_line(bundle_copy: Path,
                                                                            tmp_path: Path) -> None:
    (bundle_copy / "tokenizer.json").unlink()  # the manifest is fine: only loading the model finds this
    environment = {key: value for key, value in os.environ.items() if key not in ("GUNICORN_CMD_ARGS",)}
    environment["TMPDIR"] = str(tmp_path)  # where the metrics directory goes
    server = subprocess.Popen([sys.executable, "-m", "classifier.cli", "serve", str(bundle_copy), "--port",
                               str(free_port()), "--workers", "4"], cwd=ROOT, env=environment, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Not a master restarting failed workers forever; with 4 workers, a second one usually fails while
        # the master halts for the first (gunicorn 27 then raised HaltServer again: service.server._Arbiter).
        output, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode == 2, output
    assert "error: " in output and "bundle has no tokenizer.json" in output
    assert "Traceback" not in output and "Reason: App failed to load." in output
    assert not list(tmp_path.glob("ticketclf-metrics-*"))  # removed on the way out (on_exit ran)


def test_dev_server_serves_over_http(exported_bundle: Path, tmp_path: Path) -> None:
    # Ctrl-C (SIGINT) stops the development server cleanly; SIGTERM would just kill it.
    with running_server(exported_bundle, tmp_path / "server.log", "--dev", stop=signal.SIGINT) as port:
        status, body = http_call(port, "POST", "/classify", {"text": "I cannot log in"})
        assert status == 200 and json.loads(body)["predictions"][0]["label"]


def test_loadtest_script_runs_bounded(exported_bundle: Path, sample_csv: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs.jsonl"
    command = [sys.executable, str(ROOT / "scripts" / "benchmarks" / "loadtest.py"), str(exported_bundle),
               "--requests", "20", "--duration", "5", "--concurrency", "1,4", "--texts", str(sample_csv),
               "--column", "body", "--runs-file", str(runs)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| 4 | 20 | 0 |" in result.stdout  # concurrency 4: 20 requests, 0 errors
    [run] = [json.loads(line) for line in runs.read_text().splitlines()]  # and recorded, as one run
    assert "loadtest.py" in run["command"] and run["figures"]


def test_api_keys_that_are_all_blank_are_refused_not_read_as_no_auth(tmp_path: Path) -> None:
    for keys in (" , ", ["", " "]):
        with pytest.raises(UserError, match="no key in"):
            service_settings({"BUNDLE": str(tmp_path), "API_KEYS": keys})
    assert service_settings({"BUNDLE": str(tmp_path), "API_KEYS": ""})["API_KEYS"] == ""  # documented: no auth


def test_settings_come_from_environment_then_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TICKETCLF_BUNDLE", str(tmp_path))
    monkeypatch.setenv("TICKETCLF_MAX_BATCH", "8")
    monkeypatch.setenv("TICKETCLF_LOG_TEXT", "yes")
    merged = service_settings({"MAX_BATCH": 4})
    assert (merged["BUNDLE"], merged["MAX_BATCH"], merged["LOG_TEXT"]) == (str(tmp_path), 4, True)
    monkeypatch.setenv("TICKETCLF_LOG_TEXT", "maybe")
    with pytest.raises(UserError, match="TICKETCLF_LOG_TEXT"):
        service_settings()
    monkeypatch.delenv("TICKETCLF_BUNDLE")
    monkeypatch.delenv("TICKETCLF_LOG_TEXT")
    with pytest.raises(UserError, match="no model bundle"):
        service_settings()


# ------------------------------------------------------------------ gunicorn internals
# Why these exist: service/ relies on gunicorn beyond its documented API. worker.py patches
# util.write_error and closes the connection before SyncWorker.handle's lingering close; server.py
# subclasses the Arbiter and copies BaseApplication.run; gunicorn_conf.py names settings, and gunicorn
# silently ignores a name it does not know. pyproject.toml pins gunicorn to the major these were written
# for (27). When a gunicorn release changes any of it, these fail, so the upgrade is reviewed (and the
# overrides adapted or dropped) instead of the service silently changing behaviour.

# The methods ours override, by the gunicorn class they override them in (names and parameters must match).
GUNICORN_OVERRIDES: dict[type, tuple[type, set[str]]] = {
    service_worker.SyncWorker: (GunicornSyncWorker, {"init_process", "handle_exit", "run", "handle_request"}),
    server_module._Arbiter: (Arbiter, {"halt", "reap_workers"}),
    server_module._RunsOurArbiter: (BaseApplication, {"run"}),
    server_module._Gunicorn: (Application, {"init", "load_config", "load"}),
}


def _parameters(function: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def _code(function: Any) -> ast.FunctionDef:
    node = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    assert isinstance(node, ast.FunctionDef)
    return node


def _calls(function: Any) -> list[str]:
    """The calls in ``function``'s source, in source order, e.g. ``self.stop()``."""
    calls = [node for node in ast.walk(_code(function)) if isinstance(node, ast.Call)]
    return [ast.unparse(node) for node in sorted(calls, key=lambda node: (node.lineno, node.col_offset))]


@pytest.mark.parametrize("ours", list(GUNICORN_OVERRIDES), ids=lambda cls: cls.__name__)
def test_our_gunicorn_overrides_still_override_the_same_methods(ours: type) -> None:
    theirs, expected = GUNICORN_OVERRIDES[ours]
    ours_functions = {name for name, value in vars(ours).items() if inspect.isfunction(value)} - {"__init__"}
    overriding = {name for name in ours_functions if inspect.isfunction(getattr(theirs, name, None))}
    assert overriding == expected, f"{ours.__name__} overrides a different set of {theirs.__name__} methods now"
    for name in expected:
        assert _parameters(getattr(ours, name)) == _parameters(getattr(theirs, name)), f"{theirs.__name__}.{name}"
    # Attributes of our own must not be gunicorn's (a new gunicorn attribute of that name would be clobbered).
    own = {name for name in vars(ours) if not name.startswith("__")} - expected
    gunicorn_source = inspect.getsource(sys.modules[theirs.__module__])
    assert not [name for name in own if re.search(rf"\b{name}\b", gunicorn_source)]


def test_gunicorn_calls_we_make_still_bind() -> None:
    """Every gunicorn function the service calls accepts the arguments the service passes."""
    calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
        (gunicorn_util.write_nonblock, ("sock", b"data"), {}),  # worker.write_json_error
        (gunicorn_util.import_app, ("module:app()",), {}),  # server._Gunicorn.load
        (GunicornSyncWorker.accept, ("self", "listener"), {}),  # worker.answer_waiting_connections
        (GunicornSyncWorker.notify, ("self",), {}),
        (GunicornSyncWorker.is_parent_alive, ("self",), {}),  # worker.run
        (Application.load_config_from_file, ("self", "gunicorn_conf.py"), {}),  # server._Gunicorn.load_config
        (Config.parser, ("self",), {}),
        (Config.get_cmd_args_from_env, ("self",), {}),
        (Config.set, ("self", "workers", 2), {}),
        (BaseApplication.__init__, ("self",), {"prog": "ticketclf serve"}),  # server._Gunicorn.__init__
        (Arbiter.run, ("self",), {}),  # server._RunsOurArbiter.run
        (Arbiter.halt, ("self",), {"reason": "why", "exit_status": 4}),  # as Arbiter.run calls our halt
        (HaltServer.__init__, ("self", "why", 4), {}),
        (LengthReader.__init__, ("self", "unreader", 0), {}),  # worker.request_read_whole reads .length
    ]
    for function, args, kwargs in calls:
        inspect.signature(function).bind(*args, **kwargs)
    assert isinstance(Arbiter.APP_LOAD_ERROR, int)  # server.serve maps it to the CLI's exit code


def test_gunicorn_code_our_overrides_replace_is_unchanged() -> None:
    # _RunsOurArbiter.run is BaseApplication.run with _Arbiter: it must still be this (compared as syntax trees,
    # so formatting and comments do not count).
    recorded = '''
def run(self):
    try:
        Arbiter(self).run()
    except RuntimeError as e:
        print("\\nError: %s\\n" % e, file=sys.stderr)
        sys.stderr.flush()
        sys.exit(1)
'''
    assert ast.dump(_code(BaseApplication.run)) == ast.dump(ast.parse(recorded).body[0]), \
        inspect.getsource(BaseApplication.run)
    # (Application.run reaching it through super(): test_gunicorn_runs_our_arbiter.)
    # _Arbiter exists because halt() stops the workers, stopping reaps them, and reaping raises HaltServer
    # for a worker that failed to load the app, before on_exit and the exit.
    assert "raise HaltServer(reason, self.APP_LOAD_ERROR)" in ast.unparse(_code(Arbiter.reap_workers))
    assert "self.reap_workers()" in _calls(Arbiter.stop)
    halt = _calls(Arbiter.halt)
    assert halt.index("self.stop()") < halt.index("self.cfg.on_exit(self)") < halt.index("sys.exit(exit_status)")
    # server.worker_app raises AppImportError to stop the server with its one line: the worker's exit code.
    spawn = _code(Arbiter.spawn_worker)
    handlers = [handler for node in ast.walk(spawn) if isinstance(node, ast.Try) for handler in node.handlers]
    [app_import] = [h for h in handlers if h.type is not None and ast.unparse(h.type) == "AppImportError"]
    assert "sys.exit(self.APP_LOAD_ERROR)" in ast.unparse(app_import)
    # worker.SyncWorker.handle_request closes the socket before the lingering close that follows it.
    handle = _code(GunicornSyncWorker.handle)
    [guarded] = [node for node in handle.body if isinstance(node, ast.Try)]
    assert "self.handle_request(listener, req, client, addr)" in [ast.unparse(s) for s in guarded.body]
    assert [ast.unparse(s) for s in guarded.finalbody] == ["util.close_graceful(client)"]
    assert inspect.signature(gunicorn_util.close_graceful).parameters["timeout"].default == 2.0  # "up to 2 s"


def test_gunicorn_lingering_close_does_nothing_on_a_closed_socket() -> None:
    """What worker.SyncWorker.handle_request relies on when it closes the socket first."""
    server_side, client_side = socket.socketpair()
    with client_side:
        server_side.close()
        started = time.monotonic()
        gunicorn_util.close_graceful(server_side)
        assert time.monotonic() - started < 0.5
    server_side, client_side = socket.socketpair()
    with client_side:  # still a lingering close on an open socket (else our early close is not needed)
        started = time.monotonic()
        gunicorn_util.close_graceful(server_side, timeout=0.3)
        assert time.monotonic() - started >= 0.25


def test_gunicorn_errors_reach_our_json_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker.handle_error writes through the module attribute util.write_error, which init_process patches,
    with statuses that service.worker names."""
    monkeypatch.setattr(gunicorn_util, "write_error", gunicorn_util.write_error)  # restored after the test
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        worker = service_worker.SyncWorker(0, os.getppid(), [listener], None, 30, Config(), Mock())
        try:
            monkeypatch.setattr(GunicornSyncWorker, "init_process", lambda self: None)  # no process to set up
            worker.init_process()
            assert gunicorn_util.write_error is service_worker.write_json_error
            server_side, client_side = socket.socketpair()
            with server_side, client_side:
                worker.handle_error(None, server_side, ("127.0.0.1", 1), LimitRequestLine(5000, 4094))
                server_side.shutdown(socket.SHUT_WR)
                status, headers, body = read_answer(client_side)
            assert status == 414 and json.loads(body)["error"]["code"] == "uri_too_long"
            # worker.answer_waiting_connections: accept() hands a queued connection to handle() and raises
            # OSError on an empty queue; the worker knows its listeners, master and graceful timeout.
            handled: list[Any] = []

            def handle(listener: socket.socket, client: socket.socket, addr: Any) -> None:
                handled.append(addr)
                client.close()

            monkeypatch.setattr(worker, "handle", handle)
            with socket.create_connection(listener.getsockname(), timeout=5):
                time.sleep(0.1)
                worker.answer_waiting_connections(time.monotonic() + 5)
            assert len(handled) == 1 and worker.is_parent_alive() and worker.cfg.graceful_timeout > 0
        finally:
            worker.tmp.close()
    statuses = {node.value.value for node in ast.walk(_code(Worker.handle_error)) if isinstance(node, ast.Assign)
                and ast.unparse(node.targets[0]) == "status_int" and isinstance(node.value, ast.Constant)}
    assert statuses and statuses <= set(service_worker._GUNICORN_ERROR_CODES), statuses
    # No gunicorn module holds write_error under its own name, where the patch would not reach.
    package = Path(inspect.getfile(gunicorn_util)).parent
    for module in package.rglob("*.py"):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert "write_error" not in [alias.name for alias in node.names], module
            if isinstance(node, ast.Name) and node.id == "write_error":
                pytest.fail(f"{module} refers to write_error by its bare name")


def test_gunicorn_runs_our_arbiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """_Gunicorn(...).run() goes through Application.run's checks to _RunsOurArbiter.run and _Arbiter."""
    started: list[Any] = []

    class Recording:
        def __init__(self, app: Any) -> None:
            self.app = app

        def run(self) -> None:
            started.append(self.app)

    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    monkeypatch.setattr(server_module, "_Arbiter", Recording)
    app = server_module._Gunicorn({"bind": ["127.0.0.1:0"], "workers": 3})
    app.run()
    assert started == [app] and app.cfg.workers == 3 and app.cfg.bind == ["127.0.0.1:0"]


def test_every_name_in_gunicorn_conf_is_a_gunicorn_setting() -> None:
    """gunicorn ignores names it does not know: a setting renamed upstream would silently fall back."""
    tree = ast.parse((ROOT / "service" / "gunicorn_conf.py").read_text())
    names = {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
             if isinstance(target, ast.Name)}
    names |= {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    public = {name for name in names if not name.startswith("_")}
    assert public and not public - set(Config().settings), public - set(Config().settings)
