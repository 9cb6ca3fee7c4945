"""Prometheus metrics.

Under gunicorn each worker is a process: ``service/gunicorn_conf.py`` sets
``PROMETHEUS_MULTIPROC_DIR`` before this module is first imported, so every worker
writes its samples there and ``/metrics`` adds them up (prometheus-client's
multiprocess mode). Without it (dev server, tests) the default registry is used.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from classifier.predict import Prediction

if TYPE_CHECKING:
    from classifier.feedback import Outcome as FeedbackOutcome

REQUESTS = Counter("ticketclf_http_requests_total", "HTTP requests by route, method and status.",
                   ["route", "method", "status"])
LATENCY = Histogram("ticketclf_http_request_duration_seconds", "Time to answer a request, by route.",
                    ["route"], buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                                        0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
PREDICTIONS = Counter("ticketclf_predictions_total", "Tickets classified, by predicted label.", ["label"])
NEEDS_REVIEW = Counter("ticketclf_needs_review_total", "Predictions that need review, by reason: out_of_scope "
                       "(unlike every known queue) or low_confidence (below the label's threshold).", ["reason"])
# A bundle predicting more than its label (manifest.fields): its other fields' labels and the tags given. The
# label values are the manifest's field names, labels and tags, never text from a request: bounded.
FIELD_PREDICTIONS = Counter("ticketclf_field_predictions_total", "Tickets classified, by field besides the label "
                            "(e.g. priority) and that field's predicted label.", ["field", "label"])
FIELD_NEEDS_REVIEW = Counter("ticketclf_field_needs_review_total", "Fields besides the label whose prediction "
                             "needs review (below that field's threshold, or the ticket out of scope), by field.",
                             ["field"])
TAGS = Counter("ticketclf_tags_total", "Tags given to tickets (score at or above the tag's threshold), by tag.",
               ["tag"])
TRUNCATED = Counter("ticketclf_truncated_total", "Tickets longer than the model window (only the start was read).")
# An info metric as a gauge: prometheus-client's Info type has no multiprocess mode.
MODEL_INFO = Gauge("ticketclf_model_info", "The model served (1), and the ones served before a swap (0).",
                   ["name", "version", "engine"], multiprocess_mode="livemax")
MODEL_SWAPS = Counter("ticketclf_model_swaps_total", "New models tried while serving: accepted, or refused "
                      "(the model before kept serving).", ["outcome"])
SWAP_FAILED = Gauge("ticketclf_model_swap_failed", "1 while the last new model a worker tried was refused.",
                    multiprocess_mode="livemax")
# Online accuracy, from agents' feedback (POST /feedback and the helpdesk webhooks), counted once stored:
# agreement over a window is sum(rate(..{outcome="agreed"}[1h])) / sum(rate(..{outcome=~"agreed|corrected"}[1h])).
# "unknown": no prediction is known for the ticket (neither sent nor stored before).
FEEDBACK = Counter("ticketclf_feedback_total", "Agents' labels stored, by the model version that predicted the "
                   "ticket and whether the agent kept its label (agreed), changed it (corrected) or no prediction "
                   "is known (unknown).", ["model_version", "outcome"])
FEEDBACK_LABELS = Counter("ticketclf_feedback_labels_total", "Agents' labels stored, by the agent's label and "
                          "outcome (per-label recall of the model).", ["label", "outcome"])
FEEDBACK_PREDICTED = Counter("ticketclf_feedback_predicted_total", "Agents' labels stored, by the predicted label "
                             "and outcome (per-label precision of the model).", ["predicted", "outcome"])
FEEDBACK_REVIEW = Counter("ticketclf_feedback_review_total", "Agents' labels stored for predictions that said "
                          "whether they needed review, by needs_review and outcome.", ["needs_review", "outcome"])
FEEDBACK_NEW_LABELS = Counter("ticketclf_feedback_new_labels_total", "Agents' labels stored that the serving "
                              "model does not have (a new queue being taught).")
FEEDBACK_SKIPPED = Counter("ticketclf_feedback_skipped_total", "Feedback not stored again: a retry of an event "
                           "already stored (duplicate), or the ticket's current label (unchanged).", ["reason"])
FEEDBACK_STORE_ERRORS = Counter("ticketclf_feedback_store_errors_total", "Feedback requests the database could not "
                                "take (answered 503, nothing stored).")


def record_request(route: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    LATENCY.labels(route).observe(seconds)


def record_predictions(predictions: Sequence[Prediction]) -> None:
    for label, count in Tally(p.label for p in predictions).items():  # one locked write per label
        PREDICTIONS.labels(label).inc(count)
    for reason, count in Tally(p.review_reason for p in predictions if p.review_reason).items():
        NEEDS_REVIEW.labels(reason).inc(count)
    TRUNCATED.inc(sum(p.truncated for p in predictions))
    fields = Tally((name, field["label"]) for p in predictions for name, field in (p.fields or {}).items())
    for (name, label), count in fields.items():
        FIELD_PREDICTIONS.labels(name, label).inc(count)
    review = Tally(name for p in predictions for name, field in (p.fields or {}).items() if field["needs_review"])
    for name, count in review.items():
        FIELD_NEEDS_REVIEW.labels(name).inc(count)
    for tag, count in Tally(given["tag"] for p in predictions for given in p.tags or ()).items():
        TAGS.labels(tag).inc(count)


# The model versions this worker has served: feedback names the version that predicted a ticket, and a
# version it never served counts as "(not served here)" (a request's text must not make new series).
_SERVED_VERSIONS: set[str] = set()


def record_model(name: str, version: str, engine: str) -> None:
    MODEL_INFO.labels(name, version, engine).set(1)
    _SERVED_VERSIONS.add(version)


def record_swap(ok: bool, served: tuple[str, str, str] | None = None,
                replaced: tuple[str, str, str] | None = None) -> None:
    """A new model tried while serving: accepted (``served`` replaces ``replaced``) or refused."""
    MODEL_SWAPS.labels("accepted" if ok else "refused").inc()
    SWAP_FAILED.set(0 if ok else 1)
    if replaced and served and replaced != served:
        MODEL_INFO.labels(*replaced).set(0)
    if served:
        record_model(*served)


def record_feedback(outcomes: Sequence[FeedbackOutcome], labels: Sequence[str]) -> None:
    """Count stored feedback once its transaction has committed (duplicates and unchanged labels apart). Metric
    labels come from the served model (``labels``, the versions served), never from the request alone: a
    predicted label the model does not have counts as "(not a model label)", a new queue's label as
    "(new label)": in parentheses, so as not to be taken for a queue named Other."""
    known = set(labels)
    for outcome in outcomes:
        if outcome.status != "stored":
            FEEDBACK_SKIPPED.labels(outcome.status).inc()
            continue
        agreed = outcome.agreed
        result = "unknown" if agreed is None else "agreed" if agreed else "corrected"
        version = outcome.model_version
        served = version in _SERVED_VERSIONS
        FEEDBACK.labels("unknown" if version is None else version if served else "(not served here)", result).inc()
        FEEDBACK_LABELS.labels("(new label)" if outcome.new_label else outcome.label, result).inc()
        if outcome.predicted_label is not None:
            predicted = outcome.predicted_label
            FEEDBACK_PREDICTED.labels(predicted if predicted in known else "(not a model label)", result).inc()
            if outcome.needs_review is not None:
                FEEDBACK_REVIEW.labels(str(outcome.needs_review).lower(), result).inc()
        if outcome.new_label:
            FEEDBACK_NEW_LABELS.inc()


def record_feedback_store_error() -> None:
    FEEDBACK_STORE_ERRORS.inc()


def render() -> tuple[bytes, str]:
    """The exposition text and its content type, across all workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def record_swap_settled() -> None:
    """What the source names serves again (a rollback after a refused version): no swap failure to show."""
    SWAP_FAILED.set(0)
