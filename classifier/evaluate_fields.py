"""The evaluation report's sections on the fields a bundle predicts besides its label (:mod:`classifier.fields`).

A bundle trained with more label columns (priority, queue) and a tags column answers every field from the
one model run that gives the label (:meth:`Predictor.outputs`); :func:`classifier.evaluate.evaluate` hands
each field's logits here, and the report gets a section per field, in the manifest's order:

* a single-label field, as the label: accuracy, macro-F1, per-class precision and recall, the confusion
  matrix, precision / coverage and a review threshold per class, computed by the label's own functions
  (:func:`classifier.evaluate.class_sections`) on the field's softmax (fields have no temperature);
* the tags: micro and macro F1, subset accuracy and per-tag precision / recall / support, a tag being given
  when its sigmoid score reaches the threshold training chose for it, as the predictor gives it.

A test ticket with no value for a field (an empty cell; for tags, no value at all, while an empty list is a
ticket without tags) is left out of that field's numbers, as is a value the model was not trained on (both
counted, the latter listed). A test file without a field's column gives a section that says so; the rest
of the report is unchanged.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from classifier.data import DataReport, Tickets, match_label_spellings
from classifier.errors import ModelError, first_of
from classifier.evaluate import (
    Scored,
    accuracy_gap,
    class_sections,
    class_thresholds,
    disagreements,
    paired_bootstrap,
    routed_shown,
    routing_with,
    spellings_warning,
)
from classifier.fields import f1_of, hardly_beats_majority, metrics_of_tag_counts, tag_matrix, tag_outcomes
from classifier.manifest import ALWAYS_REVIEW, FieldHead
from classifier.numerics import sigmoid, softmax
from classifier.report import (
    ClassRow,
    FieldComparison,
    FieldSection,
    FieldThresholdsApplied,
    FieldUnavailable,
    Interval,
    Routing,
    SingleFieldSection,
    TagRow,
    TagsSection,
)

LISTED_VALUES = 10  # values the model does not know, listed in a warning


ACCURACY, MICRO_F1 = "accuracy", "micro-F1"  # the figure two models are compared on: single label, tags


@dataclass
class FieldOutcomes:
    """Per test ticket a field was measured on, what a paired comparison of two models needs: the ticket's row in
    the test file, and for a single label whether the answer was right (one column), for tags the ticket's true
    positives, false positives and false negatives (three). Unlike the field's own section, a value or tag the
    model does not know counts, as a mistake: what one model learnt and the other did not is the other's loss."""

    measure: str  # ACCURACY or MICRO_F1
    rows: np.ndarray
    counts: np.ndarray  # (tickets, 1) or (tickets, 3)

    def figure(self, counts: np.ndarray | None = None) -> np.ndarray:
        """The measure of ``counts`` (these outcomes' by default; any leading axes: resamples)."""
        counts = self.counts if counts is None else counts
        totals = counts.sum(axis=-2)
        if self.measure == ACCURACY:
            return totals[..., 0] / counts.shape[-2]
        return f1_of(totals[..., 0], totals[..., 1], totals[..., 2])


@dataclass
class FieldRun:
    """One field on the test tickets: its report section, for a single-label field its scores, and the outcomes
    that compare it with another model's."""

    spec: FieldHead
    section: FieldSection
    scored: Scored | None = None  # a single-label field with test tickets the model can be scored on
    outcomes: FieldOutcomes | None = None  # None: not measured on this test file


def field_runs(fields: Sequence[FieldHead], tickets: Tickets, logits: Sequence[np.ndarray],
               target: float, held: np.ndarray | None = None) -> list[FieldRun]:
    """Each field's section: ``tickets.fields`` holds the test file's values of the fields whose column it has
    (the others' sections say it lacks them), ``logits`` each field's logits from the model run, ``held`` the
    tickets the out-of-scope check sends to review (every field of theirs too, as the service does)."""
    if len(logits) != len(fields):
        raise ModelError(f"the model gave {len(logits)} outputs for the {len(fields)} fields its manifest lists "
                         "besides the label; export the bundle again")
    stems = file_stems([spec.name for spec in fields])
    runs = []
    for spec, field_logits, stem in zip(fields, logits, stems):
        if spec.name not in tickets.fields:
            runs.append(FieldRun(spec, FieldUnavailable(
                name=spec.name, kind=spec.kind, reason=f"the test file has no column {spec.name!r}")))
        elif spec.kind == "tags":
            runs.append(_tags_run(spec, tickets.fields[spec.name], field_logits, _file_rows(tickets)))
        else:
            runs.append(_single_run(spec, tickets, field_logits, target, stem, held))
    return runs


