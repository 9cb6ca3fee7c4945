"""The OpenAPI 3.1 document, generated from the pydantic models in :mod:`service.schemas`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from service import schemas

REF = "#/components/schemas/{model}"
_ERRORS = {  # each status's codes (ErrorBody.code), named first
    400: "bad_json: the body is empty, not UTF-8 or not valid JSON; bad_request: it could not be read.",
    401: "unauthorized: a missing or wrong API key.",
    403: "forbidden: the API key is limited to another part of the API (a scope in TICKETCLF_API_KEYS).",
    408: "request_timeout: the body stopped arriving before its Content-Length was reached.",
    413: "payload_too_large: the body is larger than the configured limit.",
    404: "feedback_off: feedback is turned off on this service (TICKETCLF_FEEDBACK_DB=off): nothing was stored, "
         "do not retry.",
    409: "event_id_conflict: an item's event_id was stored already for another ticket or label (a retry repeats "
         "its event exactly); nothing was stored: give each event its own id.",
    415: "unsupported_media_type: the body is not application/json.",
    422: "invalid_request: the JSON does not match the schema, and the message names the field; invalid_ticket: "
         "a ticket has no text left after cleaning ('tickets' lists their positions in a batch); unknown_label "
         "(feedback): a label the model does not predict.",
    503: "feedback_unavailable: the feedback database cannot take feedback now; nothing was stored: retry later "
         "(Retry-After).",
    500: "model_error: the model gave scores that are not numbers (the bundle is broken, not the request); "
         "internal_error: a bug, whose message gives the request id to find it in the server log (the "
         "X-Request-ID header has it in both cases).",
}
# Every operation's other answers, in the same shape: what any route can answer besides those it lists.
_OTHER_ERRORS = ("Any other error, in the same shape: not_found (404, no such path), method_not_allowed (405, with "
                 "an Allow header), or one the HTTP server refuses before the app (headers_too_large 431, "
                 "uri_too_long 414, ...).")
# Every answer carries it: the caller's own, where it is a plain one, else a new one; the access log has it too.
_REQUEST_ID_HEADER = {"description": "The request's id: the X-Request-ID sent, if it matches [A-Za-z0-9._:-]{1,128}, "
                      "else a new one. The access log line of the request has the same id.",
                      "schema": {"type": "string"}}
_RETRY_AFTER_HEADER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
_REQUEST_ID_PARAMETER = {"name": "X-Request-ID", "in": "header", "required": False,
                         "description": "Your id for this request, echoed in the answer and logged with it.",
                         "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}


def build_document(spec: schemas.Schemas, *, title: str, version: str, max_body: int,
                   auth: bool) -> dict[str, Any]:
    """The document for one app: its bundle's ticket fields, limits and whether it needs a key."""
    responses: dict[str, type[BaseModel]] = {
        "ClassifyResponse": schemas.ClassifyResponse, "LabelsResponse": schemas.LabelsResponse,
        "HealthResponse": schemas.HealthResponse, "ReadyResponse": schemas.ReadyResponse,
        "ErrorResponse": schemas.ErrorResponse, "FeedbackResponse": schemas.FeedbackResponse,
    }
    feedback = schemas.build_feedback_schemas(spec.fields, spec.max_batch)
    inputs = [("ClassifyRequest", "validation", spec.request), ("FeedbackRequest", "validation", feedback.request),
              ("HelpdeskFeedbackWebhook", "validation", TypeAdapter(schemas.HelpdeskWebhook)),
              ("JiraFeedbackWebhook", "validation", TypeAdapter(schemas.JiraWebhook))]
    inputs += [(name, "serialization", TypeAdapter(model)) for name, model in responses.items()]
    keyed, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF)  # type: ignore[arg-type]
    components = dict(definitions.get("$defs", {}))
    request = keyed[("ClassifyRequest", "validation")]
    # The shapes are told apart by key ('tickets', 'ticket', else one ticket); a body may match two.
    jira = {"type": "object", "required": ["issue"], "properties": {"issue": {"$ref": REF.format(model="JiraIssue")}},
            "description": "A Jira issue, as a webhook or automation's 'Send web request' sends it."}
    jira_automation = {"$ref": REF.format(model="JiraIssue"),
                       "description": "A Jira issue in automation's own format: its key and fields at the top."}
    simple = {"ticket_id": {"type": ["integer", "string"]}, "ticket_subject": {"type": "string"},
              "ticket_description": {"type": "string"}}
    freshdesk = {"type": "object", "required": [schemas.FRESHDESK_SIMPLE],
                 "properties": {schemas.FRESHDESK_SIMPLE: {"type": "object", "properties": simple}},
                 "description": "Freshdesk's webhook with 'Simple' content (the ticket's id, subject and description)."}
    components["ClassifyRequest"] = {"anyOf": [*request["oneOf"], jira, jira_automation, freshdesk],
                                     "description": _REQUEST_HELP}
    tickets = components["BatchRequest"]["properties"]["tickets"]  # a batch item takes every one-ticket shape
    tickets["items"] = {"anyOf": [*tickets["items"]["oneOf"], jira, jira_automation, freshdesk]}
    for name in ("HelpdeskFeedbackWebhook", "JiraFeedbackWebhook"):
        components[name] = keyed[(name, "validation")]
    components["FeedbackRequest"] = {"anyOf": keyed[("FeedbackRequest", "validation")]["oneOf"],
                                     "description": _FEEDBACK_HELP}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": f"Ticket classification. Request bodies up to {max_body} bytes."},
        "paths": _paths(),
        "components": {"schemas": components},
    }
    # Declared whether or not this server needs a key now, so a client generated against a server without keys
    # (a developer's) can send one to a server with keys (production): {} in the list makes a key optional.
    document["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    document["security"] = [*([] if auth else [{}]), {"bearer": []}, {"apiKey": []}]
    for path in ("/health", "/ready"):
        document["paths"][path]["get"]["security"] = []
    return document


_REQUEST_HELP = ("One ticket ({'text': ...} or the model's text fields), a Zendesk-style webhook {'ticket': {'id', "
                 "'subject', 'description'}}, a Jira issue {'issue': {'key', 'fields': {'summary', 'description'}}}, "
                 "Freshdesk's 'Simple' webhook {'freshdesk_webhook': {'ticket_id', 'ticket_subject', "
                 "'ticket_description'}}, or a batch {'tickets': [...]} of any of them.")


_FEEDBACK_HELP = ("One ticket's label as an agent set it ({'ticket_id', 'label', ...} with optionally the model's "
                  "text fields and the prediction), or a batch {'feedback': [...]}; a batch is stored whole or not "
                  "at all. docs/feedback.md describes every field.")
_WEBHOOK_HELP = ("The label is read from the ticket's field named by the service's settings (default 'category'; "
                 "a key of the ticket, or an entry of its custom_fields). Stored once per ticket update.")


def _feedback_path(operation: str, summary: str, request: str, description: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "operationId": operation, "description": description,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": REF.format(model=request)}}}},
        "responses": {"200": _json("FeedbackResponse", "Stored (committed durably), or recognised as already "
                                   "stored; counts per outcome, and one result per ticket."),
                      **_errors(400, 401, 403, 404, 408, 409, 413, 415, 422, 500, 503)},
        "parameters": [_REQUEST_ID_PARAMETER],
    }}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "headers": {"X-Request-ID": _REQUEST_ID_HEADER},
            "content": {"application/json": {"schema": {"$ref": REF.format(model=ref)}}}}


