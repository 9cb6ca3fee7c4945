"""The HTTP service: ``create_app(config)`` builds a Flask app serving one model bundle.

Configuration, lowest precedence first: :data:`DEFAULTS`, the environment variables
in :data:`ENVIRONMENT`, then the ``config`` mapping. Only the inference side of the
classifier is imported (onnxruntime, tokenizers, scipy's BLAS; no torch).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from classifier.errors import UserError
from classifier.options import ENGINES
from service.auth import parse_keys

DEFAULTS: dict[str, Any] = {
    "BUNDLE": None,  # the model bundle directory
    "ENGINE": "auto",  # auto | int8 | fp32 | torch (see Predictor.load)
    "THREADS": None,  # onnxruntime threads per model; None: $TICKETCLF_THREADS or all CPUs
    "API_KEYS": (),  # empty: no authentication; a list or a comma-separated string
    "MAX_BATCH": 256,  # tickets per request
    "MAX_CONTENT_LENGTH": 1024 * 1024,  # bytes per request body (Flask's own setting: 413 past it)
    "LOG_TEXT": False,  # put ticket text into the access log (off: logs carry no ticket content)
    "ACCESS_LOG": True,  # one JSON line per request on stdout
    "RELOAD_INTERVAL": 2.0,  # seconds between looks for a new model (a promotion, a changed bundle); 0: SIGHUP only
    # Feedback (POST /feedback, docs/feedback.md): a database URL or SQLite file; None: REPO/NAME/feedback.sqlite
    # for a model in a repository, BUNDLE.feedback.sqlite beside a bundle; "off": no feedback stored (404).
    "FEEDBACK_DB": None,
    "FEEDBACK_STORE_TEXT": True,  # keep the ticket text sent with feedback (off: labels only)
    "FEEDBACK_NEW_LABELS": False,  # accept labels the model does not have without "new_label": true
    # The webhook ticket's key (or custom field id) holding the label; a Jira issue's fields' key, e.g.
    # customfield_10050. None: the column the served model was trained on, as the helpdesk names it.
    "FEEDBACK_ZENDESK_FIELD": None,
    "FEEDBACK_FRESHDESK_FIELD": None,
    "FEEDBACK_JIRA_FIELD": None,
}


def _whole(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"expected a whole number, got {value!r}") from None


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {value!r}") from None


def _flag(value: str) -> bool:
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "BUNDLE": ("TICKETCLF_BUNDLE", str),
    "ENGINE": ("TICKETCLF_ENGINE", str),
    "API_KEYS": ("TICKETCLF_API_KEYS", str),
    "MAX_BATCH": ("TICKETCLF_MAX_BATCH", _whole),
    "MAX_CONTENT_LENGTH": ("TICKETCLF_MAX_BODY_BYTES", _whole),
    "LOG_TEXT": ("TICKETCLF_LOG_TEXT", _flag),
    "ACCESS_LOG": ("TICKETCLF_ACCESS_LOG", _flag),
    "RELOAD_INTERVAL": ("TICKETCLF_RELOAD_INTERVAL", _seconds),
    "FEEDBACK_DB": ("TICKETCLF_FEEDBACK_DB", str),
    "FEEDBACK_STORE_TEXT": ("TICKETCLF_FEEDBACK_STORE_TEXT", _flag),
    "FEEDBACK_NEW_LABELS": ("TICKETCLF_FEEDBACK_NEW_LABELS", _flag),
    "FEEDBACK_ZENDESK_FIELD": ("TICKETCLF_FEEDBACK_ZENDESK_FIELD", str),
    "FEEDBACK_FRESHDESK_FIELD": ("TICKETCLF_FEEDBACK_FRESHDESK_FIELD", str),
    "FEEDBACK_JIRA_FIELD": ("TICKETCLF_FEEDBACK_JIRA_FIELD", str),
}


# Read outside settings(): by gunicorn's configuration, the predictor, the server, deploy/compose.yaml (the
# bundle it mounts) and the tests.
OTHER_VARIABLES = frozenset({"TICKETCLF_THREADS", "TICKETCLF_WORKERS", "TICKETCLF_LOG_LEVEL", "TICKETCLF_STATE_DIR",
                             "TICKETCLF_MODEL", "TICKETCLF_REQUIRE_SERVERS"})


def unknown_variables(environ: Mapping[str, str] = os.environ) -> list[str]:
    """A line for each TICKETCLF_ variable nothing reads (a typo would otherwise change nothing, silently),
    naming the known one it most likely meant."""
    prefix = "TICKETCLF_"
    known = {variable for variable, _ in ENVIRONMENT.values()} | OTHER_VARIABLES
    lines = []
    for name in sorted(environ):
        if name.startswith(prefix) and name not in known:
            # Compared without the prefix all share: with it, any two names look alike.
            close = difflib.get_close_matches(name.removeprefix(prefix), sorted(k.removeprefix(prefix) for k in known),
                                              n=1, cutoff=0.75)
            lines.append(f"{name} is not a setting{f' (did you mean {prefix}{close[0]}?)' if close else ''}: ignored")
    return lines


def settings(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, overridden by the environment, overridden by ``config``."""
    merged = dict(DEFAULTS)
    for key, (variable, parse) in ENVIRONMENT.items():
        if variable in os.environ:
            try:
                merged[key] = parse(os.environ[variable])
            except ValueError as error:
                raise UserError(f"{variable}: {error}") from None
    merged.update(config or {})
    if not merged["BUNDLE"]:
        raise UserError("no model bundle: give one to 'ticketclf serve' or set TICKETCLF_BUNDLE")
    if merged["ENGINE"] not in ENGINES:
        raise UserError(f"ENGINE (TICKETCLF_ENGINE): unknown engine {merged['ENGINE']!r}; "
                        f"choose one of {', '.join(ENGINES)}")
    keys = merged["API_KEYS"]
    given = keys.strip() if isinstance(keys, str) else keys
    if given and not parse_keys(keys):  # " , " or ["", " "] would silently mean "no authentication"
        raise UserError(f"API_KEYS (TICKETCLF_API_KEYS): no key in {keys!r}; give comma-separated keys, or "
                        "leave it empty to turn authentication off")
    if not 0 <= merged["RELOAD_INTERVAL"] < float("inf"):
        raise UserError("RELOAD_INTERVAL (TICKETCLF_RELOAD_INTERVAL): seconds, 0 or more, got "
                        f"{merged['RELOAD_INTERVAL']}")
    for key in ("MAX_BATCH", "MAX_CONTENT_LENGTH"):  # a MAX_CONTENT_LENGTH of None is Flask's "no limit"
        if merged[key] is not None and merged[key] < 1:
            raise UserError(f"{key} ({ENVIRONMENT[key][0]}): must be at least 1, got {merged[key]}")
    return merged


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Load and warm up the model (a bundle, or a repository's champion), then build the app around it."""
    # Imported here, not at module level: gunicorn's config file switches prometheus-client
    # to multiprocess mode, which only works before that library is first imported.
    from service import api, auth, errors, feedback, observe, ops
    from service.context import EXTENSION, Context
    from service.model import STATE_DIR_VARIABLE, ServedModel, load_model, model_source
    from service.openapi import build_document
    from service.schemas import ModelInfo, Schemas, build_schemas

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers give the parallelism; fork-safe
    app = Flask(__name__)
    app.config.from_mapping(settings(config))
    app.config["API_KEYS"] = auth.parse_keys(app.config["API_KEYS"])

    def describe(predictor: Any, info: ModelInfo) -> tuple[Schemas, dict[str, Any]]:
        schemas = build_schemas(predictor.text_options.record_fields, len(predictor.labels), app.config["MAX_BATCH"])
        return schemas, build_document(schemas, title=f"Ticket classifier: {info.name}", version=info.version,
                                       max_body=app.config["MAX_CONTENT_LENGTH"], auth=bool(app.config["API_KEYS"]))

    state_dir = os.environ.get(STATE_DIR_VARIABLE)
    served = ServedModel(model_source(app.config["BUNDLE"]),
                         lambda candidate: load_model(candidate, app.config["ENGINE"], app.config["THREADS"], describe),
                         interval=app.config["RELOAD_INTERVAL"], state_dir=Path(state_dir) if state_dir else None)
    app.extensions[EXTENSION] = Context(served)

    errors.register(app)
    observe.install(app)  # before auth: refused requests are logged and counted too
    app.before_request(auth.require_api_key)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    feedback.install(app)  # opens the feedback database (classification goes on without it)
    return app
