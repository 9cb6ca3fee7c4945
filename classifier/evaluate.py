"""Evaluate a bundle on a labelled test file: the report a reviewer reads before deploying.

:func:`evaluate` runs the model that would be served over the test tickets and writes,
into one output directory::

    report.json              every number below, machine-readable
    report.html              one self-contained page (images embedded) for a support lead
    confusion_matrix.csv     counts, true class per row, predicted class per column
    confusion_matrix.png     normalised by true class, confused classes next to each other
    precision_coverage.png   share of tickets routed automatically vs their accuracy
    reliability.png          calibration: confidence vs accuracy
    misclassified.csv        id, text, true, predicted, confidence, routed, second_choice (most confident first)

Test tickets whose label the model does not know are counted and listed, and left out of
the metrics. With ``apply_threshold_for_precision`` the per-class confidence thresholds
reaching that precision are written into the bundle manifest, which the predictor's
``needs_review`` follows.

A bundle that predicts more fields than its label (``manifest.fields``) gets a section per field
from the same model run (:mod:`classifier.evaluate_fields`), with a confusion matrix (CSV, PNG)
and precision / coverage curves per single-label field (``field_<column>_*``).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from classifier import bundle
from classifier.baseline import BASELINE_NAME
from classifier.calibration import wilson_lower_bound
from classifier.columns import absent_columns
from classifier.data import (
    CORRECTED_LABEL_COLUMN,
    DataReport,
    Tickets,
    csv_writer,
    decimal_cell,
    ids_are,
    load_tickets,
    relabel_like_training,
    spreadsheet_safe,
    training_file_texts,
    with_text_columns,
)
from classifier.errors import UserError, first_of
from classifier.evaluate_oos import out_of_scope_section
from classifier.manifest import ALWAYS_REVIEW, Manifest, ThresholdSource
from classifier.numerics import macro_f1, row_normalise, shown_score
from classifier.predict import Predictor, resolve_engine
from classifier.report import (
    CALLED,
    HEADLINES,
    THRESHOLD,
    AppliedThresholds,
    CalibrationBin,
    ClassRow,
    ClassThreshold,
    Confusion,
    ConfusionPair,
    Difference,
    Dropped,
    Example,
    Interval,
    Metrics,
    ModelInfo,
    OperatingPoint,
    OutOfScopeSection,
    PrecisionCoverage,
    Reliability,
    Report,
    Routing,
    SideBySide,
    TestFileSection,
    Unavailable,
    UnknownLabel,
    UnknownLabels,
    difference_summary,
    wrong_of,
)

if TYPE_CHECKING:
    from classifier.evaluate_fields import FieldOutcomes, FieldRun

log = logging.getLogger(__name__)

ECE_BINS = 15
COVERAGE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # rows of the threshold table
# Below this many predictions of a class, its own precision estimate is noise: use the global threshold. Nor
# where a single mistake among under 1 / (1 - target) predictions (20 at 95 %), where the target allows none,
# would set the class's threshold above it (a persona's 74 test tickets gave Billing 0.999995, routing none).
MIN_PREDICTIONS_FOR_CLASS_THRESHOLD = 10
# Fewer labelled tickets than this, and --apply-threshold-for-precision refuses to write: on one ticket it set
# every class's threshold to that ticket's confidence, over the thresholds of a 96-ticket validation split.
MIN_TICKETS_TO_APPLY_THRESHOLDS = 100
# A warning when the mean confidence is this far from the accuracy on at least this many tickets. Not the
# binned calibration error, which few tickets spread over 15 bins push up by chance; the plain gap's
# standard error is at most 0.05 at 100 tickets (that of an accuracy: sqrt(p(1 - p) / n), p = 0.5).
POOR_CALIBRATION_GAP, POOR_CALIBRATION_MIN_TICKETS = 0.1, 100
TOP_CONFUSIONS = 20
EXAMPLES_PER_CONFUSION = 3
EXAMPLE_CHARS = 600  # a ticket's reason often comes after its greeting and context
REPORT_FILES = ("report.json", "report.html", "confusion_matrix.csv", "confusion_matrix.png", "precision_coverage.png",
                "reliability.png", "misclassified.csv")
OUT_OF_SCOPE_IMAGE = "out_of_scope.png"  # when the test file has out-of-scope tickets and the bundle a detector
# Resamples of the test tickets behind the interval of the gap in share routed (the accuracy gap's is exact).
BOOTSTRAP_RESAMPLES = 999
# Resamples scored at once: up to 100, fewer on big test sets, so that the few (resamples x tickets) arrays
# scoring needs stay near 2 million values each (about 100 MB in all).
BOOTSTRAP_BATCH, BOOTSTRAP_BATCH_VALUES = 100, 2_000_000


@dataclass
class EvaluationOptions:
    engine: str = "auto"  # auto|int8|fp32|torch, passed to Predictor.load
    label_column: str | None = None
    text_columns: tuple[str, ...] = ()  # the file's columns for the model's text fields; empty: the model's names
    id_column: str | None = None  # the file's id column (misclassified.csv's ids); None: a common id name
    target_precision: float = 0.95
    apply_threshold_for_precision: float | None = None  # write per-class thresholds into the bundle manifest
    compare_bundle: Path | None = None
    baseline: bool = True
    oos_label: str | None = None  # test tickets with this label are out of scope (as are labels the model lacks)


@dataclass
class Scored:
    """One model's probabilities on the test tickets whose label it knows."""

    classes: list[str]  # probability columns
    rows: np.ndarray  # indices into the test tickets
    y_true: np.ndarray
    proba: np.ndarray
    # The tickets the out-of-scope check sends to review whatever their confidence, as the service does: never
    # routed. None: no detector.
    held: np.ndarray | None = None

    @classmethod
    def of(cls, classes: Sequence[str], proba: np.ndarray, labels: Sequence[str], rows: np.ndarray | None = None,
           held: np.ndarray | None = None) -> Scored:
        """Keep the rows whose true label is one of ``classes``, or the given ``rows`` (another model's: a
        label this one lacks counts as a mistake); ``proba`` (and ``held``) cover every test ticket."""
        known = set(classes)
        if rows is None:
            rows = np.array([i for i, label in enumerate(labels) if label in known], dtype=int)
        if not rows.size:
            raise UserError(f"no test ticket has a label the model knows (model labels: "
                            f"{first_of(list(classes), 10)}); "
                            "is --label-column right?")
        return cls(list(classes), rows, np.asarray(labels, dtype=object)[rows], np.asarray(proba)[rows],
                   None if held is None else np.asarray(held, dtype=bool)[rows])

    @cached_property  # read many times per report; the scores never change
    def predicted(self) -> np.ndarray:
        return np.asarray(self.classes, dtype=object)[self.proba.argmax(axis=1)]

    @cached_property
    def confidence(self) -> np.ndarray:
        """Each ticket's confidence as a prediction shows it: thresholds chosen on these values route the
        same tickets when the predictor compares them."""
        return np.array([shown_score(value) for value in self.proba.max(axis=1).tolist()], dtype=float)

    @cached_property
    def routable(self) -> np.ndarray:
        """The confidence that routing compares with a threshold: -inf for a held ticket, which none lets through
        (so every routed figure, threshold and curve leaves it out, while ``confidence`` stays its answer's)."""
        return self.confidence if self.held is None else np.where(self.held, -np.inf, self.confidence)

    @cached_property
    def correct(self) -> np.ndarray:
        return self.predicted == self.y_true

    def routed(self, threshold_of: Callable[[str], float]) -> np.ndarray:
        """Which tickets a review threshold per predicted class (``threshold_of``) lets through unreviewed."""
        return self.routable >= np.array([threshold_of(label) for label in self.predicted], dtype=float)


# ---------------------------------------------------------------- the entry points


