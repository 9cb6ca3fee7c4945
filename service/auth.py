"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from flask import current_app, request

from service.errors import ApiError

# Probes from the orchestrator carry no credentials and reveal nothing.
PUBLIC_ENDPOINTS = frozenset({"ops.health", "ops.ready"})


def parse_keys(value: str | Iterable[str] | None) -> tuple[bytes, ...]:
    """Keys from a comma-separated string or a list; blanks dropped."""
    items = value.split(",") if isinstance(value, str) else value or ()
    return tuple(key.strip().encode() for key in items if key.strip())


def require_api_key() -> None:
    """``before_request`` hook: 401 unless a configured key is presented (when any are configured)."""
    if request.endpoint in PUBLIC_ENDPOINTS or authorized():
        return
    raise ApiError(401, "unauthorized", "missing or invalid API key: send 'Authorization: Bearer <key>' "
                   "or 'X-API-Key: <key>'", headers={"WWW-Authenticate": "Bearer"})


def authorized() -> bool:
    """Whether the request may see everything: no keys are configured, or it presents one of them."""
    keys: tuple[bytes, ...] = current_app.config["API_KEYS"]
    presented = _presented_key() if keys else None
    return not keys or (presented is not None and _matches(presented, keys))


def _presented_key() -> bytes | None:
    authorization = request.authorization  # werkzeug parses "Bearer <token>"
    if authorization is not None and authorization.type == "bearer" and authorization.token:
        return authorization.token.encode()
    header = request.headers.get("X-API-Key")
    return header.encode() if header else None


def _matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    matched = False
    for key in keys:  # every key is compared, so timing does not tell which one matched
        matched |= hmac.compare_digest(presented, key)
    return matched
