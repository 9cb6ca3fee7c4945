"""Request and response models; the OpenAPI document is generated from them.

The ticket fields depend on the bundle (``subject``/``body`` for one model, ``text``
for another), so the request models are built per app by :func:`build_schemas`.
Unknown keys are ignored: helpdesk payloads carry many fields we do not read.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    WrapValidator,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from classifier.columns import ID_COLUMN_GUESSES
from classifier.feedback import MAX_ID, MAX_LABEL, MAX_VERSION, Status
from classifier.text import (
    FIELD_SEPARATOR,
    MAX_CELL_CHARS,
    TEXT_COLUMN_GUESSES,
    SpelledTwice,
    canonical_keys,
    field_key,
    field_value,
)

ModelInput = str | dict[str, str]  # one ticket as Predictor.predict takes it
DEFAULT_TOP_K = 3
ZENDESK_SUBJECT, ZENDESK_DESCRIPTION = "subject", "description"


def _single_error(message: str) -> WrapValidator:
    """Replace a union's per-branch errors ("not a str", "not an int") with one message."""

    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("invalid_type", message) from None

    return WrapValidator(validate)


_PLACEHOLDER = re.compile(r"\{\{.*\}\}|\{%.*%\}", re.DOTALL)  # Zendesk, Freshdesk, Jira; Liquid tags


_UNFILLED = "{value} is a placeholder the helpdesk did not fill in: check the webhook's body"
# A text that is only placeholders of a helpdesk's own objects ("{{ticket.description}}", "{{ issue.summary }}"):
# a ticket about a template ("{{ customer.first_name }} shows in our mail", "{% if ... %}") is still a ticket.
_TEXT_PLACEHOLDERS = re.compile(
    r"\s*(?:\{\{\s*(?:ticket|issue|requester|organization|assignee|current_user|comment|triggerevent)\.[\w.]{1,100}"
    r"\s*\}\}\s*)+", re.IGNORECASE)


def _unfilled_id(value: Any) -> bool:
    return isinstance(value, str) and _PLACEHOLDER.fullmatch(value.strip()) is not None


def _unfilled_text(value: Any) -> bool:
    return isinstance(value, str) and _TEXT_PLACEHOLDERS.fullmatch(value) is not None


def _filled_in(ticket_id: Any) -> Any:
    """Refuse an id that is a helpdesk placeholder left as written ("{{ticket.id}}", a trigger's body not
    rendered): stored, every such event would be one ticket's, hiding the misconfigured webhook; answered, the
    helpdesk could not match the answer to its ticket."""
    if _unfilled_id(ticket_id):
        raise PydanticCustomError("placeholder", _UNFILLED, {"value": repr(ticket_id)})
    return ticket_id


def _no_placeholder_text(ticket: BaseModel, names: Collection[str]) -> None:
    """Refuse a ticket with a text field that is a placeholder left as written ("{{ticket.description}}"): the
    webhook is misconfigured, and the model would route the template's words, confidently."""
    unfilled = [name for name in names if _unfilled_text(getattr(ticket, name, None))]
    if unfilled:
        raise PydanticCustomError("placeholder", "{field}: " + _UNFILLED, {
            "field": ", ".join(unfilled), "value": repr(getattr(ticket, unfilled[0]))})


def _refuse_unfilled(location: tuple[str | int, ...], value: Any, unfilled: Callable[[Any], bool]) -> None:
    """Refuse a placeholder left as written where a webhook other than our own shape has it (Jira's
    "issue.fields.summary", Freshdesk's "freshdesk_webhook.ticket_id"), before it becomes a webhook ticket."""
    if unfilled(value):
        raise _refused("placeholder", _UNFILLED.format(value=repr(value)), location, value)


# A 64-bit integer: any helpdesk's, and one /feedback takes back (a 4,000-digit one would not fit its column).
_IntegerId = Annotated[StrictInt, Field(ge=-(2**63), lt=2**63)]

TicketId = Annotated[
    Annotated[StrictStr, StringConstraints(max_length=MAX_ID)] | _IntegerId,
    Field(description="Your ticket id, echoed in the prediction (without it, a helpdesk's own is: 'number', "
          "'key', 'ticket_id', ...).", examples=["12345"]),
    _single_error(f"Input should be a string of at most {MAX_ID} characters or a 64-bit integer"),
    AfterValidator(_filled_in),
]

_TICKET_ID = TypeAdapter(TicketId)


# ------------------------------------------------------------------ responses


class ModelInfo(BaseModel):
    name: str
    version: str


class LabelScore(BaseModel):
    label: str
    score: float


_ONLY_WHEN_PREDICTED = ("fields", "tags")  # response keys a model of the label alone leaves out


def _absent_not_null(schema: dict[str, Any]) -> None:
    """A key left out when the model has nothing for it, never null: no default to document."""
    schema.pop("default", None)


class FieldPredictionOut(BaseModel):
    label: str
    confidence: float = Field(ge=0, le=1)
    needs_review: bool = Field(description="The confidence is below this field's threshold for the label "
                               "(GET /labels), or the ticket is out of scope.")
    top_k: list[LabelScore] = Field(description="The field's best labels, best first.")


class TagScore(BaseModel):
    tag: str
    score: float = Field(ge=0, le=1, description="The tag's probability; the tag is given when it reaches the "
                         "tag's threshold.")


