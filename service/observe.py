"""Per request: an id, the time taken, metrics and one JSON access-log line.

The access log never holds ticket text unless ``LOG_TEXT`` is on: the classify view
sets ``g.ticket_count``, and ``g.log_tickets`` (id, text, label; fields and tags where the model
predicts them) only then.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import datetime, timezone

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service import metrics

access_log = logging.getLogger("ticketclf.access")
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # a caller's id is echoed only if it is harmless


def install(app: Flask) -> None:
    """Register the hooks first, so requests refused by later hooks (401) are counted and logged too."""
    app.before_request(_start)
    app.after_request(_finish)
    if app.config["ACCESS_LOG"] and not access_log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False  # one line per request, not again through the root logger


def _start() -> None:
    g.started = time.perf_counter()
    supplied = request.headers.get("X-Request-ID", "")
    g.request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex


def _finish(response: Response) -> Response:
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    route = _route()
    method = request.method if request.method in _HTTP_METHODS else "other"  # any caller may invent one
    metrics.record_request(route, method, response.status_code, seconds)
    response.headers["X-Request-ID"] = g.get("request_id", "")
    if current_app.config["ACCESS_LOG"]:
        access_log.info(json.dumps(_entry(response, seconds), ensure_ascii=False))
    return response


def _route() -> str:
    """The matched route's pattern (bounded label values): a 405 counts under the route it reached with
    the wrong method, anything else unmatched under "unmatched"."""
    if request.url_rule is not None:
        return request.url_rule.rule
    missed = request.routing_exception
    if isinstance(missed, MethodNotAllowed) and missed.valid_methods:
        try:
            rule, _ = current_app.url_map.bind_to_environ(request.environ).match(
                method=next(iter(missed.valid_methods)), return_rule=True)
            return rule.rule
        except HTTPException:
            pass
    return "unmatched"


def _entry(response: Response, seconds: float) -> dict[str, object]:
    entry: dict[str, object] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": g.get("request_id"),
        "remote": request.remote_addr,
        "method": request.method,
        "path": request.path,  # no query string: nothing of a ticket travels there, keep it that way
        "status": response.status_code,
        "duration_ms": round(seconds * 1000, 2),
        "bytes_in": request.content_length or 0,
        "bytes_out": response.content_length,
        "user_agent": request.user_agent.string or None,
    }
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded:  # behind a proxy or ingress, "remote" is the proxy; this is who it says called
        # Its end, where the proxies write the addresses they saw: the start is whatever the caller sent.
        entry["forwarded_for"] = forwarded if len(forwarded) <= 256 else "..." + forwarded[-253:]
    for key in ("error_code", "model_version", "ticket_count"):
        if key in g:
            entry[key] = g.get(key)
    if "log_tickets" in g:  # only set when LOG_TEXT is on
        entry["tickets"] = g.log_tickets
    return entry
