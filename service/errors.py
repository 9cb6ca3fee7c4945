"""Every error leaves as ``{"error": {"code", "message"}}`` with the right status; bad input never 500s."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, has_request_context, json
from werkzeug.exceptions import HTTPException

from classifier.errors import ModelError, UserError
from service.schemas import ErrorCode

log = logging.getLogger("ticketclf.service")

# Werkzeug's exceptions carry the status and a human description; these name them for machines.
_HTTP_CODES: dict[int, ErrorCode] = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
    415: "unsupported_media_type"}


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine code and a message for people."""

    def __init__(self, status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None, *,
                 tickets: list[int] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        self.tickets = tickets  # the batch positions it concerns, for a client to drop them (ErrorBody.tickets)


def error_response(status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None,
                   tickets: list[int] | None = None) -> Response:
    error: dict[str, object] = {"code": code, "message": message}
    if has_request_context():
        g.error_code = code  # for the access log: a 422 invalid_request and a 422 invalid_ticket differ
    if tickets is not None:
        error["tickets"] = tickets
    return Response(json.dumps({"error": error}), status=status, mimetype="application/json", headers=headers)


def register(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(UserError, _user_error)
    app.register_error_handler(ModelError, _model_error)  # a UserError, but the server's fault
    app.register_error_handler(Exception, _unexpected)


def _api_error(error: ApiError) -> Response:
    return error_response(error.status, error.code, error.message, error.headers, error.tickets)


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}  # keeps Allow on 405
    return error_response(status, _HTTP_CODES.get(status, "http_error"), error.description or "", headers)


def _user_error(error: UserError) -> Response:
    # A ticket the predictor cannot read (api.classify names empty ones itself, as the request does).
    return error_response(422, "invalid_ticket", str(error))


def _model_error(error: ModelError) -> Response:
    log.error("model error in request %s: %s", g.get("request_id", "-"), error)
    return error_response(500, "model_error", str(error))


def _unexpected(error: Exception) -> Response:
    request_id = g.get("request_id", "-")
    log.exception("unhandled error in request %s", request_id)
    return error_response(500, "internal_error",
                          f"internal error; the server log has details (request id {request_id})")