class PredictionOut(BaseModel):
    id: StrictStr | StrictInt | None = Field(description="The ticket's id from the request, or null.")
    label: str
    confidence: float = Field(ge=0, le=1)
    needs_review: bool = Field(description="An agent should check this ticket: see review_reason.")
    review_reason: Literal["out_of_scope", "low_confidence"] | None = Field(
        description="Why it needs review: out_of_scope (unlike every queue the model was trained on: its "
                    "label means little) or low_confidence (below the model's threshold for this label); "
                    "null when it does not.")
    out_of_scope_score: float | None = Field(
        description="How unlike the known queues the ticket is (its distance to them and its logits, each "
                    "against the validation tickets): near 0 for a typical ticket; above the model's "
                    "out_of_scope_threshold (GET /labels) it is out of scope. Null when the model has no "
                    "out-of-scope detector.")
    truncated: bool = Field(description="The ticket was longer than the model reads; only its start was used.")
    top_k: list[LabelScore] = Field(description="The best labels, best first.")
    fields: dict[str, FieldPredictionOut] | SkipJsonSchema[None] = Field(
        None, description="Only for a model that predicts more than its label: each other single-label field "
        "(e.g. priority), by column name, with its own label, confidence, review flag and best labels.",
        examples=[{"priority": {"label": "high", "confidence": 0.87, "needs_review": False,
                                "top_k": [{"label": "high", "score": 0.87}, {"label": "normal", "score": 0.11}]}}],
        json_schema_extra=_absent_not_null)
    tags: list[TagScore] | SkipJsonSchema[None] = Field(
        None, description="Only for a model that predicts tags: the tags given to the ticket (each score reached "
        "that tag's threshold, GET /labels), best first; an empty list when none was.",
        examples=[[{"tag": "refund", "score": 0.93}, {"tag": "vip", "score": 0.61}]],
        json_schema_extra=_absent_not_null)

    # No return annotation, here and below: pydantic then documents the model's own properties (an annotation
    # would replace them with its type's schema).
    @model_serializer(mode="wrap")
    def _leave_out_absent_fields(self, handler: SerializerFunctionWrapHandler):
        # A model of the label alone answers exactly as before: no "fields" or "tags" key, not even null.
        answer = handler(self)
        for key in _ONLY_WHEN_PREDICTED:
            if answer.get(key) is None:
                answer.pop(key, None)
        return answer


class ClassifyResponse(BaseModel):
    model: ModelInfo
    predictions: list[PredictionOut] = Field(description="One per ticket, in request order.")


class LabelOut(BaseModel):
    label: str
    threshold: float = Field(description="Predictions of this label below this confidence need review.")


class FieldLabelOut(BaseModel):
    label: str = Field(description="A label of the field (a tag, for the tags field).")
    threshold: float = Field(description="single: predictions of this label below this confidence need review; "
                             "tags: the tag is given when its score reaches this.")


class FieldLabelsOut(BaseModel):
    name: str = Field(description="The field's column, as the response's fields (or tags) name it.",
                      examples=["priority"])
    kind: Literal["single", "tags"] = Field(description="single: one label per ticket (in the response's "
                                            "fields); tags: any number per ticket (the response's tags).")
    labels: list[FieldLabelOut]
    always_review: str | None = Field(
        None, description="Why every answer of this field is marked needs_review (all its thresholds are above "
        "1), e.g. validation accuracy hardly above always answering its most common value; null when its "
        "thresholds route answers.")


class LabelsResponse(BaseModel):
    model: ModelInfo
    labels: list[LabelOut]
    out_of_scope_threshold: float | None = Field(
        description="Tickets whose out_of_scope_score is above it need review as out of scope; null when the "
                    "model has no out-of-scope detector.")
    fields: list[FieldLabelsOut] | SkipJsonSchema[None] = Field(
        None, description="Only for a model that predicts more than its label: every other field (single-label "
        "fields and the tags), with its labels and thresholds.",
        examples=[[{"name": "priority", "kind": "single", "labels": [{"label": "high", "threshold": 0.5},
                                                                     {"label": "normal", "threshold": 0.5}]},
                   {"name": "tags", "kind": "tags", "labels": [{"label": "refund", "threshold": 0.42}]}]],
        json_schema_extra=_absent_not_null)

    @model_serializer(mode="wrap")
    def _leave_out_absent_fields(self, handler: SerializerFunctionWrapHandler):
        answer = handler(self)
        if answer.get("fields") is None:
            answer.pop("fields", None)
        return answer


class HealthResponse(BaseModel):
    status: str = Field(examples=["ok"])


class ReadyResponse(BaseModel):
    status: str = Field(examples=["ready"])
    model: ModelInfo
    swap_error: str | None = Field(None, description="Why the last new model tried was refused (the model "
                                   "named here kept serving); null once a new model is accepted.")


# Every error's code for machines (its message is for people): a client switches on these, so the document lists
# them. Then gunicorn's, for requests it refuses before the app (service.worker), and the proxy's in front
# (deploy/nginx.conf), for a service that did not answer.
ErrorCode = Literal[
    "bad_json", "bad_request", "invalid_request", "invalid_ticket", "unknown_label", "unauthorized", "feedback_off",
    "not_found", "method_not_allowed", "request_timeout", "event_id_conflict", "payload_too_large",
    "unsupported_media_type", "model_error", "internal_error", "feedback_unavailable",
    "http_error",  # any other status the web framework answers with
    "forbidden", "uri_too_long", "expectation_failed", "headers_too_large", "not_implemented", "worker_stopped",
    "unavailable", "upstream_timeout"]


class ErrorBody(BaseModel):
    code: ErrorCode = Field(examples=["invalid_request"])
    message: str
    tickets: list[int] | SkipJsonSchema[None] = Field(
        None, description="Only for invalid_ticket: the positions (from 0) of the tickets refused in the request's "
        "'tickets', to send the batch again without them.", examples=[[0, 2]], json_schema_extra=_absent_not_null)