def _errors(*statuses: int) -> dict[str, Any]:
    described = {str(status): _json("ErrorResponse", _ERRORS[status]) for status in statuses}
    described["default"] = _json("ErrorResponse", _OTHER_ERRORS)
    if "503" in described:
        described["503"]["headers"]["Retry-After"] = _RETRY_AFTER_HEADER
    return described


def _paths() -> dict[str, Any]:
    return {
        "/classify": {"post": {
            "summary": "Classify one ticket or a batch",
            "operationId": "classify",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": REF.format(model="ClassifyRequest")}}}},
            "parameters": [_REQUEST_ID_PARAMETER],
            "responses": {"200": _json("ClassifyResponse", "One prediction per ticket, in request order."),
                          **_errors(400, 401, 403, 408, 413, 415, 422, 500)},
        }},
        "/labels": {"get": {"summary": "The labels the model predicts", "operationId": "labels",
                            "responses": {"200": _json("LabelsResponse", "Labels and thresholds."),
                                          **_errors(401, 403)}}},
        "/health": {"get": {"summary": "Liveness: the process answers", "operationId": "health",
                            "responses": {"200": _json("HealthResponse", "Alive."), **_errors()}}},
        "/ready": {"get": {"summary": "Readiness: the model is loaded and warmed up", "operationId": "ready",
                           "responses": {"200": _json("ReadyResponse", "Ready for traffic."), **_errors()}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                             "responses": {"200": {"description": "Prometheus text format.",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           **_errors(401, 403)}}},
        "/feedback": _feedback_path("feedback", "Store agents' labels for tickets", "FeedbackRequest",
                                    _FEEDBACK_HELP),
        "/feedback/zendesk": _feedback_path("feedbackZendesk", "Store a label from a Zendesk webhook",
                                            "HelpdeskFeedbackWebhook", _WEBHOOK_HELP),
        "/feedback/freshdesk": _feedback_path("feedbackFreshdesk", "Store a label from a Freshdesk webhook",
                                              "HelpdeskFeedbackWebhook", _WEBHOOK_HELP),
        "/feedback/jira": _feedback_path("feedbackJira", "Store a label from a Jira Service Management webhook",
                                         "JiraFeedbackWebhook", "Jira's issue payload {'issue': {'key', 'fields'}} "
                                         "(or automation's issue format); the label is read from the issue's "
                                         "field named by the service's settings."),
        "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                  "responses": {"200": {"description": "OpenAPI 3.1.",
                                                        "content": {"application/json": {
                                                            "schema": {"type": "object"}}}},
                                                **_errors(401, 403)}}},
    }
