"""The feedback blueprint: agents' labels for tickets, stored in the feedback database (classifier/feedback.py).

``POST /feedback`` takes one ticket's label or ``{"feedback": [...]}``; ``POST /feedback/zendesk``,
``/feedback/freshdesk`` and ``/feedback/jira`` take what those helpdesks' webhooks send when a ticket is
updated, reading the label from the category field the settings name. A request is answered 200 only once
its feedback is committed (durably); a batch is one transaction. Bad feedback gets a 4xx naming the field and
stores nothing.

Classification never depends on the feedback database: a store that cannot be opened (a read-only volume,
PostgreSQL down) is logged, ``/feedback`` answers 503 (helpdesks retry those) and the store is tried again
on a later request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from classifier.errors import UserError, first_of, one_line
from classifier.feedback import (
    MAX_ID,
    MAX_LABEL,
    MAX_VERSION,
    OFF,
    EventIdReused,
    FeedbackEvent,
    FeedbackStore,
    Outcome,
    feedback_url,
    shown,
)
from classifier.text import field_key, field_value, label_key
from service import metrics
from service.api import json_body, json_response
from service.context import context
from service.errors import ApiError
from service.model import LoadedModel
from service.schemas import (
    FeedbackBase,
    FeedbackResponse,
    FeedbackResult,
    HelpdeskWebhook,
    JiraWebhook,
    ZendeskTicket,
    build_feedback_schemas,
    describe,
    jira_ticket,
    zendesk_record,
)

log = logging.getLogger("ticketclf.service")
bp = Blueprint("feedback", __name__)
EXTENSION = "ticketclf.feedback"
RETRY_SECONDS = 5.0  # a store that failed to open is tried again at most this often
# The helpdesks' settings: which field of their ticket holds the label.
HELPDESK_FIELDS = {"zendesk": "FEEDBACK_ZENDESK_FIELD", "freshdesk": "FEEDBACK_FRESHDESK_FIELD",
                   "jira": "FEEDBACK_JIRA_FIELD"}


class FeedbackDatabase:
    """The app's feedback store, opened at start if it can be, else on a later request."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self._store: FeedbackStore | None = None
        self._error: str | None = None
        self._tried = 0.0
        self._lock = threading.Lock()

    def describe(self) -> str:
        return shown(self.url) if self.url else OFF

    def open(self) -> None:
        """Try to open the store now; on failure remember why (a mistake in the URL itself is raised)."""
        if self.url is None:
            return
        self._tried = time.monotonic()
        try:
            self._store = FeedbackStore.open(self.url, create=True)
        except (UserError, SQLAlchemyError, OSError) as error:
            self._error = f"{self.describe()}: {one_line(error)}"
            log.error("feedback database unavailable (classification is not affected): %s", self._error)
        else:
            self._error = None
            log.info("feedback database %s ready", self.describe())

    def store(self) -> FeedbackStore:
        """The open store, or a 503 saying why there is none."""
        with self._lock:
            if self._store is None and self.url is not None and time.monotonic() - self._tried >= RETRY_SECONDS:
                self.open()
            if self._store is None:
                raise _unavailable(self._error or "not open")
            return self._store


def install(app: Flask) -> None:
    """Open the feedback store (``FEEDBACK_DB``, default beside the model) and register the routes."""
    database = FeedbackDatabase(feedback_url(app.config["FEEDBACK_DB"], app.config["BUNDLE"]))
    database.open()
    app.extensions[EXTENSION] = database
    app.register_blueprint(bp)


# ---------------------------------------------------------------- routes


@bp.before_request
def _refuse_when_off() -> None:
    """Feedback turned off is a 404 before the body is read: not a 503, which helpdesks would retry for ever."""
    if current_app.extensions[EXTENSION].url is None:
        raise ApiError(404, "feedback_off", "this service does not take feedback (TICKETCLF_FEEDBACK_DB=off): "
                       "nothing was stored; turn feedback on, or remove the helpdesk's webhook")