class ErrorResponse(BaseModel):
    error: ErrorBody


# ------------------------------------------------------------------ requests


def _no_top_k_of_its_own(model: type[BaseModel], data: Any) -> None:
    """A batch's item (a model without top_k) may not give its own: it would be ignored without a word. A null
    is no value (a client's single-ticket object, reused as an item, may carry one)."""
    if isinstance(data, dict) and "top_k" not in model.model_fields and field_value(data, "top_k") is not None:
        raise PydanticCustomError("misplaced_top_k", "top_k is given once for the whole request, at its top level "
                                  "(beside 'tickets' or 'ticket')")


def _refuse_text_under_another_name(model: type[TicketBase | FeedbackBase], data: dict[str, Any],
                                    body_names: Collection[str]) -> None:
    """{"subject": ..., "body": ...} to a model that reads subject and description would be classified (or
    retrained) on its subject alone: refused, naming the field to use. A stray key is one of ``body_names`` or a
    typo of a field; keys that are not text (priority) stay ignored."""
    missing = [name for name in model.text_fields if not _has_words(data.get(name))]
    given_leaves = {name.rsplit(".", 1)[-1] for name in model.text_fields if name not in missing}
    unread = set(_unread_body_keys(data, given_leaves, body_names))  # once: a body may have thousands of keys
    stray = [key for key in data if key not in model.model_fields and _has_words(data[key])
             and (key in unread or _misspelt(key, missing))]
    whole_text = data.get("text") is not None and "text" not in model.text_fields
    if missing and stray and not whole_text:
        raise PydanticCustomError(
            "unread_text", "this model reads {fields}: the ticket has no {missing} but has {stray}, which it "
            "does not read; send that text as {missing}", {
                "fields": ", ".join(map(repr, model.text_fields)), "missing": " or ".join(map(repr, missing)),
                "stray": ", ".join(map(repr, stray))})


class TicketBase(BaseModel):
    """One ticket: either ``text`` (the whole ticket) or the bundle's text fields."""

    model_config = ConfigDict(extra="ignore")
    text_fields: ClassVar[tuple[str, ...]] = ("text",)  # the bundle's text fields; set per app

    id: TicketId | None = None
    text: StrictStr | None = Field(None, description="The whole ticket as one text.")

    @model_validator(mode="before")
    @classmethod
    def _has_text(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = _with_helpdesk_id(_canonical_keys(data, ("id", *cls.text_keys())), cls.text_keys())
        _no_top_k_of_its_own(cls, data)
        if isinstance(data, dict) and all(data.get(key) is None for key in cls.text_keys()):
            if field_key(data, "tickets") is not None and field_value(data, "tickets") is None:
                raise PydanticCustomError("null_batch", "tickets: null is no batch: give a list of tickets")
            # e.g. fields of another model; not a null ("tickets": null is no batch, not a field left unread)
            unread = [key for key in data if key not in cls.model_fields and data[key] is not None]
            webhook = " or a webhook's {'ticket': {...}} with the ticket's fields inside" if "ticket" in unread else ""
            raise PydanticCustomError("missing_text", "missing ticket text: give {keys}{webhook}{unread}", {
                "keys": " or ".join(repr(k) for k in cls.text_keys()), "webhook": webhook,
                "unread": f" (this model does not read {', '.join(map(repr, unread))})" if unread else ""})
        if isinstance(data, dict):
            _refuse_text_under_another_name(cls, data, _BODY_FIELD_NAMES)
        return data

    @model_validator(mode="after")
    def _text_given_once(self) -> TicketBase:
        _no_placeholder_text(self, self.text_keys())
        given = [name for name in self.text_fields if getattr(self, name, None) is not None]
        if self.text is not None and "text" not in self.text_fields and given:
            raise PydanticCustomError("ambiguous_text",
                                      "give either 'text' or the ticket's fields ({fields}), not both",
                                      {"fields": ", ".join(given)})
        return self

    @classmethod
    def text_keys(cls) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("text", *cls.text_fields)))

    def model_input(self) -> ModelInput:
        """What the predictor reads: the whole text, or a record of the bundle's fields."""
        if self.text is not None and "text" not in self.text_fields:
            return self.text
        return {name: value for name in self.text_fields if (value := getattr(self, name)) is not None}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        # JSON Schema cannot see the validator: state "exactly one way of giving the text" explicitly.
        schema = handler.resolve_ref_schema(handler(core_schema))
        fields = [_given(name) for name in cls.text_fields]
        if "text" in cls.text_fields:
            schema["anyOf"] = fields
        else:  # 'text' is the whole ticket, the alternative to the fields
            schema["anyOf"] = [{**_given("text"), "not": {"anyOf": fields}},
                               *({**field, "not": _given("text")} for field in fields)]
        return schema


def _with_helpdesk_id(data: dict[str, Any], text_keys: Collection[str]) -> dict[str, Any]:
    """A ticket without "id" takes its helpdesk's own (ServiceNow's "number", Jira's "key", "ticket_id", ...) as
    ``predict --file`` finds an id column; not one of the model's ``text_keys``, a blank, or a value that is no
    id (a reference object)."""
    if data.get("id") is not None:
        return data
    read = {key.lower() for key in text_keys}
    for name in ID_COLUMN_GUESSES:
        value = field_value(data, name) if name not in read else None
        if _unfilled_id(value):  # refused as the ticket's own "id" is, not left out: the answer would match none
            raise PydanticCustomError("placeholder", f"{name}: {_UNFILLED}", {"value": repr(value)})
        if value is not None and str(value).strip():
            try:
                return {**data, "id": _TICKET_ID.validate_python(value)}
            except ValidationError:
                continue
    return data