def _file_rows(tickets: Tickets) -> np.ndarray:
    """Each ticket's row in the test file (its position, for tickets not read from one)."""
    return np.asarray(tickets.rows if tickets.rows else range(len(tickets)), dtype=int)


def file_stems(names: Sequence[str]) -> list[str]:
    """A file-name stem per field (``field_priority``), made of letters, digits and ``_``, each its own; accents
    dropped ("Priorität" gives ``field_prioritat``)."""
    stems: list[str] = []
    for name in names:
        plain = unicodedata.normalize("NFKD", name.replace("ß", "ss")).encode("ascii", "ignore").decode().lower()
        stem = "field_" + (re.sub(r"[^a-z0-9]+", "_", plain).strip("_") or "column")
        while stem in stems:
            stem += "_"
        stems.append(stem)
    return stems


def _single_run(spec: FieldHead, tickets: Tickets, logits: np.ndarray, target: float, stem: str,
                held: np.ndarray | None) -> FieldRun:
    """A single-label field as the label is reported, on the tickets with a value the model knows."""
    spellings = DataReport()
    values = match_label_spellings(tickets.relabelled(list(tickets.fields[spec.name])),
                                   [*spec.labels, *spec.left_out], spellings).labels
    known = set(spec.labels)
    without = sum(not value for value in values)
    unknown = Counter(value for value in values if value and value not in known)
    unknown_values = dict(unknown.most_common())
    if without + sum(unknown.values()) == len(values):
        listed = ", ".join(f"{value!r} ({n})" for value, n in list(unknown_values.items())[:LISTED_VALUES])
        return FieldRun(spec, FieldUnavailable(
            name=spec.name, kind=spec.kind, reason=f"no test ticket has a value the model knows ({without} without "
            f"a value, {sum(unknown.values())} with values it was not trained on{': ' + listed if listed else ''})"))
    scored = Scored.of(spec.labels, softmax(np.asarray(logits)), values, held=held)  # as predicted: no temperature
    sections = class_sections(scored, target, spec.threshold_of, None)
    section = SingleFieldSection(
        name=spec.name, kind=spec.kind, labels=list(spec.labels), tickets=int(len(scored.rows)),
        without_value=without, unknown_values=unknown_values, spellings_matched=spellings.merged_label_spellings,
        labels_without_test_tickets=sorted(known - set(scored.y_true)),
        metrics=sections.metrics, per_class=sections.per_class, confusion_matrix=sections.confusion_matrix,
        precision_coverage=sections.precision_coverage,
        bundle_thresholds={"global": spec.threshold, "per_class": dict(spec.per_class)},
        files=[f"{stem}_confusion_matrix.csv", f"{stem}_confusion_matrix.png", f"{stem}_precision_coverage.png"])
    # Beside another model, every ticket with a value counts, a value this model does not know as its mistake
    # (a value only one of two models learnt would otherwise drop out of the comparison, and its loss with it).
    with_value = np.array([bool(value) for value in values])
    right = np.asarray(spec.labels, dtype=object)[np.asarray(logits).argmax(axis=1)] == np.asarray(values, dtype=object)
    outcomes = FieldOutcomes(ACCURACY, _file_rows(tickets)[with_value], right[with_value][:, None].astype(int))
    return FieldRun(spec, section, scored, outcomes)


def _tags_run(spec: FieldHead, rows: Sequence[list[str] | None], logits: np.ndarray, file_rows: np.ndarray
              ) -> FieldRun:
    """The tags field: a tag is given when its score reaches its threshold, as the predictor gives it."""
    tags = list(spec.labels)
    known_tags = set(tags)
    without = sum(row is None for row in rows)
    unknown_of = [[tag for tag in row if tag not in known_tags] if row is not None else [] for row in rows]
    if without == len(rows):
        return FieldRun(spec, FieldUnavailable(name=spec.name, kind=spec.kind,
                                               reason="no test ticket has a value in the tags column"))
    truth = tag_matrix(rows, tags)
    scores = sigmoid(logits)
    thresholds = [spec.threshold_of(tag) for tag in tags]
    given = (scores >= np.array(thresholds)).astype(int)
    known, outcomes = tag_outcomes(given, truth)
    metrics = metrics_of_tag_counts(outcomes, tags)
    true_tags, given_tags = outcomes[..., 0] + outcomes[..., 2], outcomes[..., 0] + outcomes[..., 1]
    predicted = given_tags.sum(axis=0)
    per_tag = [TagRow(tag=tag, support=info["support"], predicted=int(predicted[j]), precision=info["precision"],
                      recall=info["recall"], f1=info["f1"], threshold=thresholds[j])
               for j, (tag, info) in enumerate(metrics["per_tag"].items())]
    section = TagsSection(
        name=spec.name, kind=spec.kind, tags=tags, tickets=metrics["tickets"], without_value=without,
        unknown_tags=dict(Counter(tag for unknown in unknown_of for tag in unknown).most_common()),
        micro_f1=metrics["micro_f1"], macro_f1=metrics["macro_f1"],
        micro_precision=metrics["micro_precision"], micro_recall=metrics["micro_recall"],
        subset_accuracy=metrics["subset_accuracy"],
        tickets_without_tags=int((true_tags.sum(axis=1) == 0).sum()),
        tickets_given_no_tag=int((given_tags.sum(axis=1) == 0).sum()), per_tag=per_tag)
    # Beside another model, a tag this one does not know is one it never gives: missed, not left out.
    counts = outcomes.sum(axis=1)
    counts[:, 2] += [len(unknown) for unknown, kept in zip(unknown_of, known) if kept]
    return FieldRun(spec, section, outcomes=FieldOutcomes(MICRO_F1, file_rows[known], counts))


