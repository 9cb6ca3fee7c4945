"""Fields a bundle predicts besides its category: more single-label columns (priority, queue) and one
multi-label tags column. No torch here: reading tag cells, choosing tag thresholds, scoring fields.

The category stays the bundle's main field (``manifest.labels``); each other field gets a head of its own
on the encoder's first-token state (:mod:`classifier.heads`), listed in ``manifest.fields``. A cell with
no value leaves that field out of the ticket's loss and metrics, not the ticket out of training.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from classifier.errors import UserError, where
from classifier.numerics import macro_f1

FieldKind = Literal["single", "tags"]
# Delimiters a tags cell of a CSV export may use, in the order they are tried; a JSON list needs none.
TAG_DELIMITERS = ("|", ";", ",")
MISSING = -100  # a single-label field's id where the ticket has no value (cross-entropy's ignore_index)
DEFAULT_TAG_THRESHOLD = 0.5  # where validation has too few positives of any tag to choose on
# A tag gets a threshold of its own from this many validation positives; the rarer tags share one threshold,
# chosen on all their scores together. Chosen per tag on a few positives, thresholds fell to 0.01 and gave a
# tag to most tickets: on the sample's test tickets, 50 or 96 of them drawn 300 times as validation, one shared
# threshold scored micro-F1 0.727 and 0.728 against 0.609 and 0.644 per tag (docs/benchmarks.md, "Fields").
MIN_TAG_POSITIVES = 30
MIN_SHARED_POSITIVES = 5  # fewer positives of all the rarer tags together: they keep DEFAULT_TAG_THRESHOLD


@dataclass(frozen=True)
class FieldSpec:
    """One field a model learns besides the main label: its column, kind and labels (tags for ``tags``)."""

    name: str  # the column, as the file spells it
    kind: FieldKind
    labels: tuple[str, ...]
    loss_weight: float = 1.0

    @property
    def output(self) -> str:
        """The ONNX output holding the field's logits (column names may hold anything: not used in it)."""
        return f"logits_{self.kind}_{_slug(self.name)}"


def _slug(name: str) -> str:
    return "".join(char if char.isalnum() else "_" for char in name.lower())


# ---------------------------------------------------------------- tags cells


def parse_tags(values: Sequence[Any], path: object, rows: Sequence[int], column: str,
               delimiter: str | None = None) -> tuple[list[list[str] | None], str | None]:
    """Each cell's tags (None: no value, the field is unknown for that ticket) and the delimiter used.

    A cell is a JSON list (``["refund", "vip"]``, from a JSON export or written so in a CSV) or a string of
    tags joined by ``delimiter``; None detects it: the one of :data:`TAG_DELIMITERS` found in most cells
    (none found: each cell is one tag). An empty string or list is a ticket with no tags. Tags are stripped,
    and each is counted once per ticket.
    """
    if delimiter == "":
        raise UserError("--tags-delimiter: give a character that separates the tags (e.g. '|' or ',')")
    strings = [value for value in values if isinstance(value, str) and not value.lstrip().startswith("[")]
    if delimiter is None:
        delimiter = detect_delimiter(strings)
    else:
        _check_delimiter_used(delimiter, strings, path, column)
    return [_cell_tags(value, path, row, column, delimiter) for value, row in zip(values, rows)], delimiter


def detect_delimiter(cells: Sequence[str]) -> str | None:
    """The :data:`TAG_DELIMITERS` entry most cells contain (ties: the earlier), or None if none has any."""
    counts = {delimiter: sum(delimiter in cell for cell in cells) for delimiter in TAG_DELIMITERS}
    best = max(TAG_DELIMITERS, key=lambda delimiter: counts[delimiter])
    return best if counts[best] else None


def _check_delimiter_used(delimiter: str, cells: Sequence[str], path: object, column: str) -> None:
    """Refuse a delimiter no cell holds while another is common: each cell would be read as one long tag."""
    if any(delimiter in cell for cell in cells):
        return
    found = detect_delimiter(cells)
    if found is not None:
        count = sum(found in cell for cell in cells)
        raise UserError(f"{path}: the tags delimiter {delimiter!r} is in none of the {column!r} cells, while {count} "
                        f"of them hold {found!r}; to train on them, give --tags-delimiter {found!r}, or leave it out "
                        "to detect it")