def _given(key: str) -> dict[str, Any]:
    """JSON Schema for "``key`` is present and a string" (null counts as absent)."""
    return {"required": [key], "properties": {key: {"type": "string"}}}


class ZendeskTicket(BaseModel):
    """The ticket object of a Zendesk-style webhook; other keys are ignored, except text under another
    body name (refused rather than lost) and ``comment.body``, how Zendesk's API sets the description."""

    model_config = ConfigDict(extra="ignore")

    id: TicketId | None = None
    subject: StrictStr | None = None
    description: StrictStr | None = Field(None, description="The ticket's first comment (its body).")

    @model_validator(mode="before")
    @classmethod
    def _body_from_other_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        _no_top_k_of_its_own(cls, data)
        data = _with_helpdesk_id(_canonical_keys(data, ("id", "subject", "description", "comment")),
                                 ("subject", "description", "comment"))
        if _has_words(data.get("description")):
            return data
        comment = data.get("comment")
        body = _canonical_keys(comment, ("body",)).get("body") if isinstance(comment, dict) else None
        if _has_words(body):
            return {**data, "description": body}
        if stray := _unread_body_keys(data, {"description"}, _BODY_FIELD_NAMES):
            raise PydanticCustomError(
                "unread_text", "a webhook ticket's body goes in 'description' (or 'comment.body'); got {stray}, "
                "which is not read", {"stray": ", ".join(map(repr, stray))})
        return data

    @model_validator(mode="after")
    def _has_text(self) -> ZendeskTicket:
        if self.subject is None and self.description is None:
            raise PydanticCustomError("missing_text", "missing ticket text: give 'subject' or 'description'")
        _no_placeholder_text(self, ("subject", "description"))
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler.resolve_ref_schema(handler(core_schema))
        comment = {"type": "object", "properties": {"body": {"type": "string"}},
                   "description": "Zendesk's API shape: the first comment, read as the description."}
        schema["properties"]["comment"] = comment
        schema["anyOf"] = [_given("subject"), _given("description"),
                           {"required": ["comment"], "properties": {"comment": {"required": ["body"]}}}]
        return schema


class ZendeskWebhook(BaseModel):
    """A Zendesk-style webhook's body, ``{"ticket": {...}}``: a request, or an item of a batch. The ticket's id
    is its own ``id``, else one given beside it."""

    model_config = ConfigDict(extra="ignore")

    ticket: ZendeskTicket
    id: TicketId | None = None

    @model_validator(mode="before")
    @classmethod
    def _key_in_any_case(cls, data: Any) -> Any:
        _no_top_k_of_its_own(cls, data)
        return _canonical_keys(data, ("ticket", "id")) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _one_id(self) -> ZendeskWebhook:
        if self.id is not None and self.ticket.id is not None and self.id != self.ticket.id:
            raise PydanticCustomError("ambiguous_id", "the ticket's id is given twice and differs: 'id' {outer} "
                                      "and 'ticket.id' {inner}",
                                      {"outer": repr(self.id), "inner": repr(self.ticket.id)})
        return self

    @property
    def ticket_id(self) -> str | int | None:
        return self.ticket.id if self.ticket.id is not None else self.id


def zendesk_record(ticket: ZendeskTicket, fields: Sequence[str]) -> ModelInput:
    """Map a Zendesk ticket onto the bundle's fields.

    ``subject`` and ``description`` go to the bundle's fields of those names (nested ones such as
    ``ticket.subject`` too); where only one of the two names is there, the other goes to the bundle's
    first other field (``title`` for the subject, ``body`` for the description). A bundle that reads one
    text, or none of the two names, gets subject and description joined, as ``ticket_text`` joins fields.
    """
    subject, description = (_field_named(fields, name) for name in (ZENDESK_SUBJECT, ZENDESK_DESCRIPTION))
    other = next((name for name in fields if name not in (subject, description)), None)
    if subject is not None and description is None:
        description = other
    elif description is not None and subject is None:
        subject = other
    if subject is not None and description is not None:
        record = {subject: ticket.subject, description: ticket.description}
        return {name: value for name, value in record.items() if value is not None}
    parts = [part for part in (ticket.subject, ticket.description) if part]
    return {subject or description or other or ZENDESK_SUBJECT: FIELD_SEPARATOR.join(parts)}


_SHOWN_NODES = frozenset(("mention", "status", "emoji"))  # inline nodes whose attrs.text the reader sees
_DOCUMENT_BLOCKS = frozenset(("paragraph", "heading", "listItem", "codeBlock", "blockquote", "tableCell",
                              "tableHeader", "panel", "taskItem", "decisionItem"))


def document_text(document: dict[str, Any]) -> str | None:
    """The text of an Atlassian document (Jira's rich-text description): its text nodes, and the text a mention,
    status or emoji shows ("@Alice"); a block or a line break (``hardBreak``) a line."""
    lines: list[str] = []
    current: list[str] = []
    pending: list[Any] = [document]
    while pending:  # depth-first, without recursion: a hostile document may nest deeply
        node = pending.pop()
        if node is None or (isinstance(node, dict) and node.get("type") == "hardBreak"):  # a block's end, a break
            lines.append("".join(current))
            current = []
        elif isinstance(node, dict):
            attributes = node.get("attrs")
            if isinstance(node.get("text"), str):
                current.append(node["text"])
            elif node.get("type") in _SHOWN_NODES and isinstance(attributes, dict) \
                    and isinstance(attributes.get("text"), str):
                current.append(f" {attributes['text']} ")  # a word of its own beside the text around it
            children = node.get("content")
            if isinstance(children, list):
                if node.get("type") in _DOCUMENT_BLOCKS:
                    pending.append(None)  # popped after the block's children
                pending.extend(reversed(children))
    lines.append("".join(current))
    text = "\n".join(line for line in lines if line.strip())
    return text or None