# ---------------------------------------------------------------- beside another bundle


def compared_fields(runs: Sequence[FieldRun], other: dict[str, FieldOutcomes]) -> dict[str, FieldComparison]:
    """Each field the other bundle was measured on (``other``, by name) against this model's, on the test tickets
    both were measured on; where this model was not (or on fewer than 2 of the same tickets), the other's figure
    alone."""
    own = {run.spec.name: run.outcomes for run in runs if run.outcomes is not None}
    compared = {}
    for name, theirs in other.items():
        ours = own.get(name)
        paired = _on_common_tickets(ours, theirs) if ours is not None and ours.measure == theirs.measure else None
        if paired is None:
            compared[name] = FieldComparison(name, theirs.measure, None, float(theirs.figure()), len(theirs.rows),
                                             None)
        else:
            compared[name] = FieldComparison(name, theirs.measure, float(paired[0].figure()),
                                             float(paired[1].figure()), len(paired[0].rows), _field_gap(*paired))
    return compared


def _on_common_tickets(ours: FieldOutcomes, theirs: FieldOutcomes) -> tuple[FieldOutcomes, FieldOutcomes] | None:
    """Both models' outcomes on the test tickets both were measured on; None for fewer than 2 (no comparison)."""
    common, mine, its = np.intersect1d(ours.rows, theirs.rows, return_indices=True)
    if len(common) < 2:
        return None
    return (FieldOutcomes(ours.measure, common, ours.counts[mine]),
            FieldOutcomes(theirs.measure, common, theirs.counts[its]))


def _field_gap(ours: FieldOutcomes, theirs: FieldOutcomes) -> Interval:
    """This model's figure minus the other's on the same tickets, with a 95 % interval: for accuracy the exact one
    of the tickets only one model gets right, for micro-F1 (not a mean over tickets) a paired bootstrap."""
    if ours.measure == ACCURACY:
        return accuracy_gap(*disagreements(ours.counts[:, 0].astype(bool), theirs.counts[:, 0].astype(bool)),
                            len(ours.rows))
    return paired_bootstrap(lambda rows: ours.figure(ours.counts[rows]) - theirs.figure(theirs.counts[rows]),
                            len(ours.rows))


# ---------------------------------------------------------------- thresholds into the bundle


def field_thresholds(runs: Sequence[FieldRun], precision: float) -> dict[str, FieldThresholdsApplied]:
    """Per single-label field scored on the test file, the per-class review thresholds reaching ``precision``
    (chosen as the label's are, :func:`classifier.evaluate.class_thresholds`), by field name; each field's
    section records its own."""
    applied = {}
    for run in runs:
        if run.scored is None or not isinstance(run.section, SingleFieldSection):
            continue
        # No guide: a threshold chosen on a few lucky tickets would switch it on, so all of it goes to review.
        if _majority_if_no_guide(run.section) is not None:
            per_class = dict.fromkeys(run.spec.labels, ALWAYS_REVIEW)
        else:
            per_class = {label: info["threshold"] for label, info in class_thresholds(run.scored, precision).items()}
        run.section.thresholds_applied = applied[run.spec.name] = FieldThresholdsApplied(
            target_precision=precision, tickets=run.section.tickets, per_class=per_class,
            expected=Routing(**routing_with(run.scored, per_class.__getitem__)))
    return applied


def with_field_thresholds(fields: list[FieldHead], applied: dict[str, FieldThresholdsApplied]) -> list[FieldHead]:
    """The manifest's ``fields`` with the per-class thresholds ``applied`` (by field name) in place of theirs."""
    return [spec.model_copy(update={"per_class": applied[spec.name].per_class}) if spec.name in applied else spec
            for spec in fields]


# ---------------------------------------------------------------- warnings, summary, files