def evaluate(bundle_dir: str | Path, data_path: str | Path, output_dir: str | Path,
             options: EvaluationOptions | None = None) -> dict[str, Any]:
    """Evaluate ``bundle_dir`` on ``data_path``, write the report files to ``output_dir``; return report.json."""
    options = options or EvaluationOptions()
    _check_options(options)
    bundle_dir, output_dir = Path(bundle_dir), Path(output_dir)
    created = _make_output_dir(output_dir)
    try:
        return _evaluate(bundle_dir, data_path, output_dir, options)
    except BaseException:
        # A failed run leaves no empty report folder behind (nor the parents it made for it).
        if created is not None and not any(path.is_file() for path in created.rglob("*")):
            shutil.rmtree(created, ignore_errors=True)
        raise


def _evaluate(bundle_dir: Path, data_path: str | Path, output_dir: Path, options: EvaluationOptions) -> dict[str, Any]:
    """Build the report (the typed :class:`Report`), write its files; return report.json's content."""
    from classifier import evaluate_fields

    predictor = Predictor.load(bundle_dir, options.engine)
    tickets, data_report = load_test_set(data_path, predictor.manifest, options.label_column, options.text_columns,
                                         with_fields=True, id_column=options.id_column)
    if options.apply_threshold_for_precision is not None:
        _check_enough_to_apply(tickets, predictor.labels)
    proba, oos_scores, field_logits = model_run(predictor, tickets.texts)  # one run: the label and every field
    held = predictor.held_out_of_scope(oos_scores)
    scored = Scored.of(predictor.labels, proba, tickets.labels, held=held)
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = _data_section(tickets, data_report, scored, predictor.manifest, predictor.bundle_dir)
    unknown_labels = _unknown_labels(tickets, scored, predictor.labels, proba)
    others = {"baseline": _baseline(predictor, tickets) if options.baseline else None,
              "compare": _compare(options, data_path, tickets.source["label_column"],
                                  [tickets.rows[i] for i in scored.rows] if tickets.rows else [])}
    report = _model_report(predictor, scored, tickets, options.target_precision, created_at, data, unknown_labels,
                           _side_by_side_sections(others, scored, options))
    report.out_of_scope = _out_of_scope(predictor, tickets, proba, oos_scores, options.oos_label or (
        predictor.manifest.out_of_scope.route_to if predictor.manifest.out_of_scope else None))
    fields: list[FieldRun] = []
    if predictor.fields:
        fields = evaluate_fields.field_runs(predictor.fields, tickets, field_logits, options.target_precision, held)
        report.fields = {run.spec.name: run.section for run in fields}
    if report.compare is not None and others["compare"] is not None:
        report.compare.fields = evaluate_fields.compared_fields(fields, others["compare"].fields or {})
    if options.apply_threshold_for_precision is not None:
        report.thresholds_applied = apply_thresholds(bundle_dir, predictor, scored, tickets,
                                                     options.apply_threshold_for_precision, fields)
    # With the thresholds the summary routes by: those written, else those it recommends.
    thresholds = report.thresholds_applied.per_class if report.thresholds_applied else \
        {row.label: row.threshold for row in report.per_class}
    report.unknown_labels.routed = _unknown_routed(thresholds, scored, proba, held)
    report.warnings = _warnings(report)
    if report.fields is not None:
        report.warnings += evaluate_fields.field_warnings(report.fields, report.thresholds_applied is not None)
    report.files = [*REPORT_FILES, *([OUT_OF_SCOPE_IMAGE] if report.out_of_scope else []),
                    *evaluate_fields.field_files(fields)]
    content = report.to_dict()
    images = {**_images(report, scored, others), **evaluate_fields.field_images(fields)}
    applied = report.thresholds_applied
    _write_files(output_dir, report, content, scored, tickets, images, Path(data_path),
                 applied.per_class.__getitem__ if applied else predictor.threshold)
    return content


def summary_table(report: dict[str, Any]) -> str:
    """A few lines for the terminal from report.json's content (as :func:`evaluate` returns it): warnings
    first, as the report puts them (what can make the numbers below mislead), then the headline numbers side
    by side and the threshold."""
    columns = [("model", report["metrics"])] + [(name, report[name]["metrics"]) for name in ("baseline", "compare")
                                                if report.get(name) and report[name].get("metrics")]
    target = report["precision_coverage"]["target_precision"]
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("tickets", lambda m: f"{m['tickets']}"),
        *[(h.title, lambda m, h=h: format(m[h.key], h.spec)) for h in HEADLINES],
        (f"routed at {target:.0%} precision", lambda m: routed_shown(m["at_target"]))]
    width = max(len(name) for name, _ in rows) + 2
    message = report["precision_coverage"]["message"]
    lines = [f"warning: {warning}" for warning in report["warnings"] if warning != message]  # said below
    lines += [" " * width + "".join(f"{name:>22}" for name, _ in columns)]
    lines += [f"{label:<{width}}" + "".join(f"{cell(metrics):>22}" for _, metrics in columns) for label, cell in rows]
    lines += [f"this model against {CALLED[name]}: {report[name]['difference']['summary']}"
              for name in ("baseline", "compare") if (report.get(name) or {}).get("difference")]
    if compared := ((report.get("compare") or {}).get("fields") or {}).values():
        lines.append(f"fields against {CALLED['compare']}: {'; '.join(field['summary'] for field in compared)}")
    lines.append(message)
    lines += _out_of_scope_lines(report.get("out_of_scope"))
    if report.get("fields") is not None:
        from classifier.evaluate_fields import summary_lines

        lines += summary_lines(report["fields"])
    return "\n".join(lines)