def jira_ticket(key: str, summary: Any, description: Any) -> dict[str, Any]:
    """A Jira issue as a webhook ticket: key as id, summary as subject, the description's text (an Atlassian
    document, Jira Cloud's rich text, read as its text)."""
    return {"id": key, "subject": summary,
            "description": document_text(description) if isinstance(description, dict) else description}


def _refused(kind: str, message: str, location: tuple[str | int, ...], value: Any) -> ValidationError:
    """An error at ``location`` in the request, found before the request's models validate it (in the sender's
    terms: a Jira issue's fields, not those of the webhook ticket it becomes)."""
    return ValidationError.from_exception_data("request", [{
        "type": PydanticCustomError(kind, message), "loc": location, "input": value}])


def _jira_as_webhook(data: Any, text_keys: Collection[str], where: tuple[str | int, ...]) -> Any:
    """A Jira issue (``{"issue": {"key", "fields": {"summary", "description"}}}``, as a webhook or automation sends
    it, or automation's own format with the issue's keys at the top) as the webhook ticket it is, ``{"ticket":
    jira_ticket(...)}``. Anything else, or an ``issue`` or ``fields`` that is one of the model's text fields, is
    left as it is. ``where``: the location of ``data`` in the request, for an error about it."""
    if not isinstance(data, dict) or {"issue", "fields"} & {key.lower() for key in text_keys}:
        return data
    issue = field_value(data, "issue")
    inside: tuple[str, ...] = ("issue",)  # where the issue's fields are
    if not isinstance(issue, dict):  # automation's format, told by the issue's text in "fields"
        issue, inside = data, ()
        inner = field_value(data, "fields")
        if not isinstance(inner, dict) or all(field_value(inner, name) is None for name in ("summary", "description")):
            return data
    fields, key = field_value(issue, "fields"), field_value(issue, "key")
    if not isinstance(fields, dict) or not isinstance(key, str) or not key.strip():
        return data

    if field_key(data, "ticket") is not None:  # two tickets in one: neither may be left out silently
        raise _refused("invalid_shape", "give a Jira issue or a webhook's {'ticket': {...}}, not both", where, data)
    _refuse_unfilled((*where, *inside, "key"), key, _unfilled_id)
    for name in ("summary", "description"):
        _refuse_unfilled((*where, *inside, "fields", name), field_value(fields, name), _unfilled_text)
    # Errors said in Jira's terms ("issue.fields.summary"), not in those of the webhook ticket it becomes.
    for name, kinds, what in (("summary", (str,), "a string"),
                              ("description", (str, dict), "a string or an Atlassian document")):
        value = field_value(fields, name)
        if value is not None and not isinstance(value, kinds):
            raise _refused("string_type", f"Input should be {what}", (*where, *inside, "fields", name), value)
    ticket = jira_ticket(key, field_value(fields, "summary"), field_value(fields, "description"))
    if ticket["subject"] is None and ticket["description"] is None:
        raise _refused("missing_text", "missing ticket text: give 'summary' or 'description'",
                       (*where, *inside, "fields"), fields)
    # The issue's key is its id: not Jira's numeric "id", "self" or the webhook's own fields beside the issue.
    dropped = {"issue", "key", "fields", "id", "self"}
    return {**{name: value for name, value in data.items() if name.lower() not in dropped}, "ticket": ticket}


# Freshdesk's webhook with "Simple" content: the ticket's placeholders chosen, under one key, each with its prefix.
FRESHDESK_SIMPLE = "freshdesk_webhook"
_FRESHDESK_KEYS = {"id": "ticket_id", "subject": "ticket_subject", "description": "ticket_description"}


def _freshdesk_as_webhook(data: Any, text_keys: Collection[str], where: tuple[str | int, ...]) -> Any:
    """Freshdesk's "Simple" webhook (``{"freshdesk_webhook": {"ticket_id", "ticket_subject",
    "ticket_description", ...}}``) as the webhook ticket it is, ``{"ticket": {"id", "subject", "description"}}``.
    Anything else, or a body beside a ``ticket`` of its own, is left as it is (and refused as such)."""
    if not isinstance(data, dict) or FRESHDESK_SIMPLE in {key.lower() for key in text_keys}:
        return data
    inner = field_value(data, FRESHDESK_SIMPLE)
    if not isinstance(inner, dict) or field_key(data, "ticket") is not None:
        return data
    for name, key in _FRESHDESK_KEYS.items():
        _refuse_unfilled((*where, FRESHDESK_SIMPLE, key), field_value(inner, key),
                         _unfilled_id if name == "id" else _unfilled_text)
    ticket = {name: value for name, key in _FRESHDESK_KEYS.items() if (value := field_value(inner, key)) is not None}
    if "subject" not in ticket and "description" not in ticket:  # said in Freshdesk's terms
        raise _refused("missing_text", "missing ticket text: choose 'ticket_subject' or 'ticket_description' in "
                       "the webhook's content", (*where, FRESHDESK_SIMPLE), inner)
    return {**{name: value for name, value in data.items() if name.lower() != FRESHDESK_SIMPLE}, "ticket": ticket}


def _helpdesk_shapes(data: Any, text_keys: Collection[str], where: tuple[str | int, ...]) -> Any:
    """A Jira issue or a Freshdesk "Simple" webhook as the webhook ticket it is; any other body as it is."""
    return _freshdesk_as_webhook(_jira_as_webhook(data, text_keys, where), text_keys, where)