@bp.post("/feedback")
def feedback() -> Response:
    body = json_body()
    model = context().model()
    schemas = build_feedback_schemas(model.predictor.text_options.record_fields, current_app.config["MAX_BATCH"])
    try:
        items = schemas.items(body)
    except ValidationError as error:
        raise ApiError(422, "invalid_request", describe(error)) from None
    batch = isinstance(body, dict) and field_key(body, "feedback") is not None
    names = [f"feedback[{index}]" if batch else "" for index in range(len(items))]
    return _store([_event(item) for item in items], names, model)


@bp.post("/feedback/zendesk")
def zendesk() -> Response:
    return _helpdesk("zendesk")


@bp.post("/feedback/freshdesk")
def freshdesk() -> Response:
    return _helpdesk("freshdesk")


def _helpdesk(source: str) -> Response:
    """``{"ticket": {"id", "subject", "description", "updated_at", <category field>, "custom_fields"}}``."""
    body = json_body()
    model = context().model()
    try:
        parsed = HelpdeskWebhook.model_validate(body)
    except ValidationError as error:
        raise ApiError(422, "invalid_request", describe(error, tagged=False)) from None
    ticket = parsed.ticket
    extra = {**(ticket.model_extra or {})}
    label = _label_from(extra, source, model, "ticket")
    event = FeedbackEvent(
        ticket_id=str(ticket.id), label=label, text_fields=_text(ticket, model), updated_at=ticket.updated_at,
        event_id=parsed.event_id, source=source, **_prediction(extra, "ticket"))
    return _store([event], ["ticket"], model)


@bp.post("/feedback/jira")
def jira() -> Response:
    """Jira Service Management: ``{"issue": {"key", "fields": {"summary", "description", "updated", <field>}}}``,
    or the issue itself (automation's own format)."""
    body = json_body()
    model = context().model()
    if isinstance(body, dict) and "issue" not in body and "fields" in body:
        body = {"issue": body}
    try:
        parsed = JiraWebhook.model_validate(body)
    except ValidationError as error:
        raise ApiError(422, "invalid_request", describe(error, tagged=False)) from None
    issue = parsed.issue
    fields = {**(issue.fields.model_extra or {})}
    label = _label_from(fields, "jira", model, "issue.fields")
    text = _text(ZendeskTicket.model_construct(**jira_ticket(issue.key, issue.fields.summary,
                                                             issue.fields.description)), model)
    event = FeedbackEvent(ticket_id=issue.key, label=label, text_fields=text, updated_at=issue.fields.updated,
                          event_id=parsed.event_id, source="jira", **_prediction(fields, "issue.fields"))
    return _store([event], ["issue"], model)


# ---------------------------------------------------------------- shared steps


def _event(item: FeedbackBase) -> FeedbackEvent:
    return FeedbackEvent(
        ticket_id=str(item.ticket_id), label=item.label, text_fields=item.text_record(),
        predicted_label=item.predicted_label, model_version=item.model_version, confidence=item.confidence,
        needs_review=item.needs_review, new_label=item.new_label, event_id=item.event_id,
        updated_at=item.updated_at)


def _store(events: list[FeedbackEvent], names: Sequence[str], model: LoadedModel) -> Response:
    """Check the labels against ``model``'s (the one the request read), store all in one transaction, count
    and answer."""
    database: FeedbackDatabase = current_app.extensions[EXTENSION]
    events = [_checked_values(event, name) for event, name in zip(events, names, strict=True)]
    store = database.store()
    events = _check_labels(events, names, store, model)
    if not current_app.config["FEEDBACK_STORE_TEXT"]:
        events = [_without_text(event) for event in events]
    g.ticket_count = len(events)  # the access log's count; it never holds feedback text
    try:
        outcomes = store.add(events)
    except EventIdReused as error:
        where = f"{names[error.index]}.event_id" if names[error.index] else "event_id"
        raise ApiError(409, "event_id_conflict", f"{where}: {error}; nothing was stored") from None
    except SQLAlchemyError as error:
        raise _unavailable(f"{database.describe()}: {one_line(error)}") from None
    metrics.record_feedback(outcomes, model.predictor.labels)
    return json_response(_response(outcomes))


