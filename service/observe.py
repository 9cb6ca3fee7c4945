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
import threading
import time
import uuid
from datetime import datetime, timezone

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service import metrics

access_log = logging.getLogger("ticketclf.access")
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # a caller's id is echoed only if it is harmless


# Per thread, the id of the request it answers, until the request is torn down; kept when the worker stops in
# the middle (its timeout, or a quick shutdown): gunicorn's answer then names it (service.worker).
_in_flight: dict[int, str] = {}


def install(app: Flask) -> None:
    """Register the hooks first, so requests refused by later hooks (401) are counted and logged too."""
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_stopped_mid_request)
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
    _in_flight[threading.get_ident()] = g.request_id


def _finish(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    _record(response.status_code, response.content_length)
    return response


def _record(status: int, bytes_out: int | None) -> None:
    """The request's metrics and access-log line."""
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    method = request.method if request.method in _HTTP_METHODS else "other"  # any caller may invent one
    metrics.record_request(_route(), method, status, seconds)
    if current_app.config["ACCESS_LOG"]:
        access_log.info(json.dumps(_entry(status, bytes_out, seconds), ensure_ascii=False))


def _stopped_mid_request(error: BaseException | None) -> None:
    """A worker stopped while it answered (SystemExit: gunicorn's timeout, or a quick shutdown): no answer went
    out, gunicorn writes one (:func:`stopped_request`); counted and logged here, where the request still is."""
    if isinstance(error, SystemExit) and threading.get_ident() in _in_flight:
        g.error_code = STOPPED_CODE
        _record(STOPPED_STATUS, None)
    else:
        _in_flight.pop(threading.get_ident(), None)


STOPPED_STATUS, STOPPED_CODE = 503, "worker_stopped"  # the answer gunicorn writes for it (service.worker)


def stopped_request() -> str | None:
    """The id of the request this thread was answering when its worker stopped (None: it was answered)."""
    return _in_flight.pop(threading.get_ident(), None)


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


def _entry(status: int, bytes_out: int | None, seconds: float) -> dict[str, object]:
    entry: dict[str, object] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": g.get("request_id"),
        "remote": request.remote_addr,
        "method": request.method,
        "path": request.path,  # no query string: nothing of a ticket travels there, keep it that way
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "bytes_in": request.content_length or 0,
        "bytes_out": bytes_out,
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