def _out_of_scope_lines(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    point = section["at_threshold"]
    return [f"out of scope: {section['out_of_scope_tickets']} tickets; detector AUROC {section['auroc']:.3f} "
            f"(confidence alone {section['confidence_auroc']:.3f}); at threshold {point['threshold']:.4g} it flags "
            f"{point['out_of_scope_recall']:.1%} of them and {point['in_scope_flagged']:.1%} of in-scope tickets"]


def load_test_set(data_path: str | Path, manifest: Manifest, label_column: str | None,
                  text_columns: Sequence[str] = (), *, with_fields: bool = False, id_column: str | None = None,
                  ) -> tuple[Tickets, DataReport]:
    """Read the test file with the bundle's text fields and cleaning, and training's loader and errors.

    Labels come from ``label_column``, else the column the bundle was trained on (if it recorded it);
    text from ``text_columns`` (the file's names for the bundle's fields), else the bundle's field names.
    With ``with_fields``, the columns of the bundle's other fields, as trained, go into ``Tickets.fields``
    (by the manifest's names); a field whose column the file lacks is not there. Ids from ``id_column``, else
    a common id name.
    """
    data_report = DataReport()
    label_column = label_column or (manifest.data.train.label_column if manifest.data.train else None)
    text_options = with_text_columns(manifest.text, text_columns)
    columns = _field_columns(manifest) if with_fields else {}
    try:
        tickets, _ = load_tickets(data_path, text_options, label_column, data_report, **columns, id_column=id_column)
    except UserError:
        if not columns:
            raise
        # A field's column missing fails the whole read: read it again without those columns (the
        # report says which fields it could not evaluate). Any other error is the file's own.
        absent = _absent_columns(data_path, [*columns["field_columns"], columns["tags_column"]])
        if not absent:
            raise
        data_report = DataReport()
        columns = _field_columns(manifest, absent)
        tickets, _ = load_tickets(data_path, text_options, label_column, data_report, **columns, id_column=id_column)
    # Test tickets of the classes training merged count as "other", as they did in validation.
    merged, other = manifest.data.merged_into_other, manifest.data.other_label
    return relabel_like_training(tickets, manifest.labels, merged, other, data_report), data_report


def _field_columns(manifest: Manifest, absent: Sequence[str] = ()) -> dict[str, Any]:
    """``load_tickets``'s arguments for the bundle's fields as trained, less the ``absent`` columns."""
    if not manifest.fields:
        return {}
    options = manifest.data.options
    tags_column = options.tags_column if options.tags_column and options.tags_column not in absent else None
    return {"field_columns": tuple(name for name in options.field_columns if name not in absent),
            "tags_column": tags_column,
            # The delimiter given to training; else found in this file's cells, as training found its own (the
            # one it found there, in no cell here, would read each cell as one tag).
            "tags_delimiter": options.tags_delimiter}


def _absent_columns(data_path: str | Path, names: Sequence[str | None]) -> list[str]:
    """Those of ``names`` that the file has no column for."""
    from classifier.readers import records_and_columns

    return absent_columns(records_and_columns(data_path)[1], names)


def model_run(predictor: Predictor, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
    """The model's probabilities for each ticket as the service answers it, each ticket's out-of-scope score
    (None: the bundle has no detector), and the logits of each of the bundle's other fields (in the manifest's
    order; none for a bundle of the label alone), from one run of the model."""
    outputs = predictor.outputs(texts, cleaned=True)  # load_tickets cleaned them
    scores = predictor.out_of_scope_scores_of(outputs)
    return predictor.probabilities(outputs.logits, outputs.tfidf), scores, outputs.fields


def _out_of_scope(predictor: Predictor, tickets: Tickets, proba: np.ndarray, scores: np.ndarray | None,
                  oos_label: str | None) -> OutOfScopeSection | None:
    """The out-of-scope section, when the bundle has a detector and the test file tickets of no known queue."""
    if scores is None or predictor.out_of_scope_threshold is None or predictor.manifest.out_of_scope is None:
        return None
    predicted = [predictor.labels[i] for i in proba.argmax(axis=1)]
    confidence = np.array([shown_score(value) for value in proba.max(axis=1).tolist()])
    return out_of_scope_section(scores, tickets.labels, predicted, confidence, predictor.labels,
                                predictor.out_of_scope_threshold, predictor.manifest.out_of_scope.method, oos_label)


# ---------------------------------------------------------------- metrics

def cluster_order(matrix: np.ndarray) -> np.ndarray:
    """An order of the classes that puts classes confused with each other next to each other.

    Average-linkage clustering of the symmetrised, row-normalised confusion rates, leaves in
    optimal order (scipy); with no confusion at all the original order is kept.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    rates = row_normalise(matrix)
    similarity = (rates + rates.T) / 2
    np.fill_diagonal(similarity, 0.0)
    if len(matrix) < 3 or similarity.max() <= 0:
        return np.arange(len(matrix))
    distance = 1.0 - similarity / similarity.max()
    np.fill_diagonal(distance, 0.0)
    return leaves_list(linkage(squareform(distance, checks=False), method="average", optimal_ordering=True))


def model_metrics(scored: Scored, target_precision: float) -> Metrics:
    """Headline numbers for one model; ``at_target`` is the recommended threshold (None: none reaches it)."""
    y_pred = scored.predicted
    at_target = recommend_threshold(scored.routable, scored.correct, target_precision)
    return Metrics(tickets=int(len(scored.rows)),
                   accuracy=float(accuracy_score(scored.y_true, y_pred)),
                   macro_f1=macro_f1(scored.y_true, y_pred),
                   weighted_f1=float(f1_score(scored.y_true, y_pred, average="weighted", zero_division=0)),
                   ece=expected_calibration_error(scored.confidence, scored.correct),
                   at_target=None if at_target is None else OperatingPoint(**at_target))


def per_class_f1(scored: Scored) -> dict[str, float]:
    _, _, f1, _ = precision_recall_fscore_support(scored.y_true, scored.predicted, labels=scored.classes,
                                                  zero_division=0)
    return {label: float(value) for label, value in zip(scored.classes, f1)}


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Equal-width confidence bins: how many tickets, their mean confidence and their accuracy."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": int(mask.sum()),
                     "confidence": float(confidence[mask].mean()) if mask.any() else None,
                     "accuracy": float(correct[mask].mean()) if mask.any() else None})
    return rows


def reliability(confidence: np.ndarray, correct: np.ndarray, ece: float) -> Reliability:
    """The calibration section: the bins, their error ``ece``, and a verdict in words on the mean confidence."""
    return Reliability(ece=ece, bins=[CalibrationBin(**b) for b in calibration_bins(confidence, correct)],
                       mean_confidence=float(confidence.mean()), accuracy=float(correct.mean()),
                       verdict=calibration_verdict(confidence, correct))


# The mean confidence is called off only where it strays from the accuracy beyond chance (a calibrated model
# strays further 5 % of the time) and by enough to matter: on 20,000 tickets a 0.6-point gap is real, and
# changes nothing an agent sees.
CALIBRATION_Z, CALIBRATION_GAP = 1.96, 0.02


def calibration_verdict(confidence: np.ndarray, correct: np.ndarray) -> str:
    """Whether the confidences are honest on average: a calibrated model is right on about the sum of its
    confidences, give or take the square root of the sum of c (1 - c) (each ticket a coin of its confidence)."""
    mean_confidence, accuracy, tickets = float(confidence.mean()), float(correct.mean()), len(confidence)
    gap = float(correct.sum()) - float(confidence.sum())
    spread = math.sqrt(float((confidence * (1 - confidence)).sum()))
    beyond_chance = abs(gap) > CALIBRATION_Z * spread  # all confidences 0 or 1: any gap at all
    figures = f"the mean confidence is {mean_confidence:.1%} and {accuracy:.1%} of the tickets were right"
    if not beyond_chance or abs(accuracy - mean_confidence) < CALIBRATION_GAP:
        within = "within chance" if not beyond_chance else f"under {CALIBRATION_GAP * 100:g} points"
        return f"Honest on average: {figures}, a gap {within} on {tickets} tickets."
    measured = "This report's thresholds are measured on these tickets, so they do not rest on it."
    if gap > 0:
        return (f"Under-confident: {figures}. The confidences shown understate the model (training calibrates "
                f"cautiously when its validation split has few mistakes). {measured}")
    return (f"Over-confident: {figures}. A confidence shown is right less often than it says. {measured} A larger "
            "validation split (--validation FILE) calibrates better.")


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over the bins, weighted by their share of tickets."""
    total = len(confidence)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in calibration_bins(confidence, correct, bins) if b["count"]))