# The columns' lengths, checked here whatever the event came from (the API's schema, a webhook's fields): an
# over-long value would otherwise reach PostgreSQL, which refuses it (a 503 for a request that can never pass).
_LIMITS = {"ticket_id": MAX_ID, "label": MAX_LABEL, "predicted_label": MAX_LABEL, "model_version": MAX_VERSION,
           "event_id": MAX_ID}


def _checked_values(event: FeedbackEvent, name: str) -> FeedbackEvent:
    """What every database stores: values within their column's length and no NUL character (PostgreSQL refuses
    it in text; in ticket text it is dropped)."""
    where = f"{name}." if name else ""
    for key, limit in _LIMITS.items():
        value = getattr(event, key) or ""
        if len(value) > limit:
            raise ApiError(422, "invalid_request", f"{where}{key}: at most {limit} characters")
        if "\x00" in value:
            raise ApiError(422, "invalid_request", f"{where}{key}: contains a NUL character")
    if event.text_fields and any("\x00" in value for value in event.text_fields.values()):
        event = replace(event, text_fields={key: value.replace("\x00", "") for key, value in event.text_fields.items()})
    return event


def _check_labels(events: list[FeedbackEvent], names: Sequence[str], store: FeedbackStore,
                  model: LoadedModel) -> list[FeedbackEvent]:
    """Labels are the served model's, or new ones the request (``new_label``), the settings
    (``FEEDBACK_NEW_LABELS``) or an earlier request accepted; matched in any case and Unicode form and stored
    in the spelling known already, so that 'Refunds' and 'refunds' stay one queue (two workers teaching both
    spellings at the same moment may still store both; retrain then reads them as one, as training does)."""
    known = {label_key(label): label for label in model.predictor.labels}
    checked, unknown = [], []
    taught: dict[str, str] | None = None
    for index, event in enumerate(events):
        label = known.get(label_key(event.label))
        if label is not None:
            checked.append(replace(event, label=label, new_label=False))
            continue
        if taught is None:
            taught = _taught(store)
        label = taught.get(label_key(event.label))
        if label is not None or event.new_label or current_app.config["FEEDBACK_NEW_LABELS"]:
            label = taught.setdefault(label_key(event.label), event.label)
            checked.append(replace(event, label=label, new_label=True))
        else:
            unknown.append(index)
    if unknown:
        where = ", ".join(f"{names[i]}.label" if names[i] else "label" for i in unknown[:10])
        labels = ", ".join(dict.fromkeys(repr(events[i].label) for i in unknown[:10]))
        shown_labels = first_of(model.predictor.labels, 20)
        raise ApiError(422, "unknown_label", f"{where}: {labels}: not a label of the model {model.name} "
                       f"{model.version} ({shown_labels}); to teach a new queue send \"new_label\": true")
    return checked


def _taught(store: FeedbackStore) -> dict[str, str]:
    """New labels accepted before, by their case-folded spelling (where several spellings are stored, the
    first in sort order)."""
    try:
        return {label_key(label): label for label in sorted(store.taught_labels(), reverse=True)}
    except SQLAlchemyError as error:
        raise _unavailable(one_line(error)) from None


def _without_text(event: FeedbackEvent) -> FeedbackEvent:
    return replace(event, text_fields=None)


def _response(outcomes: list[Outcome]) -> FeedbackResponse:
    count = {status: sum(o.status == status for o in outcomes) for status in ("stored", "duplicate", "unchanged")}
    return FeedbackResponse(stored=count["stored"], duplicates=count["duplicate"], unchanged=count["unchanged"],
                            results=[FeedbackResult(ticket_id=o.ticket_id, status=o.status) for o in outcomes])


def _text(ticket: ZendeskTicket, model: LoadedModel) -> dict[str, str] | None:
    """A webhook ticket's subject and description mapped onto the model's fields, as /classify maps them."""
    if not (ticket.subject or ticket.description):
        return None
    record = zendesk_record(ticket, model.predictor.text_options.record_fields)
    if isinstance(record, str):
        return {"text": record}
    return {key: value for key, value in record.items() if value and value.strip()} or None


# Objects holding a ticket's fields in an export, not in a webhook's ticket: "ticket.custom_fields.queue" is a
# webhook ticket's "queue" custom field.
_WRAPPERS = ("ticket.", "issue.fields.", "fields.", "custom_fields.")


