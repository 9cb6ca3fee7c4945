"""The HTTP API on the real exported bundle through Flask's test client: every route, every error
shape, and a bounded schemathesis run against the OpenAPI document."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from service_helpers import ROOT, TICKET, error_of, metric_values

from classifier.predict import Predictor
from service import create_app
from service.schemas import ZendeskTicket, _batch_item_shape, build_schemas, document_text, zendesk_record

# ------------------------------------------------------------------ classify


def test_classify_text_returns_the_documented_shape(client: FlaskClient, predictor: Predictor) -> None:
    response = client.post("/classify", json={"text": "I was charged twice for my subscription"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == {"name": predictor.name, "version": predictor.version}
    [prediction] = body["predictions"]
    assert set(prediction) == {"id", "label", "confidence", "needs_review", "review_reason", "out_of_scope_score",
                               "truncated", "top_k"}
    assert prediction["id"] is None and prediction["label"] in predictor.labels
    assert prediction["review_reason"] in (None, "low_confidence", "out_of_scope")
    assert prediction["needs_review"] == (prediction["review_reason"] is not None)
    assert isinstance(prediction["out_of_scope_score"], float)
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


def test_a_helpdesks_own_id_name_is_echoed_as_the_id(client: FlaskClient) -> None:
    tickets = [{"number": "INC0010001", **TICKET}, {"Issue key": "SD-12", **TICKET}, {"sys_id": 9, **TICKET},
               {"number": {"value": "INC1", "link": "https://x.service-now.com"}, **TICKET},  # a reference: no id
               {"id": 5, "number": "INC2", **TICKET}]
    predictions = client.post("/classify", json={"tickets": tickets}).get_json()["predictions"]
    assert [p["id"] for p in predictions] == ["INC0010001", "SD-12", 9, None, 5]
    webhook = {"ticket": {"number": "INC5", "subject": TICKET["subject"], "description": TICKET["body"]}}
    assert client.post("/classify", json=webhook).get_json()["predictions"][0]["id"] == "INC5"
    blank = client.post("/classify", json={"number": "  ", **TICKET}).get_json()["predictions"][0]
    assert blank["id"] is None
    # A model reading a "number" field: that is the ticket's text, not its id.
    schemas = build_schemas(("subject", "number"), label_count=3, max_batch=8)
    assert schemas.tickets(schemas.parse({"subject": "Call me", "number": "555 0100"})) == \
        [(None, {"subject": "Call me", "number": "555 0100"})]


def test_an_atlassian_document_keeps_words_apart_at_breaks_and_cells_and_reads_mentions() -> None:
    def text(value: str) -> dict:
        return {"type": "text", "text": value}

    def cell(value: str) -> dict:
        return {"type": "tableCell", "content": [{"type": "paragraph", "content": [text(value)]}]}

    document = {"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [
            text("Password reset mail"), {"type": "hardBreak"}, text("never arrives, "),
            {"type": "mention", "attrs": {"id": "5b10", "text": "@Alice"}}, text(" knows")]},
        {"type": "table", "content": [{"type": "tableRow", "content": [cell("App"), cell("Outlook")]}]}]}
    document["content"][0]["content"] += [{"type": "placeholder", "attrs": {"text": "Type something"}},
                                          {"type": "status", "attrs": {"text": "IN PROGRESS"}}]
    assert [" ".join(line.split()) for line in document_text(document).split("\n")] == \
        ["Password reset mail", "never arrives, @Alice knows IN PROGRESS", "App", "Outlook"]


def test_a_jira_issue_is_classified_as_its_summary_and_description(client: FlaskClient, predictor: Predictor) -> None:
    expected = predictor.predict([TICKET])[0].to_dict()
    document = {"type": "doc", "version": 1, "content": [  # Jira Cloud's description: an Atlassian document
        {"type": "paragraph", "content": [{"type": "text", "text": TICKET["body"]}]}]}
    fields = {"summary": TICKET["subject"], "description": document, "priority": {"name": "High"}}
    webhook = {"webhookEvent": "jira:issue_created", "issue": {"id": "10042", "key": "SD-9", "fields": fields}}
    [prediction] = client.post("/classify", json=webhook).get_json()["predictions"]
    assert prediction == {"id": "SD-9", **expected}
    automation = {"key": "SD-9", "fields": {**fields, "description": TICKET["body"]}}  # automation's own format
    assert client.post("/classify", json=automation).get_json()["predictions"] == [prediction]
    document = client.get("/openapi.json").get_json()  # a client validating its requests by it sends both
    request = Draft202012Validator({**document, "$ref": "#/components/schemas/ClassifyRequest"})
    assert request.is_valid(webhook) and request.is_valid(automation) and not request.is_valid({"key": "SD-9"})
    batch = client.post("/classify", json={"tickets": [webhook, {"id": 1, **TICKET}]}).get_json()["predictions"]
    assert batch == [prediction, {"id": 1, **expected}]
    assert request.is_valid({"tickets": [webhook, automation, {"id": 1, **TICKET}]})  # as the document says too
    # Jira's numeric id beside the issue, or the webhook's own, is not the ticket's id: its key is.
    for body in ({"id": "10042", **automation}, {"id": 2, **webhook}):
        assert client.post("/classify", json=body).get_json()["predictions"] == [prediction]
    both = client.post("/classify", json={**webhook, "ticket": {"subject": "Login fails"}})
    assert error_of(both, 422)["message"] == "give a Jira issue or a webhook's {'ticket': {...}}, not both"
    empty = client.post("/classify", json={"issue": {"key": "SD-10", "fields": {"summary": None}}})
    assert error_of(empty, 422)["message"] == "issue.fields: missing ticket text: give 'summary' or 'description'"
    # a wrong value is named where the issue has it, not where the webhook ticket made of it would
    wrong = client.post("/classify", json={"tickets": [{"issue": {"key": "SD-11", "fields": {"summary": 42}}}]})
    assert error_of(wrong, 422)["message"] == "tickets[0].issue.fields.summary: Input should be a string"
    wrong = client.post("/classify", json={"key": "SD-12", "fields": {"summary": "Refund", "description": 7}})
    assert error_of(wrong, 422)["message"] == \
        "fields.description: Input should be a string or an Atlassian document"


def test_freshdesks_simple_webhook_is_classified_as_its_subject_and_description(client: FlaskClient,
                                                                               predictor: Predictor) -> None:
    expected = predictor.predict([TICKET])[0].to_dict()
    simple = {"freshdesk_webhook": {"ticket_id": 1401, "ticket_subject": TICKET["subject"],
                                    "ticket_description": TICKET["body"], "ticket_group_name": "Billing"}}
    assert client.post("/classify", json=simple).get_json()["predictions"] == [{"id": 1401, **expected}]
    batch = client.post("/classify", json={"tickets": [simple, {"id": 2, **TICKET}], "top_k": 1}).get_json()
    assert [p["id"] for p in batch["predictions"]] == [1401, 2]
    empty = client.post("/classify", json={"tickets": [{"freshdesk_webhook": {"ticket_id": 3}}]})
    assert error_of(empty, 422)["message"] == ("tickets[0].freshdesk_webhook: missing ticket text: choose "
                                               "'ticket_subject' or 'ticket_description' in the webhook's content")


def test_a_webhook_whose_placeholders_were_not_filled_in_is_refused(client: FlaskClient) -> None:
    # A trigger's body sent as written: routing the template's words would hide the misconfigured webhook.
    unfilled = {"ticket": {"id": "{{ticket.id}}", "subject": "{{ticket.subject}}",
                           "description": "{{ticket.description}}"}}
    assert error_of(client.post("/classify", json=unfilled), 422)["message"] == \
        "ticket.id: '{{ticket.id}}' is a placeholder the helpdesk did not fill in: check the webhook's body"
    unfilled["ticket"]["id"] = 4821
    assert error_of(client.post("/classify", json=unfilled), 422)["message"] == (
        "ticket: subject, description: '{{ticket.subject}}' is a placeholder the helpdesk did not fill in: check "
        "the webhook's body")
    batch = {"tickets": [{"id": 1, "subject": "Refund", "body": " {{ ticket.description }} "}]}
    assert "body: '" in error_of(client.post("/classify", json=batch), 422)["message"]
    # A ticket that quotes a template inside its text is a ticket like any other, and one about a template too.
    quoted = {"subject": "Macro broken", "body": "our macro prints {{ticket.requester.name}} instead of the name"}
    assert client.post("/classify", json=quoted).status_code == 200
    for template in ("{{ customer.first_name }} {{ customer.last_name }}", "{% if paid %}Thanks{% endif %}"):
        assert client.post("/classify", json={"subject": "Merge tags", "body": template}).status_code == 200
    # Named where the sender wrote them: a Jira issue's fields, Freshdesk's Simple webhook
    jira = {"issue": {"key": "SD-1", "fields": {"summary": "{{issue.summary}}", "description": "Refund"}}}
    assert error_of(client.post("/classify", json=jira), 422)["message"] == (
        "issue.fields.summary: '{{issue.summary}}' is a placeholder the helpdesk did not fill in: check the "
        "webhook's body")
    simple = {"tickets": [{"freshdesk_webhook": {"ticket_id": "{{ticket.id}}", "ticket_subject": "Refund"}}]}
    assert error_of(client.post("/classify", json=simple), 422)["message"].startswith(
        "tickets[0].freshdesk_webhook.ticket_id: '{{ticket.id}}' is a placeholder")
    # The helpdesk's own id name, read as the id where "id" is not given: refused too, not left out
    helpdesk_id = {"tickets": [{"ticket_id": "{{ticket.id}}", "subject": "Refund", "body": "Charged twice"}]}
    assert error_of(client.post("/classify", json=helpdesk_id), 422)["message"].startswith(
        "tickets[0]: ticket_id: '{{ticket.id}}' is a placeholder")


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


def test_a_batch_takes_webhook_tickets_read_as_the_webhook_reads_them(client: FlaskClient,
                                                                     predictor: Predictor) -> None:
    webhook = {"ticket": {"id": 4821, "subject": TICKET["subject"], "description": TICKET["body"]}}
    body = {"tickets": [webhook, {"id": 2, "text": "How do I reset my password?"}, {"Ticket": webhook["ticket"]}]}
    predictions = client.post("/classify", json=body).get_json()["predictions"]
    expected = predictor.predict([TICKET, "How do I reset my password?", TICKET])
    assert predictions == [{"id": ticket_id, **prediction.to_dict()}
                           for ticket_id, prediction in zip((4821, 2, 4821), expected)]
    # The id may sit beside the webhook's ticket; a ticket number under 'ticket' is no webhook.
    beside = {"tickets": [{"id": 9, "ticket": {"subject": TICKET["subject"], "description": TICKET["body"]}},
                          {"id": 10, "ticket": 123, **TICKET}]}
    assert [p["id"] for p in client.post("/classify", json=beside).get_json()["predictions"]] == [9, 10]
    differing = {"tickets": [{"id": 9, "ticket": {"id": 8, "subject": "a"}}]}
    assert "'id' 9 and 'ticket.id' 8" in error_of(client.post("/classify", json=differing), 422)["message"]


@pytest.mark.parametrize(("fields", "item", "shape"), [
    (("Subject", "Body"), {"ticket": {"subject": "a"}, "Body": "b"}, None),  # the model's field in another case
    (("Subject", "Body"), {"ticket": {"subject": "a"}, "body": "b"}, None),
    (("Subject", "Body"), {"Ticket": {"subject": "a"}}, "item: webhook"),
    (("ticket",), {"ticket": "my printer is broken"}, "item: ticket"),  # a model whose text field is 'ticket'
    (("ticket",), {"ticket": {"subject": "a"}}, "item: ticket"),
    (("subject", "body"), {"ticket": 123, "subject": "a"}, "item: ticket"),  # a ticket number
])
def test_a_batch_item_is_a_webhook_only_with_an_object_under_ticket(fields: tuple[str, ...], item: dict,
                                                                    shape: str | None) -> None:
    assert _batch_item_shape(("text", *fields), item) == shape


@pytest.mark.parametrize(("fields", "expected"), [
    (("subject", "body"), {"subject": "S", "body": "D"}),
    (("subject", "description"), {"subject": "S", "description": "D"}),
    (("text",), {"text": "S\nD"}),  # a one-text model reads subject and description together
    (("body",), {"body": "S\nD"}),
    (("title", "description"), {"title": "S", "description": "D"}),  # the description found by its name
    (("description", "title"), {"title": "S", "description": "D"}),
    (("title", "body"), {"title": "S\nD"}),  # neither name: one text, nothing guessed
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
    ({"data": '{"text": "card", "id": NaN}', "content_type": "application/json"}, 400, "bad_json"),  # not JSON
    ({"data": "{}", "content_type": "application/json", "headers": {"Content-Encoding": "gzip"}}, 415,
     "unsupported_media_type"),
    ({"data": "{\"text\": \"" + "a" * (1024 * 1024) + "\"}", "content_type": "application/json"}, 413,
     "payload_too_large"),
])
def test_unreadable_bodies(client: FlaskClient, kwargs: dict[str, Any], status: int, code: str) -> None:
    assert error_of(client.post("/classify", **kwargs), status)["code"] == code


def test_a_body_that_is_not_utf8_is_named_so(client: FlaskClient) -> None:
    body = '{"text": "WLAN fällt aus"}'.encode("latin-1")  # a client sending its platform's code page
    assert error_of(client.post("/classify", data=body, content_type="application/json"), 400)["message"] == \
        "the body is not UTF-8 (byte 0xe4 at position 16): send JSON encoded as UTF-8, as JSON always is"


def test_an_empty_body_is_named_as_empty(client: FlaskClient) -> None:
    assert error_of(client.post("/classify", data=" \n", content_type="application/json"), 400)["message"] == \
        'the body is empty; send a JSON object (e.g. {"text": "..."})'


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
                                   {"priority": "high"}, {"nobody": "assigned"}])  # not a typo of 'body'
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
    ({"text": "a", "id": 1.5}, "id: Input should be a string of at most 256 characters or a 64-bit integer"),
    ({"text": "a", "id": "x" * 257}, "id: Input should be a string of at most 256"),  # as feedback's ids
    ({"text": "a", "id": 2**63}, "id: Input should be a string of at most 256 characters or a 64-bit integer"),
    ({"text": "a", "top_k": 0}, "top_k"),
    ({"tickets": [{"text": "a", "top_k": 1}]}, "tickets[0]: top_k is given once for the whole request, at its top "
                                               "level (beside 'tickets' or 'ticket')"),
    ({"tickets": [{"text": "a", "top_k": None}, {"ticket": {"subject": "b"}, "Top_K": 2}]},
     "tickets[1]: top_k is given once for the whole request"),  # a null is no value
    ({"ticket": {"subject": "b", "top_k": 1}}, "ticket: top_k is given once for the whole request"),
    ({"text": "a", "top_k": 1000}, "top_k"),
    ({"text": "a", "top_k": "3"}, "top_k"),
    ({"tickets": []}, "tickets: List should have at least 1 item"),
    ({"tickets": [{"text": "a"}] * 257}, "tickets: List should have at most 256 items"),
    ({"tickets": [{"text": "fine"}, {"subject": None}]}, "tickets[1]: missing ticket text"),
    ({"tickets": [{"text": "fine"}, {"ticket": {"id": 1}}]}, "tickets[1].ticket: missing ticket text"),
    ({"tickets": [{"ticket": {"subject": "a"}, "body": "b"}]},  # neither may be dropped, as for a whole request
     "tickets[0]: a batch item is one ticket or a webhook's {'ticket': {...}}, not both"),
    ({"tickets": "not a list"}, "tickets"),
    ({"ticket": {"id": 1}}, "ticket: missing ticket text"),
    ({"ticket": "printer broken"}, "missing ticket text: give 'text' or 'subject' or 'body' or a webhook's "
                                   "{'ticket': {...}} with the ticket's fields inside (this model does not read "
                                   "'ticket')"),  # a webhook's ticket is an object
    ({"tickets": [{"text": "a"}], "ticket": {"subject": "b"}}, "exactly one shape"),  # neither may be dropped
    ({"tickets": [{"text": "a"}], "text": "b"}, "exactly one shape"),
    ({"ticket": {"subject": "a"}, "text": "b"}, "exactly one shape"),
    ({"subject": "Card", "description": "where is my card"},  # the model reads subject and body
     "this model reads 'subject', 'body': the ticket has no 'body' but has 'description', which it does not read"),
    ({"tickets": [{"subject": "a", "Message": "b"}]}, "tickets[0]: this model reads"),
    ({"subject": "a", "body": " ", "description": "the real text"}, "the ticket has no 'body' but has 'description'"),
    ({"subject": "Help", "bdy": "cannot log in"}, "the ticket has no 'body' but has 'bdy', which it does not read"),
    ({"tickets": [{"text": "a"}], "Text": "b"}, "exactly one shape"),  # fields are read in any case
    # ... so two spellings of one key would lose one of them: refused at every level
    ({"tickets": [{"text": "a"}], "Tickets": [{"text": "b"}]}, "'Tickets' and 'tickets' are one key in any case: "
                                                               "give 'tickets' once"),
    ({"text": "a", "Text": "b"}, "'Text' and 'text' are one key in any case"),
    ({"tickets": [{"text": "a", "TEXT": "b"}]}, "tickets[0]: 'TEXT' and 'text' are one key in any case"),
    ({"ticket": {"subject": "a", "Subject": "b"}}, "ticket: 'Subject' and 'subject' are one key in any case"),
    ({"ticket": {"subject": "a"}, "Subject": "b"}, "exactly one shape"),
])
def test_schema_errors_are_422_naming_the_field(client: FlaskClient, body: Any, named: str) -> None:
    error = error_of(client.post("/classify", json=body), 422)
    assert error["code"] == "invalid_request" and named in error["message"]


def test_a_null_key_is_absent_beside_its_other_spelling_and_unnamed_as_unread(client: FlaskClient,
                                                                              predictor: Predictor) -> None:
    [prediction] = client.post("/classify", json={"text": None, "Text": "refund please"}).get_json()["predictions"]
    assert prediction == {"id": None, **predictor.predict(["refund please"])[0].to_dict()}
    error = error_of(client.post("/classify", json={"tickets": None}), 422)
    assert error["message"] == "tickets: null is no batch: give a list of tickets"


def test_ticket_with_no_text_after_cleaning_is_422_naming_it_as_the_request_does(client: FlaskClient) -> None:
    body = {"tickets": [{"id": 1, "text": "ok"}, {"id": "T-2", "body": "<p> </p>"}, {"text": "> quoted only"}]}
    error = error_of(client.post("/classify", json=body), 422)
    assert error == {"code": "invalid_ticket", "message": "tickets[1] (id 'T-2'), tickets[2]: no text left after "
                     "cleaning (markup, quoted replies and signatures are removed)", "tickets": [1, 2]}
    # The positions let a nightly job send the rest again without parsing the message.
    rest = [ticket for index, ticket in enumerate(body["tickets"]) if index not in error["tickets"]]
    assert client.post("/classify", json={"tickets": rest}).status_code == 200
    error = error_of(client.post("/classify", json={"id": 7, "text": "<br>"}), 422)
    assert error["message"].startswith("the ticket (id 7): no text left after cleaning") and "tickets" not in error


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
    assert client.get("/ready").get_json() == {"status": "ready", "swap_error": None,  # no new model refused
                                               "model": {"name": predictor.name, "version": predictor.version}}


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
    for reason in ("out_of_scope", "low_confidence"):
        assert grew("ticketclf_needs_review_total", reason=reason) == (prediction["review_reason"] == reason)
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
    assert set(document["paths"]) == {"/classify", "/labels", "/health", "/ready", "/metrics", "/openapi.json",
                                      "/feedback", "/feedback/zendesk", "/feedback/freshdesk", "/feedback/jira"}
    ticket = document["components"]["schemas"]["Ticket"]
    assert {"id", "text", "subject", "body"} <= set(ticket["properties"])
    # A webhook ticket with its text in comment.body only is valid, as the server reads it.
    webhook_ticket = document["components"]["schemas"]["ZendeskTicket"]
    assert {"required": ["comment"], "properties": {"comment": {"required": ["body"]}}} in webhook_ticket["anyOf"]
    # No keys configured: a key is optional, and declared, so a client made from this document can send one
    assert document["security"] == [{}, {"bearer": []}, {"apiKey": []}]
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    classify = document["paths"]["/classify"]["post"]
    assert "500" in classify["responses"] and classify["parameters"][0]["name"] == "X-Request-ID"
    assert "X-Request-ID" in classify["responses"]["200"]["headers"]
    # A client generated from it knows every error code, and every route's other errors (404, 405) by their shape.
    codes = document["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
    assert {"invalid_request", "invalid_ticket", "not_found", "method_not_allowed", "headers_too_large"} <= set(codes)
    proxy = re.findall(r'"code": "(\w+)"', (ROOT / "deploy" / "nginx.conf").read_text())  # what nginx answers
    assert {"unavailable", "upstream_timeout"} <= set(proxy) <= set(codes)
    assert all("default" in operation["responses"] for path in document["paths"].values()
               for operation in path.values())
    answer = client.put("/classify", json={"text": "hello"})
    assert answer.status_code == 405 and answer.get_json()["error"]["code"] in codes


def test_request_id_is_echoed_or_made(client: FlaskClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    made = client.get("/health", headers={"X-Request-ID": "bad id with spaces"}).headers["X-Request-ID"]
    assert len(made) == 32 and " " not in made


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