def _cell_tags(value: Any, path: object, row: int, column: str, delimiter: str | None) -> list[str] | None:
    if value is None or (isinstance(value, float) and value != value):  # JSON null, pandas NaN
        return None
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise UserError(f"{where(path, row, column)}: starts like a JSON list of tags but is not one "
                            f"({error.msg} at character {error.pos}); write it as [\"a\", \"b\"] or as "
                            "delimited text") from None
    if isinstance(value, list):
        if not all(isinstance(tag, (str, int, float)) and not isinstance(tag, bool) for tag in value):
            raise UserError(f"{where(path, row, column)}: a list of tags must hold text only, got {value!r:.80}")
        tags = [str(tag).strip() for tag in value]
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        # A tag holds no line break: a cell's lines are tags apart (a spreadsheet cell's, or Jira's repeated
        # "Labels" columns joined), each split on the delimiter.
        lines = str(value).splitlines()
        tags = [tag for line in lines for tag in (line.split(delimiter) if delimiter else [line])]
    else:
        kind = "object" if isinstance(value, dict) else type(value).__name__
        raise UserError(f"{where(path, row, column)}: holds a JSON {kind}; tags are a list of text or a "
                        "delimited string")
    return list(dict.fromkeys(tag.strip() for tag in tags if tag.strip()))


# ---------------------------------------------------------------- encoding


def single_ids(values: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Each value's index in ``labels``; :data:`MISSING` for an empty or unknown one."""
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index.get(value, MISSING) for value in values], dtype=np.int64)


def tag_matrix(rows: Sequence[list[str] | None], tags: Sequence[str]) -> np.ndarray:
    """A (tickets, tags) 0/1 float matrix; a ticket with unknown tags (None) is a row of -1 (masked)."""
    index = {tag: i for i, tag in enumerate(tags)}
    matrix = np.zeros((len(rows), len(tags)), dtype=np.float32)
    for i, row in enumerate(rows):
        if row is None:
            matrix[i] = -1
            continue
        for tag in row:
            if tag in index:
                matrix[i, index[tag]] = 1
    return matrix


def counted_classes(values: Sequence[str]) -> Counter[str]:
    return Counter(value for value in values if value)


def counted_tags(rows: Sequence[list[str] | None]) -> Counter[str]:
    return Counter(tag for row in rows if row is not None for tag in row)


# ---------------------------------------------------------------- thresholds and scores


def choose_tag_thresholds(scores: np.ndarray, truth: np.ndarray) -> list[float]:
    """Per tag, the score threshold with the best F1 on ``truth`` (rows of -1 ignored) for a tag with at least
    :data:`MIN_TAG_POSITIVES` positive tickets; for the other tags, the threshold with the best F1 over all
    their scores pooled (micro-F1), or :data:`DEFAULT_TAG_THRESHOLD` where even pooled they have fewer than
    :data:`MIN_SHARED_POSITIVES` positives."""
    known = truth[:, 0] >= 0 if truth.size else np.zeros(0, dtype=bool)
    scores, truth = scores[known], truth[known]
    frequent = truth.sum(axis=0) >= MIN_TAG_POSITIVES
    shared = best_f1_threshold(scores[:, ~frequent].ravel(), truth[:, ~frequent].ravel())
    return [best_f1_threshold(scores[:, j], truth[:, j]) if frequent[j] else shared for j in range(truth.shape[1])]


def best_f1_threshold(scores: np.ndarray, truth: np.ndarray, min_positives: int = MIN_SHARED_POSITIVES) -> float:
    """The threshold halfway between the lowest score kept for the best F1 and the next one below, so that
    rounding cannot flip the ticket that set it; :data:`DEFAULT_TAG_THRESHOLD` under ``min_positives``."""
    positives = int(truth.sum())
    if positives < max(min_positives, 1):
        return DEFAULT_TAG_THRESHOLD
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(truth[order])
    kept = np.arange(1, len(ranked) + 1)
    f1 = 2 * hits / (kept + positives)
    # Only where the next score is lower can the threshold fall between them.
    distinct = np.append(ranked[1:] < ranked[:-1], True)
    best = int(np.argmax(np.where(distinct, f1, -1)))
    below = ranked[best + 1] if best + 1 < len(ranked) else 0.0
    return float((ranked[best] + below) / 2)


def tag_metrics(predicted: np.ndarray, truth: np.ndarray, tags: Sequence[str]) -> dict[str, Any]:
    """Micro and macro F1 and precision, recall, subset accuracy and per-tag precision/recall/support of 0/1
    ``predicted`` tags against ``truth`` (rows of -1: unknown tags, left out). Counted here, where sklearn would
    read a single tag's column as a binary target and give its accuracy as the micro-F1; undefined shares are 0,
    as sklearn's ``zero_division=0`` gives them."""
    return metrics_of_tag_counts(tag_outcomes(predicted, truth)[1], tags)


