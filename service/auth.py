"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time.

A key may be limited to one part of the API, written ``scope:key`` in ``TICKETCLF_API_KEYS``: the helpdesk's
feedback webhook then holds a key that cannot classify, and Prometheus one that can only read metrics. A key
without a scope opens every route; a key for two parts is listed once for each. A key listed both with a
scope and without one, and a scope's name written as a key, are refused at start: each is a mistake.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from flask import current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from classifier.errors import UserError
from service.errors import ApiError

# Probes from the orchestrator carry no credentials and reveal nothing.
PUBLIC_ENDPOINTS = frozenset({"ops.health", "ops.ready"})
# Each scope and the blueprint of the routes it opens: /classify, /labels, /openapi.json; /feedback and the
# helpdesk webhooks; /metrics (and /ready's reason for a refused model). A route added to a blueprint opens to
# its scope's keys: one that should not belongs in a blueprint of its own.
SCOPES = {"classify": "api", "feedback": "feedback", "metrics": "ops"}


@dataclass(frozen=True)
class ApiKey:
    secret: bytes
    scope: str | None  # one of SCOPES; None: every route


def parse_keys(value: str | Iterable[str] | None) -> tuple[ApiKey, ...]:
    """Keys from a comma-separated string or a list, each ``key`` or ``scope:key``; blanks dropped. A colon
    always follows a scope: "metric:KEY" would otherwise open every route to whoever sends that whole text."""
    items = value.split(",") if isinstance(value, str) else value or ()
    keys = []
    for item in items:
        scope, secret = (part.strip() for part in item.split(":", 1)) if ":" in item else (None, item.strip())
        if scope is not None and scope in SCOPES and not secret:
            raise UserError(f"API_KEYS (TICKETCLF_API_KEYS): no key after the scope {scope!r} (an unset variable?); "
                            "its clients would all be refused")
        if scope is not None and scope not in SCOPES:
            # Not quoted: what comes before the colon may be part of a secret.
            raise UserError(f"API_KEYS (TICKETCLF_API_KEYS): a key has a colon, and what comes before it is none of "
                            f"the scopes {', '.join(SCOPES)}: write scope:KEY, or a key without a colon for every "
                            "route")
        if scope is None and secret.lower() in SCOPES:  # "metrics" with its key forgotten would open every route
            raise UserError(f"API_KEYS (TICKETCLF_API_KEYS): {secret!r} is a scope's name, not a key: write "
                            f"{secret.lower()}:KEY")
        if secret:
            keys.append(ApiKey(secret.encode(), scope))
    everywhere = {key.secret for key in keys if key.scope is None}
    if any(key.scope is not None and key.secret in everywhere for key in keys):
        # The scope would limit nothing: a key being narrowed whose old, unscoped entry was left behind.
        raise UserError("API_KEYS (TICKETCLF_API_KEYS): a key is listed both with a scope and without one, which "
                        "opens every route to it; keep one of the two")
    return tuple(keys)


def require_api_key() -> None:
    """``before_request`` hook: 401 unless a configured key is presented (when any are configured), 403 for a key
    limited to another part of the API."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    scopes = _presented_scopes()
    if scopes is None or _opens(scopes):
        return
    if not scopes:
        raise ApiError(401, "unauthorized", "missing or invalid API key: send 'Authorization: Bearer <key>' "
                       "or 'X-API-Key: <key>'", headers={"WWW-Authenticate": "Bearer"})
    needed = next((f"a key for {scope}, or " for scope, blueprint in SCOPES.items() if blueprint == _blueprint()), "")
    raise ApiError(403, "forbidden", f"this API key is for {' and '.join(sorted(map(str, scopes)))} only; "
                   f"{request.path} needs {needed}one without a scope")


def authorized() -> bool:
    """Whether the request may use its route: no keys are configured, or it presents one that opens it."""
    scopes = _presented_scopes()
    return scopes is None or _opens(scopes)


def _presented_scopes() -> set[str | None] | None:
    """The scopes of the configured keys the request presents (None among them: a key for every route; empty:
    none presented or none matches); None when no keys are configured."""
    keys: tuple[ApiKey, ...] = current_app.config["API_KEYS"]
    if not keys:
        return None
    presented = _presented_key()
    if presented is None:
        return set()
    matched = [(hmac.compare_digest(presented, key.secret), key.scope) for key in keys]  # every key compared,
    return {scope for match, scope in matched if match}  # so the timing does not tell which one matched


def _opens(scopes: set[str | None]) -> bool:
    """Whether keys of these scopes open the request's route. Any valid key reaches a path with no route (its
    404), which belongs to no part of the API; a route outside the scopes' blueprints opens to unscoped keys."""
    blueprint = _blueprint()
    return None in scopes or any(SCOPES[scope] == blueprint for scope in scopes if scope) or (
        bool(scopes) and request.url_rule is None and not isinstance(request.routing_exception, MethodNotAllowed))


def _blueprint() -> str | None:
    """The blueprint of the request's route; for a method its route does not take (a 405 to come), that
    route's, so that a key of another part gets its 403 rather than learning which methods the route takes."""
    refused = request.routing_exception
    if not isinstance(refused, MethodNotAllowed) or not refused.valid_methods:
        return request.blueprint
    adapter = current_app.url_map.bind_to_environ(request.environ)
    try:
        rule, _ = adapter.match(method=next(iter(refused.valid_methods)), return_rule=True)
    except HTTPException:  # not expected: the path matched a route for that method a moment ago
        return request.blueprint
    return rule.endpoint.rpartition(".")[0] or None


def _presented_key() -> bytes | None:
    authorization = request.authorization  # werkzeug parses "Bearer <token>"
    if authorization is not None and authorization.type == "bearer" and authorization.token:
        return authorization.token.encode()
    header = request.headers.get("X-API-Key")
    return header.encode() if header else None