def field_warnings(sections: dict[str, FieldSection], applied: bool) -> list[str]:
    """What a reviewer must know about the fields' numbers: fields not evaluated, values left out."""
    warnings = []
    for name, section in sections.items():
        if isinstance(section, FieldUnavailable):
            warnings.append(f"field {name!r} not evaluated: {section.reason}"
                            + ("; its thresholds in the bundle are left as they were"
                               if applied and section.kind == "single" else ""))
            continue
        if isinstance(section, SingleFieldSection) and (hint := _majority_hint(name, section)):
            warnings.append(hint)
        if isinstance(section, SingleFieldSection) and section.spellings_matched:
            warnings.append(spellings_warning(f"field {name!r}: test values", section.spellings_matched))
        unknown = section.unknown_values if isinstance(section, SingleFieldSection) else {}
        if unknown:
            count = sum(unknown.values())
            listed = first_of([f"{value!r} ({n})" for value, n in unknown.items()], LISTED_VALUES)
            warnings.append(f"field {name!r}: {count} test ticket{'s' if count != 1 else ''} with values the model "
                            f"was not trained on, left out of its numbers: {listed}")
    return warnings


def _majority_if_no_guide(section: SingleFieldSection) -> ClassRow | None:
    """The field's most common value where its answers on the test file are hardly better than always giving
    it; None where they are (or no ticket tells)."""
    if not section.tickets or not section.per_class:
        return None
    common = max(section.per_class, key=lambda row: row.support)
    return common if hardly_beats_majority(section.metrics.accuracy, common.support / section.tickets) else None


def _majority_hint(name: str, section: SingleFieldSection) -> str | None:
    """A warning where the field's model is hardly better than always answering its most common value: its
    answers and needs_review flags then tell an agent nothing."""
    if (common := _majority_if_no_guide(section)) is None:
        return None
    share = common.support / section.tickets
    right = round(section.metrics.accuracy * section.tickets)  # in tickets: the two shares compare exactly
    compared = "less than" if right < common.support else "no more than" if right == common.support else \
        "hardly more than"
    return (f"field {name!r} is right on {section.metrics.accuracy:.1%} of its test tickets, {compared} "
            f"always answering {common.label!r} would be ({share:.1%}): its answers are no guide; train on more "
            "tickets with it, or leave the field out")


def summary_lines(fields: dict[str, dict[str, Any]] | None) -> list[str]:
    """The terminal's lines on the fields, from report.json's ``fields``: one per field."""
    lines = []
    for name, section in (fields or {}).items():
        if "reason" in section:
            lines.append(f"field {name}: not evaluated: {section['reason']}")
            continue
        left_out = section["without_value"] + sum(section.get("unknown_values", {}).values())
        counted = f"{section['tickets']} tickets" + (f", {left_out} left out (no value it knows)" if left_out else "")
        if section["kind"] == "tags":
            lines.append(f"field {name} (tags, {counted}): micro F1 {section['micro_f1']:.3f}, macro F1 "
                         f"{section['macro_f1']:.3f}, subset accuracy {section['subset_accuracy']:.1%}")
            continue
        metrics, coverage = section["metrics"], section["precision_coverage"]
        routed = routed_shown(metrics["at_target"], coverage["target_precision"])
        lines.append(f"field {name} (single label, {counted}): accuracy {metrics['accuracy']:.1%}, macro F1 "
                     f"{metrics['macro_f1']:.3f}; routed at {coverage['target_precision']:.0%} precision: {routed}")
    return lines


def field_files(runs: Sequence[FieldRun]) -> list[str]:
    """The report files the fields add (:class:`SingleFieldSection`'s ``files``)."""
    return [name for run in runs if isinstance(run.section, SingleFieldSection) for name in run.section.files]


def field_images(runs: Sequence[FieldRun]) -> dict[str, bytes]:
    """Per single-label field scored: its confusion matrix and precision / coverage curves, by file name."""
    from classifier import plots  # matplotlib only when a report is drawn
    from classifier.evaluate import coverage_curve

    images = {}
    for run in runs:
        section = run.section
        if run.scored is None or not isinstance(section, SingleFieldSection):
            continue
        matrix, coverage = section.confusion_matrix, section.precision_coverage
        csv_name, matrix_name, curve_name = section.files
        images[matrix_name] = plots.confusion_matrix_png(np.asarray(matrix.matrix), matrix.labels,
                                                         matrix.display_order, subject=section.name)
        images[curve_name] = plots.precision_coverage_png(
            {section.name: coverage_curve(run.scored.routable, run.scored.correct)},
            coverage.target_precision, coverage.recommended, subject=section.name,
            per_class=coverage.with_per_class_thresholds)
    return images