def _field_named(fields: Sequence[str], name: str) -> str | None:
    """The bundle field called ``name``, or ending in ``.name`` (a bundle trained on a nested export)."""
    return next((field for field in fields if field.rsplit(".", 1)[-1] == name), None)


def _request_shape(text_fields: Sequence[str], body: Any) -> str | None:
    """Which request shape a JSON body is, from the keys it has; None if it is not one shape.

    A body mixing shapes (a batch with a webhook ticket or a ticket's own text next to it) is
    refused rather than read as one of them: the other part would be silently left out.
    """
    if not isinstance(body, dict):
        return None
    given = {key for key, value in body.items() if value is not None}  # null counts as absent, as in a ticket
    webhook = {"ticket"} if _holds_webhook_ticket(body, text_fields) else set()
    present = [shape for shape, keys in (("batch", {"tickets"}), ("zendesk", webhook),
                                         ("single", {"text", *text_fields})) if keys & given]
    if len(present) > 1:
        return None
    return present[0] if present else "single"  # no text at all: validated as one ticket, which names what is missing


# A batch item's shapes, as pydantic tags them in an error's location (left out of the message).
ITEM_TAGS = ("item: ticket", "item: webhook")


def _batch_item_shape(text_keys: Collection[str], item: Any) -> str | None:
    """A batch item's shape: a webhook's ``{"ticket": {...}}`` (an object under a key ``ticket`` that is not one
    of the model's ``text_keys``), else a ticket; None (refused) for a webhook ticket beside text under
    ``text_keys``, as for a whole request (:func:`_request_shape`). Keys in any case, as everywhere."""
    if not isinstance(item, dict) or not _holds_webhook_ticket(item, text_keys):
        return ITEM_TAGS[0]  # a ticket, or not an object: validated as a ticket, which says what is wrong
    given = {key.lower() for key, value in item.items() if isinstance(key, str) and value is not None}
    return None if given & {key.lower() for key in text_keys} else ITEM_TAGS[1]


def _holds_webhook_ticket(data: dict[str, Any], text_keys: Collection[str]) -> bool:
    """Whether ``data`` holds a webhook's ticket: an object under a key ``ticket`` (any case) that is not one of
    the model's text fields (a ticket number there, or a model reading a 'ticket' column, is no webhook)."""
    if "ticket" in {key.lower() for key in text_keys}:
        return False
    return isinstance(field_value(data, "ticket"), dict)


# Keys that hold a ticket's body in common exports. Not the headings (subject, title, in German, French and
# Spanish too): a heading left unread costs little, and "title" is also a person's (Ms, Dr).
_BODY_FIELD_NAMES = frozenset(name for group in TEXT_COLUMN_GUESSES for name in group) - {
    "subject", "title", "betreff", "objet", "asunto"}
# In feedback, where text is optional, only the helpdesks' own names of a ticket's body: a "message" or "comment"
# beside a label may be the agent's note on the correction.
_FEEDBACK_BODY_NAMES = frozenset({"body", "description"})


