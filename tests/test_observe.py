"""The JSON access log: one line per request, ticket text only when enabled."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from service_helpers import KEYS


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
    assert entry["model_version"] == client.get("/labels").get_json()["model"]["version"] and "error_code" not in entry
    # Two 422s an operator tells apart: the request's shape, or a ticket without text.
    client.post("/classify", json={"text": 5})
    client.post("/classify", json={"text": "<p></p>"})
    assert [json.loads(line).get("error_code") for line in access_lines[-2:]] == ["invalid_request", "invalid_ticket"]
    # A caller padding the header with made-up addresses cannot push out the one the proxy appended.
    client.post("/classify", json={"text": "hi"}, headers={"X-Forwarded-For": "10.0.0.1, " * 30 + "198.51.100.9"})
    forwarded = json.loads(access_lines[-1])["forwarded_for"]
    assert forwarded.endswith(", 198.51.100.9") and forwarded.startswith("...") and len(forwarded) == 256


def test_access_log_has_text_only_when_enabled(auth_app: Flask, access_lines: list[str]) -> None:
    auth_app.test_client().post("/classify", json={"id": "T-9", "text": "my invoice 4242"},
                                headers={"X-API-Key": KEYS[0]})
    entry = json.loads(access_lines[-1])
    assert entry["tickets"][0]["id"] == "T-9" and entry["tickets"][0]["text"] == "my invoice 4242"
    assert KEYS[0] not in access_lines[-1]
