"""The API blueprint: ``POST /classify``, ``GET /labels``, ``GET /openapi.json``."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from classifier.fields import hardly_beats_majority
from classifier.manifest import FieldHead
from classifier.predict import Prediction
from classifier.text import ticket_text
from service import metrics
from service.context import context
from service.errors import ApiError
from service.schemas import (
    ClassifyResponse,
    FieldLabelOut,
    FieldLabelsOut,
    LabelOut,
    LabelsResponse,
    ModelInput,
    PredictionOut,
    describe,
)

bp = Blueprint("api", __name__)


@bp.post("/classify")
def classify() -> Response:
    model = context().model()
    try:
        parsed = model.schemas.parse(json_body())
    except ValidationError as error:
        raise ApiError(422, "invalid_request", describe(error)) from None
    items = model.schemas.tickets(parsed)
    predictor = model.predictor
    texts = [ticket_text(ticket, predictor.text_options) for _, ticket in items]
    _check_texts(items, texts, batch=isinstance(parsed, model.schemas.batch))
    # every request model (built per bundle by build_schemas) has top_k; its type is only BaseModel
    predictions = predictor.predict(texts, top_k=parsed.top_k, cleaned=True)  # type: ignore[attr-defined]
    metrics.record_predictions(predictions)
    _note_for_access_log(items, predictions)
    return json_response(ClassifyResponse(
        model=model.info,
        predictions=[PredictionOut(id=ticket_id, **p.to_dict())
                     for (ticket_id, _), p in zip(items, predictions, strict=True)],
    ))


def _check_texts(items: list[tuple[Any, ModelInput]], texts: list[str], batch: bool) -> None:
    """Refuse tickets with nothing left to classify, naming each as the request does."""
    empty = [index for index, text in enumerate(texts) if not text]
    if not empty:
        return
    def name(index: int) -> str:
        ticket_id = items[index][0]
        where = f"tickets[{index}]" if batch else "the ticket"
        return where if ticket_id is None else f"{where} (id {ticket_id!r})"
    raise ApiError(422, "invalid_ticket", f"{', '.join(name(i) for i in empty)}: no text left after cleaning "
                   "(markup, quoted replies and signatures are removed)", tickets=empty if batch else None)


@bp.get("/labels")
def labels() -> Response:
    model = context().model()
    predictor = model.predictor
    return json_response(LabelsResponse(
        model=model.info,
        labels=[LabelOut(label=label, threshold=predictor.threshold(label)) for label in predictor.labels],
        out_of_scope_threshold=predictor.out_of_scope_threshold,
        # only for a bundle predicting more than its label: one of the label alone answers as it always has
        fields=[FieldLabelsOut(name=spec.name, kind=spec.kind,
                               labels=[FieldLabelOut(label=label, threshold=spec.threshold_of(label))
                                       for label in spec.labels], always_review=_always_review(spec))
                for spec in predictor.fields] or None,
    ))


def _always_review(spec: FieldHead) -> str | None:
    if spec.kind != "single" or any(spec.threshold_of(label) <= 1 for label in spec.labels):
        return None
    if spec.per_class:  # written by evaluate
        return "no threshold reached the precision asked of 'ticketclf evaluate --apply-threshold-for-precision'"
    measured = spec.validation_metrics
    accuracy, majority = measured.get("accuracy"), measured.get("most_common_share")
    if accuracy is not None and majority is not None and hardly_beats_majority(accuracy, majority):  # training's
        return (f"validation accuracy {accuracy:.1%} is hardly above always answering its most common value "
                f"({majority:.1%}); thresholds measured on a holdout ('ticketclf evaluate "
                "--apply-threshold-for-precision') replace this")
    return f"its threshold in the manifest is {spec.threshold}, above any confidence"


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(context().model().openapi)


def json_response(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status=status, mimetype="application/json")


def json_body() -> Any:
    """The request's JSON body, each way it can be wrong refused as an :class:`ApiError` (type, encoding, size,
    a body that stops arriving): for every endpoint that takes JSON, /classify and the feedback routes."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       "send the body as JSON with the header 'Content-Type: application/json'")
    if (request.content_encoding or "identity").strip().lower() != "identity":
        raise ApiError(415, "unsupported_media_type",
                       f"bodies with 'Content-Encoding: {request.content_encoding}' are not accepted; send plain JSON")
    limit = request.max_content_length
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise _too_large(limit) from None
    except HTTPException as error:  # e.g. the client disconnected mid-body
        # Werkzeug reports the worker's socket timeout (service.worker) as a disconnect: a body shorter than
        # its Content-Length, the client still waiting for an answer.
        if isinstance(error.__context__, TimeoutError):
            raise ApiError(408, "request_timeout", "the body stopped arriving before its end; send the whole "
                           "body") from None
        raise
    except Exception as error:  # noqa: BLE001  the server's body reader, e.g. a malformed chunk size
        raise ApiError(400, "bad_request", f"the request body could not be read: {error}") from None
    # A chunked body has no Content-Length: Werkzeug stops reading it at the limit without an error, so
    # one that reaches the limit is refused rather than parsed cut short (one of exactly `limit` bytes too).
    if request.content_length is None and limit is not None and len(raw) >= limit:
        raise _too_large(limit)
    if not raw.strip():
        raise ApiError(400, "bad_json", "the body is empty; send a JSON object (e.g. {\"text\": \"...\"})")
    try:
        # JSON on the wire is UTF-8 (RFC 8259; a BOM may be ignored): json.loads(bytes) would guess UTF-16/32
        text = raw.decode("utf-8-sig")
        parsed = json.loads(text, object_pairs_hook=_refuse_duplicate_keys, parse_constant=_refuse_constant)
    except UnicodeDecodeError as error:
        raise ApiError(400, "bad_json", f"the body is not UTF-8 (byte {error.object[error.start]:#04x} at position "
                       f"{error.start}): send JSON encoded as UTF-8, as JSON always is") from None
    except ValueError as error:
        if "integer string conversion" in str(error):  # Python's advice to raise its limit is not the client's
            raise ApiError(400, "bad_json", "the body holds a number of more than 4,300 digits") from None
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise ApiError(400, "bad_json", "the body is not valid JSON: nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(parsed):
        raise ApiError(400, "bad_json", "the body is not valid JSON text: a \\uD800-\\uDFFF escape is not part of "
                       "a surrogate pair (send the character itself, or both halves of the pair)")
    return parsed


# Pairs (an emoji escaped as "\ud83d\ude00") become one character when parsed; a lone half stays a
# surrogate code point, which no encoder or tokenizer accepts.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any string (key or value) holds one; a loop, not recursion: json.loads nests deeper."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; a key given twice is an error, not "the last one wins" (a ticket would be lost)."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()  # not pairs.count(key) per key: a body of 100,000 keys would take minutes
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key!r} is given twice in one object")
            seen.add(key)
    return obj


def _refuse_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259), though Python's parser takes them."""
    raise ValueError(f"{name} is not a JSON value")


def _too_large(limit: int | None) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body is too large (limit: {limit} bytes); "
                    "send fewer or shorter tickets per request")


def _note_for_access_log(items: list[tuple[Any, ModelInput]], predictions: list[Prediction]) -> None:
    g.ticket_count = len(items)
    if current_app.config["LOG_TEXT"]:
        g.log_tickets = [_logged(ticket_id, ticket, prediction)
                         for (ticket_id, ticket), prediction in zip(items, predictions, strict=True)]


def _logged(ticket_id: Any, ticket: ModelInput, prediction: Prediction) -> dict[str, Any]:
    """A ticket as the LOG_TEXT access log shows it: its label, and its other fields' and tags where the model
    predicts them."""
    line: dict[str, Any] = {"id": ticket_id, "text": ticket, "label": prediction.label}
    if prediction.fields is not None:
        line["fields"] = {name: field["label"] for name, field in prediction.fields.items()}
    if prediction.tags is not None:
        line["tags"] = [given["tag"] for given in prediction.tags]
    return line