def _has_words(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _canonical_keys(data: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """:func:`classifier.text.canonical_keys`, its refusal as a validation error of the field."""
    try:
        return canonical_keys(data, names)
    except SpelledTwice as error:
        raise PydanticCustomError("duplicate_key", "{keys} are one key in any case: give {name} once", {
            "keys": " and ".join(map(repr, error.keys)), "name": repr(error.name)}) from None


def _top_level_keys(body: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """:func:`_canonical_keys` for a request body, told apart before validation: its error as a validation error."""
    try:
        return _canonical_keys(body, names)
    except PydanticCustomError as error:
        raise ValidationError.from_exception_data("request", [{"type": error, "loc": ("body",), "input": body}]
                                                  ) from None


def _misspelt(key: str, names: Sequence[str]) -> bool:
    """Whether ``key`` reads like a typo of one of ``names`` ("bdy" for "body", "subjct" for "subject"; not
    "object" or "raw_subject", which other exports use for other things)."""
    return bool(difflib.get_close_matches(key.lower(), [name.lower() for name in names], n=1, cutoff=0.85))


def _unread_body_keys(data: dict[str, Any], read: Collection[str], names: Collection[str]) -> list[str]:
    """Keys of ``data`` among ``names`` (names of a ticket's body), holding words, other than ``read``."""
    return [key for key, value in data.items()
            if _has_words(value) and key.lower() in names and key.lower() not in read]


@dataclass(frozen=True)
class Schemas:
    """The request validator and the models the OpenAPI document is built from, for one bundle."""

    request: TypeAdapter[Any]
    ticket: type[TicketBase]
    single: type[BaseModel]
    batch: type[BaseModel]
    zendesk: type[BaseModel]  # the webhook as a request: ZendeskWebhook and top_k
    fields: tuple[str, ...]
    max_batch: int = 256  # tickets (or feedback items) per request

    def parse(self, body: Any) -> BaseModel:
        """Validate a request body. Its keys are read in any case ("Tickets", "Subject"), as ticket fields
        are everywhere, so the shape is told and validated on the models' own spelling."""
        text_keys = self.ticket.text_keys()
        body = _helpdesk_shapes(body, text_keys, ("body",))  # the first location part is a shape's tag
        if isinstance(body, dict):
            body = _top_level_keys(body, ("tickets", "ticket", "top_k", "id", *text_keys))
            if isinstance(body.get("tickets"), list):
                body = {**body, "tickets": [_helpdesk_shapes(item, text_keys, ("body", "tickets", index))
                                            for index, item in enumerate(body["tickets"])]}
        return self.request.validate_python(body)

    def tickets(self, parsed: BaseModel) -> list[tuple[str | int | None, ModelInput]]:
        """The (id, model input) pairs of a validated request, in request order."""
        items = parsed.tickets if isinstance(parsed, self.batch) else [parsed]  # type: ignore[attr-defined]
        return [self._ticket(item) for item in items]

    def _ticket(self, item: Any) -> tuple[str | int | None, ModelInput]:
        if isinstance(item, ZendeskWebhook):
            return item.ticket_id, zendesk_record(item.ticket, self.fields)
        return item.id, item.model_input()


def build_schemas(fields: tuple[str, ...], label_count: int, max_batch: int) -> Schemas:
    """Request models for a bundle reading ``fields``, with ``label_count`` labels."""
    top_k: Any = (Annotated[StrictInt, Field(ge=1, le=label_count, description="How many labels to return.")],
                  DEFAULT_TOP_K)
    extra_fields = {name: (StrictStr | None, Field(None, description=f"The ticket's {name}."))
                    for name in fields if name != "text"}
    ticket = create_model("Ticket", __base__=TicketBase, **extra_fields)  # type: ignore[call-overload]
    ticket.text_fields = fields
    single = create_model("SingleTicketRequest", __base__=ticket, top_k=top_k)
    def batch_item_shape(item: Any) -> str | None:
        return _batch_item_shape(ticket.text_keys(), item)

    # A batch item is a ticket or a webhook's {"ticket": {...}}, read as that webhook alone would be.
    item: Any = Annotated[
        Union[Annotated[ticket, Tag(ITEM_TAGS[0])], Annotated[ZendeskWebhook, Tag(ITEM_TAGS[1])]],  # noqa: UP007
        Discriminator(batch_item_shape, custom_error_type="invalid_shape",
                      custom_error_message="a batch item is one ticket or a webhook's {'ticket': {...}}, not both")]
    tickets: Any = (Annotated[list[item], Field(min_length=1, max_length=max_batch,
                                           description=f"1 to {max_batch} tickets.")], ...)
    batch = create_model("BatchRequest", __config__=ConfigDict(extra="ignore"), tickets=tickets, top_k=top_k)
    zendesk = create_model("ZendeskWebhookRequest", __base__=ZendeskWebhook, top_k=top_k)
    def request_shape(body: Any) -> str | None:  # pydantic needs a named function, not a partial
        return _request_shape(fields, body)

    shapes: Any = Annotated[  # a type built at run time: Any to mypy, as are the models above
        Union[Annotated[single, Tag("single")], Annotated[batch, Tag("batch")],  # noqa: UP007
              Annotated[zendesk, Tag("zendesk")]],
        Discriminator(request_shape, custom_error_type="invalid_shape",
                      custom_error_message="the body must be a JSON object of exactly one shape: one ticket, "
                                           "{'tickets': [...]} or {'ticket': {...}}"),
    ]
    request: TypeAdapter[Any] = TypeAdapter(shapes)
    return Schemas(request, ticket, single, batch, zendesk, fields, max_batch)


def describe(error: ValidationError, tagged: bool = True) -> str:
    """One line naming each bad field, e.g. ``tickets[2].subject: Input should be a valid string``. ``tagged``:
    the error comes from a union of request shapes, whose tag starts each location (and is left out)."""
    messages = []
    for item in error.errors(include_url=False):
        location = _location([part for part in (item["loc"][1:] if tagged else item["loc"]) if part not in ITEM_TAGS])
        messages.append(f"{location}: {item['msg']}" if location else item["msg"])
    return "; ".join(dict.fromkeys(messages))


def _location(parts: Sequence[str | int]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


# ------------------------------------------------------------------ feedback (agents' labels)

# Bounds of the store's columns, so that a value too long is refused naming its field, not cut.
FeedbackLabel = Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_LABEL)]
FeedbackTicketId = Annotated[
    Annotated[StrictStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID)] | _IntegerId,
    Field(description="Your ticket's id (the helpdesk's).", examples=["12345"]),
    _single_error(f"Input should be a string of 1 to {MAX_ID} characters or a 64-bit integer"),
    AfterValidator(_filled_in),
]
FeedbackText = Annotated[StrictStr, Field(max_length=MAX_CELL_CHARS)]
_Version = Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_VERSION)]
_EventId = Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_ID)]


def _update_time(value: datetime) -> datetime:
    """A ticket's update time, in UTC (a naive one is taken as UTC), within the years a database stores."""
    try:
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("the time is out of range") from None
    if not 1970 <= value.year <= 9998:
        raise ValueError("a time between the years 1970 and 9998")
    return value


UpdateTime = Annotated[datetime, AfterValidator(_update_time)]


