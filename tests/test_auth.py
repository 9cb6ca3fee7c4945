"""API keys: refused, accepted in either header, probes open, blank key lists refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from service_helpers import KEYS, error_of

from classifier.errors import UserError
from service import create_app
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


def test_a_scoped_key_opens_its_part_of_the_api_alone(exported_bundle: Path, tmp_path: Path) -> None:
    keys = "feedback:hook-key, metrics:prom-key, classify:app-key, feedback:app-key, all-key"  # app-key: two parts
    app = create_app({"BUNDLE": exported_bundle, "THREADS": 1, "API_KEYS": keys, "ACCESS_LOG": False,
                      "FEEDBACK_DB": str(tmp_path / "f.sqlite")})
    client = app.test_client()

    def status(method: str, path: str, key: str) -> int:
        body = {"ticket_id": "1", "label": "billing", "text": "charged twice"} if method == "post" else None
        return getattr(client, method)(path, json=body, headers={"X-API-Key": key}).status_code

    routes = [("post", "/classify"), ("get", "/labels"), ("get", "/openapi.json"), ("post", "/feedback"),
              ("get", "/metrics")]
    opened = {"hook-key": {"/feedback"}, "prom-key": {"/metrics"}, "app-key": {"/classify", "/labels",
                                                                               "/openapi.json", "/feedback"},
              "all-key": {path for _, path in routes}}
    for key, paths in opened.items():
        assert {path for method, path in routes if status(method, path, key) == 200} == paths, key
    refused = client.post("/classify", json={"text": "charged twice"}, headers={"Authorization": "Bearer hook-key"})
    assert error_of(refused, 403) == {"code": "forbidden", "message": "this API key is for feedback only; /classify "
                                      "needs a key for classify, or one without a scope"}
    assert status("get", "/nowhere", "prom-key") == 404  # a valid key learns that a path has no route
    # A method the route does not take: 403 for a key of another part, 405 for one that opens the route.
    assert (status("get", "/classify", "prom-key"), status("get", "/classify", "app-key")) == (403, 405)
    assert error_of(client.get("/classify", headers={"X-API-Key": "prom-key"}), 403)["message"] == (
        "this API key is for metrics only; /classify needs a key for classify, or one without a scope")
    assert status("get", "/nowhere", "hook") == 401  # the secret is the text after the scope, not the whole
    assert status("post", "/classify", "feedback:hook-key") == 401


@pytest.mark.parametrize("keys", ["metric:prom-key", "good-key, secret-part:rest"])
def test_a_key_with_a_colon_that_is_not_a_scope_is_refused_without_echoing_it(keys: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="a key has a colon, and what comes before it is none of the scopes "
                                        "classify, feedback, metrics") as refused:
        service_settings({"BUNDLE": str(tmp_path), "API_KEYS": keys})
    assert "prom-key" not in str(refused.value) and "secret-part" not in str(refused.value)


def test_a_scope_without_a_key_after_it_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no key after the scope 'feedback' \\(an unset variable\\?\\)"):
        service_settings({"BUNDLE": str(tmp_path), "API_KEYS": "app-key,feedback:"})  # "$APP,feedback:$HOOK" unset


@pytest.mark.parametrize(("keys", "refusal"), [
    ("app-key, metrics", "'metrics' is a scope's name, not a key: write metrics:KEY"),
    ("app-key, Feedback", "'Feedback' is a scope's name, not a key: write feedback:KEY"),
    ("app-key, classify:app-key", "a key is listed both with a scope and without one, which opens every route to "
                                  "it; keep one of the two"),
])
def test_a_scope_that_would_limit_nothing_is_refused(keys: str, refusal: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=refusal) as refused:
        service_settings({"BUNDLE": str(tmp_path), "API_KEYS": keys})
    assert "app-key" not in str(refused.value)


def test_a_route_outside_the_scopes_blueprints_opens_to_unscoped_keys_alone(exported_bundle: Path) -> None:
    app = create_app({"BUNDLE": exported_bundle, "THREADS": 1, "API_KEYS": "metrics:prom-key, all-key",
                      "ACCESS_LOG": False})
    app.add_url_rule("/extra", "extra", lambda: "extra")  # on the app, in no blueprint
    client = app.test_client()
    assert client.get("/extra", headers={"X-API-Key": "all-key"}).status_code == 200
    assert error_of(client.get("/extra", headers={"X-API-Key": "prom-key"}), 403)["message"] == (
        "this API key is for metrics only; /extra needs one without a scope")
