"""The operations blueprint: ``/health`` (alive), ``/ready`` (model warmed up), ``/metrics``.

A worker answers nothing until its model is loaded and warmed up (create_app does that first), so
``/ready`` answering at all is the signal; it adds the model's name and version. It has no 503: a
"stopping" flag would be wrong for workers replaced by a reload, which get the same SIGTERM.
"""

from __future__ import annotations

from flask import Blueprint, Response

from service import auth, metrics
from service.api import json_response
from service.context import context
from service.schemas import HealthResponse, ReadyResponse

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health() -> Response:
    return json_response(HealthResponse(status="ok"))


@bp.get("/ready")
def ready() -> Response:
    served = context().served
    swap_error = served.swap_error
    if swap_error is not None and not auth.authorized():  # open to probes: the reason names server paths
        swap_error = "a new model was refused; the server's log, or this route with a metrics key, says why"
    return json_response(ReadyResponse(status="ready", model=served.current.info, swap_error=swap_error))


@bp.get("/metrics")
def prometheus() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
