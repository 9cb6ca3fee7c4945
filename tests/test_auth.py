"""API keys: refused, accepted in either header, probes open, blank key lists refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from service_helpers import KEYS, error_of

from classifier.errors import UserError
from service import settings as service_settings


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
    assert document["security"] == [{"bearer": []}, {"apiKey": []}]  # a key is required
    assert document["paths"]["/health"]["get"]["security"] == []


def test_probes_need_no_key(auth_app: Flask) -> None:
    client = auth_app.test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


def test_api_keys_that_are_all_blank_are_refused_not_read_as_no_auth(tmp_path: Path) -> None:
    for keys in (" , ", ["", " "]):
        with pytest.raises(UserError, match="no key in"):
            service_settings({"BUNDLE": str(tmp_path), "API_KEYS": keys})
    assert service_settings({"BUNDLE": str(tmp_path), "API_KEYS": ""})["API_KEYS"] == ""  # documented: no auth