class FeedbackBase(BaseModel):
    """One ticket's label as an agent set it; the bundle's text fields are added per app."""

    model_config = ConfigDict(extra="ignore")
    text_fields: ClassVar[tuple[str, ...]] = ("text",)

    ticket_id: FeedbackTicketId = Field(validation_alias=AliasChoices("ticket_id", "id"),
                                        description="Your ticket's id (the helpdesk's); 'id' is read as it too.")
    label: FeedbackLabel = Field(description="The label (queue) the agent set.", examples=["billing"])
    new_label: StrictBool = Field(False, description="The label is not one of the model's yet: accept it, to "
                                  "teach a new queue at the next retraining.")
    text: FeedbackText | None = Field(None, description="The whole ticket as one text (or the model's fields).")
    predicted_label: FeedbackLabel | None = Field(None, description="The label the model predicted.")
    model_version: _Version | None = Field(None, description="The version that predicted it (the response's "
                                           "model.version).")
    confidence: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False, strict=True)] | None = None
    needs_review: StrictBool | None = Field(None, description="The prediction's needs_review.")
    event_id: _EventId | None = Field(None, description="Your id for this event: a retry with the same id is "
                                      "stored once.")
    updated_at: UpdateTime | None = Field(None, description="When the ticket was updated (ISO 8601): orders "
                                        "corrections, and a retry of the same update is stored once.")

    @model_validator(mode="before")
    @classmethod
    def _keys_in_any_case(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = _canonical_keys(data, ("ticket_id", "id", *cls.model_fields, *cls.text_fields))
            if data.get("id") is not None and data.get("ticket_id") is not None and data["id"] != data["ticket_id"]:
                raise PydanticCustomError("ambiguous_id", "give the ticket's id once, as 'ticket_id' ('id' is read "
                                          "as it too): got both, and they differ")
            _refuse_text_under_another_name(cls, data, _FEEDBACK_BODY_NAMES)
        return data

    def text_record(self) -> dict[str, str] | None:
        """The ticket's text as sent, by field (the bundle's fields, or 'text'); None when none was sent."""
        record: dict[str, str] = {}
        for name in ("text", *self.text_fields):
            value = getattr(self, name, None)
            if isinstance(value, str) and _has_words(value):
                record[name] = value
        return record or None


def text_fields_of(fields: Sequence[str]) -> tuple[str, ...]:
    """The fields the model reads, as feedback names them ('text' is the whole ticket)."""
    return tuple(name for name in fields if name != "text")


@dataclass(frozen=True)
class FeedbackSchemas:
    request: TypeAdapter[Any]
    item: type[FeedbackBase]
    batch: type[BaseModel]

    def items(self, body: Any) -> list[FeedbackBase]:
        """The validated feedback of a request body, in order."""
        if isinstance(body, dict):
            body = _top_level_keys(body, ("feedback",))
        parsed = self.request.validate_python(body)
        return list(parsed.feedback) if isinstance(parsed, self.batch) else [parsed]  # type: ignore[attr-defined]


@lru_cache(maxsize=16)
def build_feedback_schemas(fields: tuple[str, ...], max_batch: int) -> FeedbackSchemas:
    """Feedback request models for a bundle reading ``fields``: one object, or ``{"feedback": [...]}``."""
    extra = {name: (FeedbackText | None, Field(None, description=f"The ticket's {name}."))
             for name in text_fields_of(fields)}
    item = create_model("Feedback", __base__=FeedbackBase, **extra)  # type: ignore[call-overload]
    item.text_fields = text_fields_of(fields)
    items: Any = (Annotated[list[item], Field(min_length=1, max_length=max_batch,  # type: ignore[valid-type]
                                          description=f"1 to {max_batch} tickets' labels.")], ...)
    batch = create_model("FeedbackBatch", __config__=ConfigDict(extra="ignore"), feedback=items)

    def shape(body: Any) -> str:
        return "batch" if isinstance(body, dict) and body.get("feedback") is not None else "single"

    shapes: Any = Annotated[  # a type built at run time, as in build_schemas
        Union[Annotated[item, Tag("single")], Annotated[batch, Tag("batch")]],  # noqa: UP007
        Discriminator(shape)]
    return FeedbackSchemas(TypeAdapter(shapes), item, batch)


class HelpdeskTicket(ZendeskTicket):
    """A ticket-updated webhook's ticket (Zendesk, Freshdesk): its id, optionally its text and update time; the
    category field (named by the service's settings) is read from the other keys."""

    model_config = ConfigDict(extra="allow")

    id: FeedbackTicketId  # what feedback is stored under: a blank id would mix unrelated tickets
    updated_at: UpdateTime | None = Field(None, description="When the ticket was updated (ISO 8601).")

    @model_validator(mode="after")
    def _has_text(self) -> HelpdeskTicket:  # replaces ZendeskTicket's: feedback may come without text
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        return handler.resolve_ref_schema(handler(core_schema))  # no text required, unlike ZendeskTicket


class HelpdeskWebhook(BaseModel):
    model_config = ConfigDict(extra="allow")

    ticket: HelpdeskTicket
    event_id: _EventId | None = None


class JiraFields(BaseModel):
    model_config = ConfigDict(extra="allow")

    summary: StrictStr | None = None
    description: StrictStr | dict[str, Any] | None = Field(None, description="Text, or an Atlassian document.")
    updated: UpdateTime | None = None


class JiraIssue(BaseModel):
    model_config = ConfigDict(extra="allow")

    key: Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_ID), AfterValidator(_filled_in)] = Field(
        examples=["SD-12"])
    fields: JiraFields


class JiraWebhook(BaseModel):
    """Jira Service Management's issue payload: ``{"issue": {...}}`` (a webhook, or automation's "Send web request"
    with the issue in Jira format); automation's own format (the issue's keys at the top) is read as the issue."""

    model_config = ConfigDict(extra="allow")

    issue: JiraIssue
    event_id: _EventId | None = None


class FeedbackResult(BaseModel):
    ticket_id: str
    status: Status = Field(description="stored; duplicate (a retry of an event already stored); unchanged (the "
                           "ticket already has this label)", examples=["stored"])


class FeedbackResponse(BaseModel):
    stored: int = Field(description="Labels stored.")
    duplicates: int = Field(description="Retries of events already stored: not counted again.")
    unchanged: int = Field(description="Labels the tickets already had: not counted again.")
    results: list[FeedbackResult] = Field(description="One per ticket, in request order.")
