"""The operations blueprint: ``/health`` (alive), ``/ready`` (model warmed up, not stopping), ``/metrics``."""

from __future__ import annotations

from flask import Blueprint, Response

from service import metrics
from service.api import json_response
from service.context import context
from service.errors import ApiError
from service.schemas import HealthResponse, ReadyResponse

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health() -> Response:
    return json_response(HealthResponse(status="ok"))


@bp.get("/ready")
def ready() -> Response:
    ctx = context()
    if ctx.stopping:
        raise ApiError(503, "stopping", "the server is shutting down")
    return json_response(ReadyResponse(status="ready", model=ctx.model_info))


@bp.get("/metrics")
def prometheus() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