def _label_fields(source: str, model: LoadedModel) -> list[str]:
    """The helpdesk's fields that may hold the label, in the order tried: its setting alone, else the column the
    served model was trained on without the objects around it ("ticket.custom_fields.queue": queue;
    "assignment_group.display_value": assignment_group), then "category" (the default before there was one)."""
    if field := current_app.config[HELPDESK_FIELDS[source]]:
        return [str(field)]
    trained = model.predictor.manifest.data.train
    column = trained.label_column if trained else None
    for wrapper in _WRAPPERS:
        column = column[len(wrapper):] if column and column.lower().startswith(wrapper) else column
    return list(dict.fromkeys([column.split(".", 1)[0], "category"] if column else ["category"]))


def _label_from(data: dict[str, Any], source: str, model: LoadedModel, where: str) -> str:
    """The label in the helpdesk's category field (:func:`_label_fields`): a key of ``data``, or an entry of its
    custom fields (a Zendesk list of ``{"id", "value"}``, a Freshdesk object); a select field's value or name."""
    fields = _label_fields(source, model)
    field = next((name for name in fields if _field_value(data, name) is not None), fields[0])
    value = _field_value(data, field)
    setting = f"TICKETCLF_{HELPDESK_FIELDS[source]}"
    named = f"set by {setting}" if current_app.config[HELPDESK_FIELDS[source]] else \
        f"the column the model was trained on, else 'category'; {setting} names another"
    if value is None:
        raise ApiError(422, "invalid_request", f"{where}.{field}: missing: the ticket has no value for the "
                       f"category field {' or '.join(map(repr, fields))} ({named}); send only tickets that have one")
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ApiError(422, "invalid_request", f"{where}.{field}: expected the category as a string (or a select "
                       "field's {\"value\": ...}), got " + type(value).__name__)
    label = str(value).strip()
    if not label or len(label) > MAX_LABEL:
        raise ApiError(422, "invalid_request", f"{where}.{field}: a label of 1 to {MAX_LABEL} characters, got "
                       f"{len(label)}")
    return label


def _field_value(data: dict[str, Any], field: str) -> Any:
    value = field_value(data, field)
    if value is None:
        custom = field_value(data, "custom_fields")
        if isinstance(custom, dict):
            value = field_value(custom, field)
        elif isinstance(custom, list):
            value = next((entry.get("value") for entry in custom
                          if isinstance(entry, dict) and str(entry.get("id")).lower() == field.lower()), None)
    return _option_value(value)


def _option_value(value: Any) -> Any:
    """A select field's option (``{"value": ...}``, ``{"name": ...}``, Jira's request type), a one-item list's
    item; an empty string counts as missing."""
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else (None if not value else value)
    if isinstance(value, dict):
        if "requestType" in value and isinstance(value["requestType"], dict):
            value = value["requestType"]
        value = next((value[key] for key in ("value", "name") if value.get(key) is not None), value)
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _prediction(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``predicted_label`` and ``model_version`` when the helpdesk keeps them in fields of those names (an
    integration that wrote /classify's answer into the ticket)."""
    found: dict[str, Any] = {}
    for name, limit in (("predicted_label", MAX_LABEL), ("model_version", MAX_VERSION)):
        value = _field_value(data, name)
        if value is None:
            continue
        if not isinstance(value, str | int) or isinstance(value, bool) or len(str(value)) > limit:
            raise ApiError(422, "invalid_request", f"{where}.{name}: a string of at most {limit} characters")
        found[name] = str(value).strip()
    return found


def _unavailable(reason: str) -> ApiError:
    """A 503 saying to retry (counted, whether the database failed a write or could not be opened); ``reason``
    goes to the log only, as it names the database and server paths."""
    metrics.record_feedback_store_error()
    request_id = g.get("request_id")
    log.error("feedback not stored (request %s; nothing of it was): %s", request_id, reason)
    return ApiError(503, "feedback_unavailable", "the feedback database cannot take feedback now: nothing was "
                    f"stored, retry later (the server's log says why, under request id {request_id})",
                    headers={"Retry-After": "5"})