# ---------------------------------------------------------------- precision / coverage


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every distinct confidence t, highest first: coverage and precision of the tickets with confidence >= t."""
    ranked, precision, cut = _ranked(confidence, correct)
    routed = np.arange(1, len(ranked) + 1)  # of all tickets: a held one (-inf) counts, never routed
    return ranked[cut], routed[cut] / len(ranked), precision[cut]


def recommend_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> dict[str, Any] | None:
    """The lowest confidence threshold whose routed tickets reach ``target`` precision (most coverage), or None."""
    if not len(confidence):
        return None
    count = int(routed_at_target(confidence, correct, target))
    if not count:
        return None
    return operating_point(confidence, correct, float(np.sort(confidence)[::-1][count - 1]))


def routed_at_target(confidence: np.ndarray, correct: np.ndarray, target: float) -> np.ndarray:
    """How many tickets the lowest threshold reaching ``target`` precision routes (0: none reaches it). The last
    axis is the tickets; leading axes are separate runs (the bootstrap's resamples), answered at once."""
    _, precision, cut = _ranked(confidence, correct)
    reaching = cut & (precision >= target - 1e-9)
    return np.where(reaching.any(axis=-1), confidence.shape[-1] - np.argmax(reaching[..., ::-1], axis=-1), 0)


def _ranked(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along the last axis, highest confidence first: the confidences, the precision of routing each ticket
    with all those above it, and where a threshold can cut (after the last of a tie only: equal confidences
    are routed together; never among held tickets, whose -inf no threshold reaches)."""
    order = np.argsort(-confidence, axis=-1, kind="stable")
    ranked = np.take_along_axis(confidence, order, axis=-1)
    precision = np.cumsum(np.take_along_axis(correct, order, axis=-1), axis=-1) / np.arange(1, order.shape[-1] + 1)
    cut = np.concatenate([ranked[..., 1:] != ranked[..., :-1], np.ones_like(ranked[..., :1], dtype=bool)], axis=-1)
    return ranked, precision, cut & np.isfinite(ranked)


def operating_point(confidence: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, Any]:
    """Route tickets with confidence >= threshold: how many, what share, how accurate (None if none)."""
    routed = confidence >= threshold
    count = int(routed.sum())
    return {"threshold": float(threshold), "tickets": count,
            "coverage": count / len(confidence) if len(confidence) else 0.0,
            "precision": float(correct[routed].mean()) if count else None}


def threshold_table(confidence: np.ndarray, correct: np.ndarray) -> list[dict[str, Any]]:
    """Operating points at the thresholds that route 10 %, 20 %, ... 100 % of the tickets (ties may route more).

    Derived from the data rather than a fixed grid, so a model with low confidences still gets a useful table.
    """
    ranked = np.sort(confidence)[::-1]
    cuts = {float(ranked[max(math.ceil(level * len(ranked)) - 1, 0)]) for level in COVERAGE_LEVELS}
    return [operating_point(confidence, correct, t) for t in sorted(cuts, reverse=True) if math.isfinite(t)]


def class_thresholds(scored: Scored, target: float) -> dict[str, dict[str, Any]]:
    """A threshold per class (by predicted label) reaching ``target`` precision on that class's predictions.

    Classes predicted fewer than :data:`MIN_PREDICTIONS_FOR_CLASS_THRESHOLD` times, or with a single mistake
    among too few predictions for one mistake to leave the target reachable, take the global recommendation;
    two mistakes there are evidence of their own. A class (or global) that cannot reach the target gets
    :data:`ALWAYS_REVIEW`.
    """
    confidence, correct, predicted = scored.routable, scored.correct, scored.predicted
    overall = recommend_threshold(confidence, correct, target)
    fallback = overall["threshold"] if overall else ALWAYS_REVIEW
    one_mistake_decides = math.ceil(1 / (1 - target) - 1e-9) if target < 1 else math.inf
    result = {}
    for label in scored.classes:
        mask = predicted == label
        routable = mask & np.isfinite(confidence)  # the evidence: a held ticket is routed at no threshold
        if routable.sum() < MIN_PREDICTIONS_FOR_CLASS_THRESHOLD or (
                routable.sum() < one_mistake_decides and (~correct[routable]).sum() == 1):
            threshold, source = fallback, "global" if overall else "unreachable"
        else:
            own = recommend_threshold(confidence[mask], correct[mask], target)
            threshold, source = (own["threshold"], "class") if own else (ALWAYS_REVIEW, "unreachable")
        result[label] = {**operating_point(confidence[mask], correct[mask], threshold),
                         "predicted": int(mask.sum()), "source": source}
    return result


def routing_with(scored: Scored, threshold_of: Callable[[str], float]) -> dict[str, Any]:
    """Overall coverage and precision when each ticket is routed if confidence >= its predicted class's threshold."""
    routed = scored.routed(threshold_of)
    count = int(routed.sum())
    return {"tickets": count, "coverage": count / len(routed),
            "precision": float(scored.correct[routed].mean()) if count else None}


# ---------------------------------------------------------------- report sections


class ClassSections(NamedTuple):
    """The sections about one set of classes: the label's, or a single-label field's."""

    metrics: Metrics
    matrix: np.ndarray  # counts, true class per row
    per_class: list[ClassRow]
    confusion_matrix: Confusion
    precision_coverage: PrecisionCoverage


def class_sections(scored: Scored, target: float, bundle_threshold_of: Callable[[str], float],
                   bundle_source: dict[str, Any] | None) -> ClassSections:
    """Headline numbers, per-class rows, confusion matrix and precision / coverage of ``scored`` at ``target``
    precision; ``bundle_threshold_of``: the review threshold the bundle applies to a predicted class now (and
    ``bundle_source``: where an earlier evaluation's thresholds came from, as the manifest records it)."""
    matrix = confusion_matrix(scored.y_true, scored.predicted, labels=scored.classes)
    metrics = model_metrics(scored, target)
    thresholds = class_thresholds(scored, target)
    per_class = routing_with(scored, lambda label: thresholds[label]["threshold"])
    with_per_class = Routing(**per_class)
    return ClassSections(
        metrics=metrics, matrix=matrix, per_class=_per_class(scored, matrix, thresholds),
        confusion_matrix=Confusion(labels=list(scored.classes), matrix=matrix.tolist(),
                                   display_order=[int(i) for i in cluster_order(matrix)]),
        precision_coverage=PrecisionCoverage(
            target_precision=target,
            recommended=metrics.at_target,
            message=_recommendation_message(metrics.at_target, per_class, target),
            table=[OperatingPoint(**point) for point in threshold_table(scored.routable, scored.correct)],
            held=0 if scored.held is None else int(scored.held.sum()),
            per_class_thresholds={label: ClassThreshold(**info) for label, info in thresholds.items()},
            with_per_class_thresholds=with_per_class,
            with_bundle_thresholds=Routing(**routing_with(scored, bundle_threshold_of)),
            bundle_thresholds_source=bundle_source,
            per_thousand=per_thousand(with_per_class, len(scored.correct)),
        ))


def _model_report(predictor: Predictor, scored: Scored, tickets: Tickets, target: float, created_at: str,
                  data: TestFileSection, unknown_labels: UnknownLabels,
                  others: tuple[SideBySide | Unavailable | None, SideBySide | None]) -> Report:
    """The report on the evaluated model, with the sections about the test file and the other models."""
    source = predictor.manifest.thresholds.source  # thresholds an earlier evaluation wrote into the bundle
    validation = predictor.manifest.data.validation
    sections = class_sections(scored, target, predictor.threshold,
                              source.model_dump(mode="json") if source else None)
    metrics = sections.metrics
    return Report(
        created_at=created_at,
        model=ModelInfo(bundle=str(predictor.bundle_dir), name=predictor.name, version=predictor.version,
                        engine=predictor.engine_kind, labels=len(predictor.labels),
                        blend_weight=predictor.blend_weight,
                        validation_accuracy=predictor.manifest.served_validation_accuracy,
                        validation_tickets=validation.rows_used if validation else None),
        metrics=metrics,
        per_class=sections.per_class,
        confusion_matrix=sections.confusion_matrix,
        top_confusions=_top_confusions(scored, sections.matrix, tickets),
        calibration=reliability(scored.confidence, scored.correct, metrics.ece),
        precision_coverage=sections.precision_coverage,
        data=data, unknown_labels=unknown_labels, baseline=others[0], compare=others[1])


def _per_class(scored: Scored, matrix: np.ndarray, thresholds: dict[str, dict[str, Any]]) -> list[ClassRow]:
    precision, recall, f1, support = precision_recall_fscore_support(
        scored.y_true, scored.predicted, labels=scored.classes, zero_division=0)
    off_diagonal = matrix - np.diag(np.diag(matrix))
    rows = []
    for i, label in enumerate(scored.classes):
        mistaken = int(off_diagonal[i].argmax())
        rows.append(ClassRow(label=label, support=int(support[i]), predicted=int(matrix[:, i].sum()),
                             precision=float(precision[i]), recall=float(recall[i]), f1=float(f1[i]),
                             most_confused_with=scored.classes[mistaken] if off_diagonal[i, mistaken] else None,
                             threshold=thresholds[label]["threshold"], threshold_source=thresholds[label]["source"],
                             coverage_at_threshold=thresholds[label]["coverage"],
                             routed=thresholds[label]["tickets"],
                             routed_wrong=wrong_of(thresholds[label]["tickets"], thresholds[label]["precision"])))
    return rows


def _top_confusions(scored: Scored, matrix: np.ndarray, tickets: Tickets) -> list[ConfusionPair]:
    """The most frequent (true, predicted) mistakes, each with its most confident example tickets."""
    support = matrix.sum(axis=1)
    pairs = [(int(matrix[i, j]), i, j) for i, j in zip(*np.nonzero(matrix)) if i != j]
    pairs.sort(key=lambda p: (-p[0], -p[0] / support[p[1]]))
    predicted, confidence = scored.predicted, scored.confidence
    result = []
    for count, i, j in pairs[:TOP_CONFUSIONS]:
        true, wrong = scored.classes[i], scored.classes[j]
        hits = np.flatnonzero((scored.y_true == true) & (predicted == wrong))
        hits = hits[np.argsort(-confidence[hits], kind="stable")][:EXAMPLES_PER_CONFUSION]
        result.append(ConfusionPair(true=true, predicted=wrong, count=count, share_of_true=count / int(support[i]),
                                    examples=[_example(tickets, int(scored.rows[h]), float(confidence[h]))
                                              for h in hits], the_other_way=int(matrix[j, i])))
    return result


def _example(tickets: Tickets, row: int, confidence: float) -> Example:
    text = tickets.texts[row]
    return Example(id=tickets.ids[row], confidence=confidence,
                   text=text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS].rstrip() + " …")


# How far below the target the lower end of a recommended threshold's precision interval may reach before the
# recommendation says how little it rests on (2 tickets of 2 right: 34 %; 191 at 95.3 %: 91.3 %, unremarked).
UNCERTAIN_RECOMMENDATION = 0.10


def per_thousand(routing: Routing, tickets: int) -> str:
    """``routing`` (the per-class thresholds' on ``tickets`` test tickets) onto 1,000 tickets like these, with
    the cautious end of the wrong count: thresholds chosen on these tickets look better here than on new ones."""
    if not routing.tickets:
        return "With these thresholds every ticket goes to an agent"
    share, right = routing.tickets / tickets, routing.tickets - routing.wrong
    routed, wrong = share * 1000, share * routing.wrong / routing.tickets * 1000
    cautious = share * (1 - wilson_lower_bound(right, routing.tickets)) * 1000
    return (f"Out of every 1,000 tickets like these, {_count(routed)} would be routed automatically and "
            f"{_count(1000 - routed)} would go to an agent; of those routed, {_count(wrong)} went to a wrong queue "
            f"here, and up to {_count(cautious, '')} may on new tickets (the thresholds were chosen on these "
            f"{tickets}, and rest on {routing.tickets} routed)")


def _count(per_thousand: float, about: str = "about ") -> str:
    """A count out of 1,000 as the summary says it: "fewer than 1" rather than a 0 that some tickets are."""
    if per_thousand == 0:
        return "none"
    return "fewer than 1" if per_thousand < 0.5 else f"{about}{round(per_thousand)}"


def _recommendation_message(point: OperatingPoint | None, per_class: dict[str, Any], target: float) -> str:
    """The advice: the per-class thresholds ``--apply-threshold-for-precision`` writes, which is what the bundle
    can serve, and beside them the one threshold for every class (``point``) that the figures compare models by."""
    if point is None and not per_class["tickets"]:
        return (f"No confidence threshold reaches {target:.0%} precision on this test set: at this target "
                "every ticket would need review.")
    if per_class["tickets"]:
        routed, precision = per_class["tickets"], per_class["precision"] or 0.0
        message = (f"Write a review threshold per class into the bundle (--apply-threshold-for-precision {target:g}):"
                   f" {per_class['coverage']:.1%} of tickets ({routed}) would be routed automatically, {precision:.1%}"
                   f" of them correctly (target {target:.0%}); the others go to an agent.")
    else:
        assert point is not None  # the first case returned where neither routes a ticket
        routed, precision = point.tickets, point.precision or 0.0
        message = f"No class's own threshold reaches {target:.0%} precision on this test set."
    low = wilson_lower_bound(routed - wrong_of(routed, precision), routed)
    if low < target - UNCERTAIN_RECOMMENDATION:  # e.g. 2 of 2 right: 34 % to 100 %
        message += (f" That rests on {routed} tickets: the precision's 95 % interval reaches down to "
                    f"{low:.1%}; a larger test file would give thresholds to rely on.")
    if point is not None:
        message += (f" One threshold for every class, confidence >= {point.threshold:{THRESHOLD}}, would route "
                    f"{point.coverage:.1%} ({point.tickets}) at {point.precision or 0.0:.1%}.")
    return message


def routed_shown(point: dict[str, Any] | None, target: float | None = None) -> str:
    """A report's ``at_target`` point for the terminal: "79.9% (t>=0.902307)", or "none"; given the
    ``target``, a point resting on too few tickets to trust (as :func:`_recommendation_message` judges) says so."""
    if point is None:
        return "none"
    shown = f"{point['coverage']:.1%} (t>={point['threshold']:{THRESHOLD}})"
    right = round((point["precision"] or 0.0) * point["tickets"])
    if target is not None and wilson_lower_bound(right, point["tickets"]) < target - UNCERTAIN_RECOMMENDATION:
        shown += f", only {point['tickets']} tickets: too few to rely on"
    return shown


def _data_section(tickets: Tickets, data_report: DataReport, scored: Scored, manifest: Manifest,
                  bundle_dir: Path) -> TestFileSection:
    trained_on = manifest.data.train.sha256 if manifest.data.train else None
    is_training_file = trained_on is not None and trained_on == tickets.source.get("sha256")
    return TestFileSection(
        source=dict(tickets.source), evaluated=int(len(scored.rows)), is_training_file=is_training_file,
        dropped={reason: Dropped(count=len(where), rows=where) for reason, where in data_report.dropped.items()},
        label_spellings_matched=data_report.merged_label_spellings,
        labels_without_test_tickets=sorted(set(scored.classes) - set(scored.y_true)),
        training_copies=None if is_training_file else _training_copies(tickets, scored, manifest, bundle_dir),
        repeated_ids=[ticket_id for info in data_report.files.values() for ticket_id in info.get("repeated_ids", [])],
        test_copies=_test_copies(tickets, scored), corrected_labels=data_report.corrected_labels)


def _test_copies(tickets: Tickets, scored: Scored) -> list[str]:
    """The evaluated tickets whose text and label an earlier evaluated ticket has: each counts in the metrics."""
    seen: set[tuple[str, str]] = set()
    copies = []
    for row in scored.rows.tolist():
        key = (tickets.texts[row], tickets.labels[row])
        if key in seen:
            copies.append(tickets.ids[row])
        seen.add(key)
    return copies


def _training_copies(tickets: Tickets, scored: Scored, manifest: Manifest, bundle_dir: Path) -> int | None:
    """How many evaluated tickets have the text of a ticket of the training file, where it can be read."""
    trained_on = training_file_texts(manifest, bundle_dir)
    if trained_on is None:
        return None
    known = set(trained_on)
    return sum(tickets.texts[row] in known for row in scored.rows.tolist())


def _unknown_labels(tickets: Tickets, scored: Scored, classes: list[str], proba: np.ndarray) -> UnknownLabels:
    """Test tickets whose label the model never learned, and where the model sends them instead."""
    rows = sorted(set(range(len(tickets))) - set(scored.rows.tolist()))
    ids: dict[str, list[str]] = {}
    predicted_as: dict[str, Counter[str]] = {}
    for row in rows:
        ids.setdefault(tickets.labels[row], []).append(tickets.ids[row])
        predicted_as.setdefault(tickets.labels[row], Counter())[classes[int(proba[row].argmax())]] += 1
    by_label = {label: UnknownLabel(count=len(ids[label]), ids=ids[label],
                                    predicted_as=dict(predicted_as[label].most_common()))
                for label in sorted(ids, key=lambda label: -len(ids[label]))}
    return UnknownLabels(count=len(rows), share=len(rows) / len(tickets), labels=by_label)


def spellings_warning(what: str, spellings: dict[str, str]) -> str:
    """The warning that ``what`` (test labels, a field's values) were read as the model spells them."""
    shown = first_of([f"{k!r} as {v!r}" for k, v in spellings.items()], 10)
    return f"{what} matched to the model's spelling (they differ only in case or number format): {shown}"


def _unknown_routed(thresholds: dict[str, float], scored: Scored, proba: np.ndarray, held: np.ndarray | None) -> int:
    """How many tickets of labels the model lacks ``thresholds`` (per class) would route (to a wrong queue)."""
    rows = np.setdiff1d(np.arange(len(proba)), scored.rows)
    if not rows.size:
        return 0
    unknown = Scored(scored.classes, rows, np.full(len(rows), None, dtype=object), np.asarray(proba)[rows],
                     None if held is None else np.asarray(held, dtype=bool)[rows])
    return int(unknown.routed(thresholds.__getitem__).sum())


class OtherModel(NamedTuple):
    """A model evaluated beside the bundle: the baseline, or a compared bundle."""

    name: str
    description: str
    scored: Scored
    fields: dict[str, FieldOutcomes] | None = None  # a compared bundle's fields measured; None: the label alone


def _side_by_side(other: OtherModel, scored: Scored, target: float, called: str) -> SideBySide:
    """Another model's numbers and, per class present in the test set, the F1 gain of the evaluated model;
    ``called``: how sentences name the other model ("the baseline")."""
    own, theirs = per_class_f1(scored), per_class_f1(other.scored)
    present = set(scored.y_true)
    return SideBySide(name=other.name, description=other.description, metrics=model_metrics(other.scored, target),
                      per_class_f1=theirs,
                      f1_delta={label: own[label] - theirs[label] for label in scored.classes
                                if label in theirs and label in present},
                      difference=paired_difference(scored, other.scored, target, called))


def paired_difference(scored: Scored, other: Scored, target: float, called: str = "the other model", seed: int = 0
                      ) -> Difference | None:
    """``scored`` minus ``other`` in accuracy and in the share routed at ``target`` precision, each with a 95 %
    interval that says whether the gap is more than the draw of test tickets; None unless both were scored on
    the same tickets (two or more). ``called`` names ``other`` in the summary line."""
    if not np.array_equal(scored.rows, other.rows) or len(scored.rows) < 2:
        return None
    only_this, only_other = disagreements(scored.correct, other.correct)
    accuracy = accuracy_gap(only_this, only_other, len(scored.rows))
    routed = _routed_gap(scored, other, target, seed)
    return Difference(accuracy, routed, only_this_right=only_this, only_other_right=only_other,
                      resamples=BOOTSTRAP_RESAMPLES,
                      summary=difference_summary(accuracy, routed, target, only_this, only_other, called))


def disagreements(right: np.ndarray, other_right: np.ndarray) -> tuple[int, int]:
    """Of the same tickets, how many only the first model gets right, and how many only the other."""
    return int((right & ~other_right).sum()), int((other_right & ~right).sum())


def accuracy_gap(only_this: int, only_other: int, tickets: int) -> Interval:
    """The accuracy gap (``only_this`` - ``only_other``) / ``tickets``, with the exact 95 % interval McNemar's
    test goes with: of the tickets the two models disagree on, the share this one gets right is binomial
    (Clopper-Pearson). Exact, so honest on a handful of tickets, where a bootstrap is not (4 such tickets
    against none of 10 are no evidence: p = 0.125)."""
    from scipy.stats import binomtest

    disagreeing = only_this + only_other
    if not disagreeing:
        return Interval(0.0, 0.0, 0.0)
    share = binomtest(only_this, disagreeing).proportion_ci(0.95)
    return Interval((only_this - only_other) / tickets, (2 * share.low - 1) * disagreeing / tickets,
                    (2 * share.high - 1) * disagreeing / tickets)


def _routed_gap(scored: Scored, other: Scored, target: float, seed: int) -> Interval:
    """The gap in share routed at ``target`` precision, with a paired bootstrap's interval: no formula covers a
    threshold chosen on the tickets themselves."""
    def statistic(rows: np.ndarray) -> np.ndarray:
        routed = [routed_at_target(model.routable[rows], model.correct[rows], target) for model in (scored, other)]
        return (routed[0] - routed[1]) / rows.shape[-1]

    return paired_bootstrap(statistic, len(scored.rows), seed)


def paired_bootstrap(statistic: Callable[[np.ndarray], np.ndarray], tickets: int, seed: int = 0) -> Interval:
    """A gap between two models on the same ``tickets`` test tickets, ``statistic(rows)`` of ticket indices (a
    resample per row of a 2-D array), with the 95 % percentile interval of a paired bootstrap: the tickets drawn
    again, the same draw for both models."""
    from scipy.stats import bootstrap

    everything = np.arange(tickets)
    batch = max(1, min(BOOTSTRAP_BATCH, BOOTSTRAP_BATCH_VALUES // tickets))
    interval = bootstrap((everything,), lambda rows, axis=-1: statistic(rows), n_resamples=BOOTSTRAP_RESAMPLES,
                         batch=batch, method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    # A statistic can jump (one confident mistake moves a threshold far), so the draws can all land on one side
    # of the observed gap: the interval is widened to hold it, which only makes a verdict more careful.
    value = float(statistic(everything))
    return Interval(value, min(float(interval.low), value), max(float(interval.high), value))


def _side_by_side_sections(others: dict[str, OtherModel | None], scored: Scored,
                           options: EvaluationOptions) -> tuple[SideBySide | Unavailable | None, SideBySide | None]:
    """The baseline's section (or why it is missing) and the compared model's."""
    baseline, compare = (_side_by_side(other, scored, options.target_precision, CALLED[key]) if other else None
                         for key, other in others.items())
    if options.baseline and others["baseline"] is None:
        return Unavailable(BASELINE_NAME,
                           reason="the bundle keeps no baseline (trained by a release before training fitted "
                                  "one, or its baseline file was removed)"), compare
    return baseline, compare


def _baseline(predictor: Predictor, tickets: Tickets) -> OtherModel | None:
    """The TF-IDF baseline training kept in the bundle; None for a bundle without one."""
    from classifier.baseline import load_baseline

    kept = predictor.manifest.baseline
    if kept is None or not (predictor.bundle_dir / kept.file).is_file():
        return None
    model = load_baseline(predictor.bundle_dir / kept.file)
    scored = Scored.of(list(model.classes_), model.predict_proba(tickets.texts), tickets.labels)
    train = predictor.manifest.data.train
    return OtherModel(kept.name, f"trained on the bundle's {f'{train.rows_used} ' if train else ''}training tickets",
                      scored)


def _compare(options: EvaluationOptions, data_path: str | Path, label_column: str, file_rows: Sequence[int]
             ) -> OtherModel | None:
    """The other bundle as it is served (engine auto), reading the test file as that bundle reads it (its
    own text fields, label spellings and merged classes), with the labels the evaluated model is scored on, on
    the tickets it is scored on (``file_rows``: a queue only the evaluated model learnt is the other's mistake,
    not left out), where the other bundle reads them all; else on those whose label it knows. Its fields
    besides the label are evaluated as the evaluated model's are, on their own columns of the test file."""
    from classifier.evaluate_fields import field_runs

    if options.compare_bundle is None:
        return None
    other = Predictor.load(options.compare_bundle, "auto")
    tickets, _ = load_test_set(data_path, other.manifest, label_column, options.text_columns,
                               with_fields=True, id_column=options.id_column)
    index = {row: i for i, row in enumerate(tickets.rows)}
    same = [index.get(row) for row in file_rows]
    rows = np.array(same, dtype=int) if same and None not in same else None
    proba, scores, field_logits = model_run(other, tickets.texts)
    held = other.held_out_of_scope(scores)  # as its own detector holds them where it serves
    scored = Scored.of(other.labels, proba, tickets.labels, rows, held=held)
    runs = field_runs(other.fields, tickets, field_logits, options.target_precision, held)
    return OtherModel(f"{other.name} ({other.version})", f"{options.compare_bundle}, engine {other.engine_kind}",
                      scored, {run.spec.name: run.outcomes for run in runs if run.outcomes is not None})


def _warnings(report: Report) -> list[str]:
    """What a reviewer must know before trusting the numbers."""
    warnings = []
    data, unknown = report.data, report.unknown_labels
    if data.is_training_file:
        warnings.append("the test file is the file this model was trained on: these numbers overstate how it "
                        "does on new tickets; evaluate on tickets kept out of training")
    elif data.training_copies:
        share = data.training_copies / data.evaluated
        warnings.append(f"{data.training_copies} of the {data.evaluated} test tickets ({share:.0%}) have the text of "
                        "a ticket in the training file: these numbers overstate how the model does on new tickets; "
                        "'ticketclf split' holds out a test file without them")
    if unknown.count:
        listed = ", ".join(f"{label!r} ({info.count})" for label, info in unknown.labels.items())
        counted, have = ("1 test ticket", "has a label") if unknown.count == 1 else \
            (f"{unknown.count} test tickets", "have labels")
        warnings.append(f"{counted} ({unknown.share:.1%}) {have} the model does not know, left out of the "
                        f"metrics: {listed}")
    for reason, dropped in data.dropped.items():
        rows = first_of(dropped.rows, 3)
        warnings.append(f"{dropped.count} test row{'s' if dropped.count > 1 else ''} dropped ({reason}): {rows}")
    if copies := data.test_copies:
        are = "is a copy" if len(copies) == 1 else "are copies"
        warnings.append(f"{len(copies)} of the {data.evaluated} test tickets {are} of another test ticket (same text "
                        f"and label), each counted, so a mistake on one counts as many: {first_of(copies, 5)}")
    if data.repeated_ids:
        warnings.append(f"{ids_are(len(data.repeated_ids))} on more than one test ticket, each of another text "
                        f"({first_of(data.repeated_ids, 5)}): misclassified.csv names tickets by id")
    if data.corrected_labels:  # a reviewed file scores against the agents' corrections: say it
        warnings.append(f"{data.corrected_labels} test labels are the file's {CORRECTED_LABEL_COLUMN} column's, in "
                        "place of its label column's")
    if data.label_spellings_matched:
        warnings.append(spellings_warning("test labels", data.label_spellings_matched))
    missing = data.labels_without_test_tickets
    if missing:
        classes = "1 model class has" if len(missing) == 1 else f"{len(missing)} model classes have"
        warnings.append(f"{classes} no test tickets: {first_of(missing, 10)}")
    coverage = report.precision_coverage
    if coverage.recommended is None:
        warnings.append(coverage.message if not coverage.with_per_class_thresholds.tickets else
                        f"no single confidence threshold reaches {coverage.target_precision:.0%} precision on this "
                        "test set; only a threshold per class does (the advice below)")
    if (below := _bundle_thresholds_below_target(report)) is not None:
        warnings.append(below)
    tickets, accuracy, confident = report.metrics.tickets, report.metrics.accuracy, report.calibration.mean_confidence
    if tickets >= POOR_CALIBRATION_MIN_TICKETS and abs(confident - accuracy) > POOR_CALIBRATION_GAP:
        how, flags = (("less sure than it is right", "more") if confident < accuracy
                      else ("surer than it is right", "fewer"))
        warnings.append(f"confidences do not match accuracy: the model is {how} (mean confidence {confident:.1%}, "
                        f"accuracy {accuracy:.1%} on {tickets} tickets), so the bundle's review threshold flags "
                        f"{flags} tickets than its value suggests; the thresholds in this report are measured on "
                        "these tickets and hold")
    if (drop := _below_validation(report)) is not None:
        warnings.append(drop)
    if isinstance(report.baseline, Unavailable):
        warnings.append(f"no baseline: {report.baseline.reason}")
    for key, other in report.others():
        if other.metrics.tickets != report.metrics.tickets:
            warnings.append(f"{CALLED[key]} ({other.name}) was scored on {other.metrics.tickets} test tickets, this "
                            f"model on {report.metrics.tickets} (their classes or text fields differ): the "
                            "numbers are not like for like")
        lacking = [row.label for row in report.per_class if row.support and row.label not in other.per_class_f1]
        if lacking and other.metrics.tickets == report.metrics.tickets:  # scored on the same tickets
            warnings.append(f"{CALLED[key]} ({other.name}) has no class {first_of(lacking, 5)}: its test tickets "
                            "of those count as its mistakes (a queue this model learnt, or one renamed)")
        if other.difference and other.difference.accuracy.high < 0:
            warnings.append(f"{CALLED[key]} ({other.name}) is more accurate than this model, beyond chance; this "
                            f"model against it: {other.difference.summary}")
        elif other.metrics.macro_f1 > report.metrics.macro_f1 + 0.01:
            warnings.append(f"{CALLED[key]} ({other.name}) scores a higher macro F1 than this model: "
                            f"{other.metrics.macro_f1:.3f} against {report.metrics.macro_f1:.3f}")
    applied = report.thresholds_applied
    if applied and unknown.count:
        landed: Counter[str] = Counter()
        for info in unknown.labels.values():
            landed.update(info.predicted_as)
        warnings.append(f"the thresholds written to the bundle leave out the {unknown.count} tickets with labels "
                        "the model does not know; in production such tickets are routed to the class they resemble "
                        f"({', '.join(f'{label!r} ({n})' for label, n in landed.most_common(3))}): add those classes "
                        "and retrain, or expect lower precision there")
    if applied and applied.engine != applied.served_engine:
        warnings.append(f"thresholds were measured with the {applied.engine} model but the bundle serves "
                        f"{applied.served_engine}: confidences may differ slightly")
    return warnings


def _below_validation(report: Report) -> str | None:
    """A warning where the test accuracy is below what training measured on its validation split, beyond chance
    (Fisher's exact test on the two splits' right and wrong answers, p < 0.05): the numbers differ for a reason
    a reader should know before choosing which to believe."""
    model, metrics = report.model, report.metrics
    validation = model.validation_accuracy
    if validation is None or not model.validation_tickets or metrics.accuracy >= validation:
        return None
    from scipy.stats import fisher_exact

    tickets = model.validation_tickets
    validation_right, test_right = round(validation * tickets), round(metrics.accuracy * metrics.tickets)
    table = [[validation_right, tickets - validation_right], [test_right, metrics.tickets - test_right]]
    if fisher_exact(table, alternative="greater").pvalue >= 0.05:
        return None
    return (f"accuracy on these tickets ({metrics.accuracy:.1%}) is below the {validation:.1%} training "
            f"measured on its {tickets} validation tickets, beyond chance. That figure is optimistic: the same "
            "tickets chose when training stopped, the confidence scale and the blend with the TF-IDF model. "
            "Beyond that, these tickets may differ from the training export (newer, other wording, another "
            "source); for tickets like these, trust this report's figures")


def _bundle_thresholds_below_target(report: Report) -> str | None:
    """A warning where the review thresholds in the bundle now route these tickets at a precision below the
    report's target beyond chance (the top of its 95 % interval under the target), unless this run writes
    new ones: the headline's threshold is not what the service applies until it is written."""
    coverage = report.precision_coverage
    now, target = coverage.with_bundle_thresholds, coverage.target_precision
    if report.thresholds_applied or now.precision is None:
        return None
    if 1 - wilson_lower_bound(now.wrong, now.tickets) >= target:
        return None
    return (f"the review thresholds in the bundle now route {now.coverage:.1%} of these tickets without review at "
            f"{now.precision:.1%} precision, below the {target:.0%} target: until thresholds are written into the "
            f"bundle (--apply-threshold-for-precision {target:g}, on a holdout file you do not report on), the "
            "service does not route as this report's recommended threshold would")


# ---------------------------------------------------------------- thresholds into the bundle


def _check_enough_to_apply(tickets: Tickets, labels: Sequence[str]) -> None:
    known = set(labels)
    count = sum(label in known for label in tickets.labels)
    if count < MIN_TICKETS_TO_APPLY_THRESHOLDS:
        raise UserError(f"--apply-threshold-for-precision: {tickets.source.get('path')} has {count} tickets of the "
                        f"model's labels, too few to set the bundle's review thresholds on (at least "
                        f"{MIN_TICKETS_TO_APPLY_THRESHOLDS}); nothing was written: evaluate on a larger holdout file")


def apply_thresholds(bundle_dir: Path, predictor: Predictor, scored: Scored, tickets: Tickets,
                     precision: float, fields: Sequence[FieldRun] = ()) -> AppliedThresholds:
    """Write per-class thresholds reaching ``precision`` into the manifest (atomically); return what was written.

    With ``fields`` (the bundle's other fields on the test file), each single-label field scored gets its own
    per-class thresholds in its ``fields`` entry, chosen the same way, in the same write; its report section
    records them, and ``thresholds.source`` names the fields (``fields``: their tickets and expected routing).
    """
    from classifier.evaluate_fields import field_thresholds, with_field_thresholds

    thresholds = class_thresholds(scored, precision)
    applied = AppliedThresholds(
        target_precision=precision, engine=predictor.engine_kind,
        served_engine=resolve_engine(bundle_dir, predictor.manifest, "auto"),
        data={k: tickets.source.get(k) for k in ("path", "sha256")}, tickets=int(len(scored.rows)),
        set_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        expected=Routing(**routing_with(scored, lambda label: thresholds[label]["threshold"])),
        per_class={label: info["threshold"] for label, info in thresholds.items()})
    source = {k: v for k, v in asdict(applied).items() if k != "per_class"}
    manifest = bundle.read_manifest(bundle_dir)  # fresh: keep edits made since the predictor loaded it
    written = field_thresholds(fields, precision)
    if written and manifest.fields:
        manifest.fields = with_field_thresholds(manifest.fields, written)
        source["fields"] = {name: {"tickets": field.tickets, "expected": asdict(field.expected)}
                            for name, field in written.items()}
    manifest.thresholds = manifest.thresholds.model_copy(update={
        "per_class": applied.per_class, "source": ThresholdSource.model_validate(source)})
    bundle.write_manifest(bundle_dir, manifest)
    log.info("wrote %d per-class thresholds for %.0f%% precision to %s%s: %s", len(thresholds), precision * 100,
             bundle_dir / bundle.MANIFEST, "".join(f", and {len(field.per_class)} for field {name!r}"
                                                   for name, field in written.items()),
             "; ".join(f"{label} {_threshold_words(info)}" for label, info in thresholds.items()))
    return applied


def _threshold_words(info: dict[str, Any]) -> str:
    """One class's threshold as the log line says it: "0.93 (own, 42 predictions)", "0.46 (global, 12)"."""
    if info["source"] == "unreachable":
        return "always review (the target is not reached)"
    return f"{info['threshold']:{THRESHOLD}} ({'own' if info['source'] == 'class' else 'global'}, " \
           f"{info['predicted']} predictions)"


# ---------------------------------------------------------------- files


def _images(report: Report, scored: Scored, others: dict[str, OtherModel | None]) -> dict[str, bytes]:
    from classifier import plots  # matplotlib only when a report is drawn

    matrix = report.confusion_matrix
    curves = {"this model": scored, **{f"{key}: {other.name}": other.scored for key, other in others.items() if other}}
    return {"confusion_matrix.png": plots.confusion_matrix_png(np.asarray(matrix.matrix), matrix.labels,
                                                               matrix.display_order),
            "precision_coverage.png": plots.precision_coverage_png(
                {name: coverage_curve(s.routable, s.correct) for name, s in curves.items()},
                report.precision_coverage.target_precision, report.precision_coverage.recommended,
                per_class=report.precision_coverage.with_per_class_thresholds),
            "reliability.png": plots.reliability_png(report.calibration),
            **({OUT_OF_SCOPE_IMAGE: plots.out_of_scope_png(report.out_of_scope)} if report.out_of_scope else {})}


def _write_files(output_dir: Path, report: Report, content: dict[str, Any], scored: Scored, tickets: Tickets,
                 images: dict[str, bytes], test_file: Path, threshold_of: Callable[[str], float]) -> None:
    """``content``: report.json's, ``report.to_dict()``, made once by the caller, which returns it;
    ``threshold_of``: the review threshold of each predicted class in the bundle, as written. The CSV
    files, opened in Excel, start with a byte-order mark and are separated as ``test_file`` is (a semicolon-locale
    Excel opens a comma-separated file as one column; numbers then have decimal commas, :func:`decimal_cell`)."""
    from classifier import report_html

    html = report_html.render(report, images)
    # report.json first: a run stopped halfway leaves a folder the next run knows as its own report's.
    bundle.write_json_atomic(output_dir / "report.json", content)
    for name, data in images.items():
        (output_dir / name).write_bytes(data)
    _write_confusion_csv(output_dir / "confusion_matrix.csv", content["confusion_matrix"], test_file)
    for field in (content.get("fields") or {}).values():  # each single-label field scored: files[0]
        if "confusion_matrix" in field:
            _write_confusion_csv(output_dir / field["files"][0], field["confusion_matrix"], test_file)
    _write_misclassified(output_dir / "misclassified.csv", scored, tickets, test_file, threshold_of)
    (output_dir / "report.html").write_text(html, encoding="utf-8")


def _write_confusion_csv(path: Path, section: dict[str, Any], like: Path) -> None:
    """A confusion matrix's counts (``section``: ``labels`` and ``matrix``), true class per row."""
    with csv_writer(path, like, for_spreadsheets=True) as writer:
        writer.writerow(["true \\ predicted", *map(spreadsheet_safe, section["labels"])])
        writer.writerows([spreadsheet_safe(label), *row] for label, row in zip(section["labels"], section["matrix"]))


def _write_misclassified(path: Path, scored: Scored, tickets: Tickets, like: Path,
                         threshold_of: Callable[[str], float]) -> None:
    """Wrong predictions, most confident first: those are label noise or the model's blind spots. ``routed``:
    whether the bundle's review thresholds now (``threshold_of``) let the mistake reach the wrong queue
    unreviewed; ``second_choice``: the model's next label, often the right one."""
    wrong = np.flatnonzero(~scored.correct)
    wrong = wrong[np.argsort(-scored.confidence[wrong], kind="stable")]
    predicted, confidence, routed = scored.predicted, scored.confidence, scored.routed(threshold_of)
    second = np.argsort(-scored.proba, axis=1, kind="stable")[:, 1] if len(scored.classes) > 1 else None
    with csv_writer(path, like, for_spreadsheets=True) as writer:
        writer.writerow(["id", "text", "true", "predicted", "confidence", "routed", "second_choice"])
        for i in wrong:
            row = int(scored.rows[i])
            cells = (tickets.ids[row], tickets.texts[row], scored.y_true[i], predicted[i])
            writer.writerow([*map(spreadsheet_safe, cells), decimal_cell(confidence[i], writer.dialect.delimiter),
                             "yes" if routed[i] else "no", "" if second is None else scored.classes[second[i]]])


def _make_output_dir(output_dir: Path) -> Path | None:
    """Create the report directory up front (a bad --output fails before the work); return the
    outermost directory this created, or None if it existed. A report replaces an earlier report's
    files, never files of the same names that are something else, nor a bundle's."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"{output_dir}: exists and is not a directory; choose another --output")
    if (output_dir / bundle.MANIFEST).is_file():  # the bundle itself, or another one
        raise UserError(f"{output_dir}: is a model bundle; write the report to another --output")
    taken = [name for name in REPORT_FILES if (output_dir / name).exists()]
    if taken and not _is_report(output_dir / "report.json"):
        raise UserError(f"{output_dir}: holds {', '.join(taken)}, not from an earlier report (no report.json of "
                        "one); choose another --output")
    new = [directory for directory in (output_dir, *output_dir.parents) if not directory.exists()]
    output_dir.mkdir(parents=True, exist_ok=True)
    return new[-1] if new else None


def _is_report(path: Path) -> bool:
    """Whether ``path`` is an earlier report's report.json (another tool's file of that name is not)."""
    try:
        report = bundle.read_json_object(path)
    except (OSError, UserError):  # missing, unreadable, not JSON, or not an object
        return False
    return isinstance(report.get("metrics"), dict) and isinstance(report.get("per_class"), list)


def _check_options(options: EvaluationOptions) -> None:
    for option, value in (("--target-precision", options.target_precision),
                          ("--apply-threshold-for-precision", options.apply_threshold_for_precision)):
        if value is not None and not 0 < value <= 1:
            raise UserError(f"{option} must be a precision between 0 and 1 (e.g. 0.95), got {value}")