def metrics_of_tag_counts(counts: np.ndarray, tags: Sequence[str]) -> dict[str, Any]:
    """:func:`tag_metrics` from the counts :func:`tag_outcomes` gives."""
    if not len(counts):
        return {"tickets": 0}
    hits, wrong, missed = counts.sum(axis=0).T  # per tag
    f1 = f1_of(hits, wrong, missed)
    return {
        "tickets": int(len(counts)),
        "micro_f1": float(f1_of(hits.sum(), wrong.sum(), missed.sum())),
        "macro_f1": float(f1.mean()),
        "micro_precision": _share(hits.sum(), hits.sum() + wrong.sum()),
        "micro_recall": _share(hits.sum(), hits.sum() + missed.sum()),
        "subset_accuracy": float((counts[..., 1:].sum(axis=(1, 2)) == 0).mean()),  # no tag wrong nor missed
        "per_tag": {tag: {"precision": _share(h, h + w), "recall": _share(h, h + m), "f1": float(f),
                          "support": int(h + m)} for tag, h, w, m, f in zip(tags, hits, wrong, missed, f1)},
    }


def tag_outcomes(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which tickets' tags are known (``truth`` rows of -1 are not), and for those, per ticket and tag, (true
    positive, false positive, false negative) as 0/1: shape (tickets, tags, 3)."""
    known = truth[:, 0] >= 0 if truth.size else np.zeros(len(truth), dtype=bool)
    y_true, y_pred = truth[known].astype(int), predicted[known].astype(int)
    return known, np.stack([y_true & y_pred, (1 - y_true) & y_pred, y_true & (1 - y_pred)], axis=-1)


def f1_of(hits: Any, wrong: Any, missed: Any) -> Any:
    """F1 from true positives, false positives and false negatives (arrays or numbers); 0 where none of them."""
    found = 2 * np.asarray(hits, dtype=float)
    return np.where(found > 0, found / np.maximum(found + wrong + missed, 1), 0.0)


def _share(part: int, whole: int) -> float:
    return float(part / whole) if whole else 0.0


# A field whose model avoids less than this share of the mistakes that always answering its most common value
# makes is no guide: evaluation warns about it, and training flags every answer of such a field for review. In
# mistakes, not points: 99.5 % right where 96 % share one value avoids 88 % of them, 44 % where 42 % do, 3 %.
MIN_MISTAKES_AVOIDED = 0.25


def hardly_beats_majority(accuracy: float, most_common_share: float) -> bool:
    """Whether a field right on ``accuracy`` of its tickets does hardly better than always answering its most
    common value, which is right on ``most_common_share``."""
    return 1 - accuracy > (1 - MIN_MISTAKES_AVOIDED) * (1 - most_common_share)


def single_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 over the tickets whose value is known (truth not :data:`MISSING`)."""
    from sklearn.metrics import accuracy_score

    known = truth != MISSING
    if not known.any():
        return {"tickets": 0}
    return {"tickets": int(known.sum()), "accuracy": float(accuracy_score(truth[known], predicted[known])),
            "macro_f1": macro_f1(truth[known], predicted[known])}


def most_common_share(truth: np.ndarray) -> float:
    """The share of the tickets whose value is known that its most common value has: what always answering
    it would score (0 where none is known)."""
    known = truth[truth != MISSING]
    return float(np.bincount(known).max() / len(known)) if len(known) else 0.0


# ---------------------------------------------------------------- the heads as arrays (classifier.heads saves them)

Head = tuple[np.ndarray, np.ndarray]  # weight (labels, hidden) and bias (labels,), float32


def read_heads(data: bytes, fields: Sequence[Any], source: object) -> list[Head]:
    """The field heads from the bytes of a bundle's heads file, checked against the manifest's ``fields``
    (each with ``labels``): one head per field, as many outputs as it has labels."""
    from safetensors.numpy import load

    try:
        arrays = load(data)
    except Exception as error:  # noqa: BLE001  safetensors raises its own error types
        raise UserError(f"{source}: not a safetensors file of field heads ({str(error)[:120]}); train the "
                        "bundle again") from None
    heads = []
    for index, spec in enumerate(fields):
        weight, bias = arrays.get(f"{index}.weight"), arrays.get(f"{index}.bias")
        if weight is None or bias is None or weight.ndim != 2 or weight.shape[0] != len(spec.labels) \
                or bias.shape != (len(spec.labels),):
            raise UserError(f"{source}: no head for field {spec.name!r} with {len(spec.labels)} outputs; the "
                            "manifest and the heads file do not agree: train the bundle again")
        heads.append((weight.astype(np.float32), bias.astype(np.float32)))
    return heads


def apply_heads(features: np.ndarray, heads: Sequence[Head]) -> list[np.ndarray]:
    """Each field's logits from the first-token features, as the ONNX graph computes them."""
    return [features @ weight.T + bias for weight, bias in heads]
