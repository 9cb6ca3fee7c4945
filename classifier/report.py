"""The evaluation report's data model: typed sections, one per part of report.json.

:mod:`classifier.evaluate` builds a :class:`Report`; the terminal summary, the warnings, the
pictures and the HTML page read it by attribute; :meth:`Report.to_dict` turns it into
report.json (the same keys, in the same order, as the page and scripts reading that file
expect). Numbers only: no numpy here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelInfo:
    bundle: str
    name: str
    version: str
    engine: str  # int8, fp32 or torch: the model that was run
    labels: int  # how many classes
    blend_weight: float = 0.0  # the TF-IDF model's weight in the scores evaluated (classifier.blend); 0: none
    # What training measured on its validation split, as the bundle serves (None: a bundle that did not record it).
    validation_accuracy: float | None = None
    validation_tickets: int | None = None


@dataclass
class OperatingPoint:
    """Tickets with confidence >= threshold are routed automatically: how many, what share, how accurate."""

    threshold: float
    tickets: int
    coverage: float
    precision: float | None  # None: no ticket routed

    @property
    def wrong(self) -> int:
        return wrong_of(self.tickets, self.precision)


def wrong_of(tickets: int, precision: float | None) -> int:
    """Routed tickets of another class, from how many were routed and their precision (right / routed)."""
    return tickets - round((precision or 0.0) * tickets)


@dataclass
class ClassThreshold(OperatingPoint):
    """A class's own threshold, as an operating point on the tickets predicted as that class."""

    predicted: int
    source: str  # "class" (its own), "global" (too few predictions) or "unreachable"


@dataclass
class Routing:
    """Overall coverage and precision with a threshold per predicted class."""

    tickets: int
    coverage: float
    precision: float | None

    @property
    def wrong(self) -> int:
        return wrong_of(self.tickets, self.precision)


@dataclass(frozen=True)
class Headline:
    """One of the headline figures every view of a report shows (terminal, cards, side-by-side table)."""

    key: str  # the Metrics field
    title: str
    spec: str  # format() spec
    better: int  # +1: higher is better, -1: lower is better
    meaning: str  # what it says, for a support lead


# A threshold as reports show it: enough digits that one near 1 (0.999783) is not shown as "1", which set as
# the bundle's threshold would route nothing.
THRESHOLD = ".6g"
HEADLINES = (
    Headline("accuracy", "accuracy", ".1%", 1, "tickets put in the right queue"),
    Headline("macro_f1", "macro F1", ".3f", 1, "precision and recall in one score, every class counting the same"),
    Headline("weighted_f1", "weighted F1", ".3f", 1, "the same, big classes counting more"),
    Headline("ece", "calibration error", ".3f", -1, "0 = confidence is honest"),
)


@dataclass
class Metrics:
    tickets: int
    accuracy: float
    macro_f1: float
    weighted_f1: float
    ece: float  # expected calibration error
    at_target: OperatingPoint | None  # the recommended threshold; None: none reaches the target precision


@dataclass
class ClassRow:
    label: str
    support: int  # test tickets of the class
    predicted: int
    precision: float
    recall: float
    f1: float
    most_confused_with: str | None
    threshold: float
    threshold_source: str
    coverage_at_threshold: float
    routed: int  # predicted as the class at or above its threshold: sent to its queue without review
    routed_wrong: int  # of them, tickets of another queue


@dataclass
class Confusion:
    labels: list[str]
    matrix: list[list[int]]  # counts, true class per row
    display_order: list[int]  # confused classes next to each other


@dataclass
class Example:
    id: str
    confidence: float
    text: str


@dataclass
class ConfusionPair:
    true: str
    predicted: str
    count: int
    share_of_true: float
    examples: list[Example]
    the_other_way: int = 0  # tickets of `predicted` predicted as `true`: a pair confused both ways


@dataclass
class CalibrationBin:
    lower: float
    upper: float
    count: int
    confidence: float | None  # None: an empty bin
    accuracy: float | None


@dataclass
class Reliability:
    ece: float
    bins: list[CalibrationBin]
    mean_confidence: float
    accuracy: float
    verdict: str  # in words: honest on average, over- or under-confident beyond chance


@dataclass
class PrecisionCoverage:
    target_precision: float
    recommended: OperatingPoint | None
    message: str
    table: list[OperatingPoint]
    per_class_thresholds: dict[str, ClassThreshold]
    with_per_class_thresholds: Routing
    with_bundle_thresholds: Routing
    bundle_thresholds_source: dict[str, Any] | None  # the manifest's record of an earlier apply, as written there
    per_thousand: str  # the per-class routing onto 1,000 tickets like these, in words
    held: int = 0  # test tickets the out-of-scope check sends to review whatever their confidence: never routed


@dataclass
class Dropped:
    count: int
    rows: list[str]  # where: file, row, column


@dataclass
class TestFileSection:
    """The test file. report.json lists the loader's description of it (path, sha256, rows_read, ...)
    first, then the rest, all in one object."""

    source: dict[str, Any]
    evaluated: int
    is_training_file: bool
    dropped: dict[str, Dropped]  # by reason
    label_spellings_matched: dict[str, str]
    labels_without_test_tickets: list[str]
    # Evaluated tickets with the text of a ticket in the training file (the same ticket in another export);
    # None: that file is no longer where training read it, or has changed.
    training_copies: int | None = None
    repeated_ids: list[str] = field(default_factory=list)  # ids on tickets of different texts
    # Evaluated tickets with the text and label of an earlier one: the first of them, by id; and how many.
    test_copies: list[str] = field(default_factory=list)
    corrected_labels: int = 0  # labels read from the file's corrected_label column, in place of its label

    @property
    def path(self) -> Any:
        return self.source.get("path")

    @property
    def rows_read(self) -> Any:
        return self.source.get("rows_read")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {**values.pop("source"), **values}


@dataclass
class UnknownLabel:
    count: int
    ids: list[str]
    predicted_as: dict[str, int]  # most frequent first


@dataclass
class UnknownLabels:
    """Test tickets whose label the model never learned (left out of the metrics)."""

    count: int
    share: float
    labels: dict[str, UnknownLabel]  # most tickets first
    # Of them, how many a threshold per class would route (each to a wrong queue), as the "In short" box's
    # routing of the known tickets does.
    routed: int = 0


# How sentences name the models a report sets beside the evaluated one, by their report.json key.
CALLED = {"baseline": "the baseline", "compare": "the compared model"}


@dataclass
class Interval:
    """A difference between two models on the same test tickets, and a 95 % interval around it."""

    value: float
    low: float
    high: float
    verdict: str = field(init=False)  # whether the whole interval is on one side of 0

    def __post_init__(self) -> None:
        self.verdict = ("better beyond chance" if self.low > 0 else "worse beyond chance" if self.high < 0
                        else "within chance")

    def in_points(self) -> str:
        """E.g. "+1.6 points (95 % interval -1.3 to +4.6: within chance)"."""
        return (f"{_points(self.value)} points (95 % interval {_points(self.low)} to {_points(self.high)}: "
                f"{self.verdict})")


    def in_f1(self) -> str:
        """E.g. "+0.021 (95 % interval -0.010 to +0.052: within chance)"."""
        return f"{self.value:+.3f} (95 % interval {self.low:+.3f} to {self.high:+.3f}: {self.verdict})"


def _points(share: float) -> str:
    """A share as signed percentage points, "+0.0" rather than "-0.0"."""
    return f"{round(share * 100, 1) + 0.0:+.1f}"


@dataclass
class Difference:
    """The evaluated model minus another on the same test tickets: is the gap more than which tickets were drawn?"""

    accuracy: Interval
    routed: Interval  # share of tickets routed at the target precision (0 where no threshold reaches it)
    only_this_right: int  # tickets this model gets right and the other wrong
    only_other_right: int
    resamples: int
    summary: str = ""  # the above in one line, as the terminal and the page show it

    def plain(self, other: str, tickets: int) -> str:
        """The comparison in one plain sentence, for readers who skip intervals, e.g. "On these 239 tickets this
        model is not shown to be better or worse than the baseline: both gaps are within chance"."""
        accuracy, routed = self.accuracy.verdict, self.routed.verdict
        if accuracy == routed == "within chance":
            return (f"On these {tickets} tickets this model is not shown to be better or worse than {other}: both "
                    "gaps are within chance, and more test tickets might tell")
        said = {"better beyond chance": "more", "worse beyond chance": "less"}
        parts = [f"{said[accuracy]} accurate than {other}, beyond chance" if accuracy in said
                 else f"not shown more or less accurate than {other}",
                 f"routes {'more' if routed == 'better beyond chance' else 'fewer'} tickets at the target precision, "
                 "beyond chance" if routed in said else "not shown to route more or fewer"]
        return f"On these {tickets} tickets this model is {parts[0]}, and {parts[1]}"


def difference_summary(accuracy: Interval, routed: Interval, target: float, only_this_right: int,
                       only_other_right: int, other: str) -> str:
    """One line on the evaluated model against ``other`` ("the baseline"), e.g. "accuracy +1.6 points (95 %
    interval -1.3 to +4.6: within chance), routed at 95% precision ...; right on 12 tickets the baseline gets
    wrong, wrong on 8 the baseline gets right"."""
    return (f"accuracy {accuracy.in_points()}, routed at {target:.0%} precision {routed.in_points()}; right on "
            f"{only_this_right} tickets {other} gets wrong, wrong on {only_other_right} {other} gets right")


@dataclass
class SideBySide:
    """Another model (the baseline, or a compared bundle) on the same test tickets."""

    name: str
    description: str
    metrics: Metrics
    per_class_f1: dict[str, float]
    f1_delta: dict[str, float]  # the evaluated model's F1 minus this one's, per class present in the test set
    difference: Difference | None = None  # None: the two were not scored on the same tickets
    # A compared bundle's fields besides the label, by column, each against the evaluated model's where the test
    # file could measure it; None for the baseline, which predicts the label alone.
    fields: dict[str, FieldComparison] | None = None


@dataclass
class Unavailable:
    """A side-by-side model that could not be evaluated, and why."""

    name: str
    metrics: None = field(default=None, init=False)  # as a side-by-side section without numbers reads
    reason: str = ""


@dataclass
class AppliedThresholds:
    """The per-class thresholds written into the bundle's manifest."""

    target_precision: float
    engine: str
    served_engine: str
    data: dict[str, Any]  # path, sha256
    tickets: int
    set_at: str
    expected: Routing
    per_class: dict[str, float]


@dataclass
class OutOfScopePoint:
    """Flag tickets whose out-of-scope score is above ``threshold``: what that catches and costs."""

    threshold: float
    out_of_scope_recall: float  # share of the out-of-scope tickets flagged
    in_scope_flagged: float  # share of the in-scope tickets flagged (sent to review for nothing)
    in_scope_accuracy: float  # right and not flagged, over the in-scope tickets


@dataclass
class OtherClassComparison:
    """The data's "Other" class trained as a class, against the detector, on the test tickets labelled with it."""

    label: str
    tickets: int
    caught_by_class: float  # share predicted as the class
    caught_by_detector: float  # share flagged out of scope
    caught_by_either: float  # what the predictor does: flagged tickets go to the class
    in_scope_sent_by_class: float  # share of the other tickets predicted as the class
    in_scope_sent_by_detector: float  # share of the other tickets flagged


@dataclass
class OutOfScopeSection:
    """How well the detector tells tickets of no known queue from the rest (``classifier.oos``)."""

    labels: list[str]  # the test labels counted as out of scope
    out_of_scope_tickets: int
    in_scope_tickets: int
    method: str
    auroc: float  # the detector's score
    fpr_at_95_recall: float  # in-scope share flagged when 95 % of the out-of-scope tickets are
    confidence_auroc: float  # the calibrated confidence's (low confidence as the score), for comparison
    in_scope_accuracy_without_detector: float
    at_threshold: OutOfScopePoint  # the bundle's threshold for the model run
    curve: list[OutOfScopePoint]  # from flagging nothing to a third of the in-scope tickets
    other_class: OtherClassComparison | None = None


@dataclass
class FieldThresholdsApplied:
    """A single-label field's per-class review thresholds written into the bundle (its ``fields`` entry)."""

    target_precision: float
    tickets: int
    expected: Routing  # coverage and precision on these test tickets with them
    per_class: dict[str, float]


@dataclass
class SingleFieldSection:
    """A single-label field besides the label (priority, queue), reported as the label is, on the test tickets
    with a value the model knows (``classifier.evaluate_fields``)."""

    name: str  # the column
    kind: str  # "single"
    labels: list[str]  # the field's classes
    tickets: int  # evaluated
    without_value: int  # test tickets with an empty cell: left out
    unknown_values: dict[str, int]  # values the model was not trained on (left out), most tickets first
    spellings_matched: dict[str, str]  # test values read as the model spells them (case, number format)
    labels_without_test_tickets: list[str]
    metrics: Metrics
    per_class: list[ClassRow]
    confusion_matrix: Confusion
    precision_coverage: PrecisionCoverage
    bundle_thresholds: dict[str, Any]  # the field's review thresholds in the bundle as evaluated: global, per_class
    files: list[str]  # confusion matrix CSV and PNG, precision / coverage PNG
    thresholds_applied: FieldThresholdsApplied | None = None


@dataclass
class TagRow:
    tag: str
    support: int  # test tickets with the tag
    predicted: int  # test tickets given it
    precision: float
    recall: float
    f1: float
    threshold: float  # the tag is given when its score reaches this (chosen at training for F1)


@dataclass
class TagsSection:
    """The tags field: each tag given when its score reaches its threshold, on the test tickets with a value."""

    name: str  # the column
    kind: str  # "tags"
    tags: list[str]
    tickets: int  # evaluated
    without_value: int  # test tickets with no value in the column (an empty list is a ticket without tags)
    unknown_tags: dict[str, int]  # tags on test tickets the model does not give (not counted), most first
    micro_f1: float  # over every (ticket, tag) decision
    macro_f1: float  # every tag counts the same
    micro_precision: float  # of the tags given, the share right
    micro_recall: float  # of the tags the tickets carry, the share given
    subset_accuracy: float  # tickets given exactly their tags
    tickets_without_tags: int
    tickets_given_no_tag: int
    per_tag: list[TagRow]


@dataclass
class FieldUnavailable:
    """A field that could not be evaluated on this test file, and why."""

    name: str
    kind: str
    reason: str


FieldSection = SingleFieldSection | TagsSection | FieldUnavailable


@dataclass
class FieldComparison:
    """A field of the evaluated model against a compared bundle's, on the test tickets both were measured on:
    accuracy for a single label, micro-F1 for tags."""

    name: str  # the column
    measure: str  # "accuracy" or "micro-F1"
    this: float | None  # None: this model could not be measured on it (it lacks the field, or knows no value)
    other: float
    tickets: int  # measured on: both models' (the compared model's alone, where this one was not measured)
    gap: Interval | None  # this minus other, with a 95 % interval: exact for accuracy, a paired bootstrap for F1
    # In words, as the terminal, the page and a retrain's decision say it, e.g. "priority accuracy +2.1 points
    # (95 % interval -1.0 to +5.2: within chance) on 150 tickets".
    summary: str = field(init=False)

    def __post_init__(self) -> None:
        gap = self.gap
        if gap is None:
            self.summary = (f"{self.name}: the compared model was measured on {self.tickets} tickets, this one could "
                            "not be (it does not predict the field, predicts it as another kind, knows none of its "
                            "values, or shares fewer than 2 measured tickets with it)")
            return
        said = gap.in_points() if self.measure == "accuracy" else gap.in_f1()
        self.summary = f"{self.name} {self.measure} {said} on {self.tickets} tickets"


@dataclass
class Report:
    created_at: str
    model: ModelInfo
    metrics: Metrics
    per_class: list[ClassRow]
    confusion_matrix: Confusion
    top_confusions: list[ConfusionPair]
    calibration: Reliability
    precision_coverage: PrecisionCoverage
    data: TestFileSection
    unknown_labels: UnknownLabels
    baseline: SideBySide | Unavailable | None
    compare: SideBySide | None
    out_of_scope: OutOfScopeSection | None = None  # test tickets of no known queue, and a detector to find them
    # The fields besides the label, by column, in the manifest's order; None (no key): the label alone.
    fields: dict[str, FieldSection] | None = None
    thresholds_applied: AppliedThresholds | None = None  # only when thresholds were written (no key otherwise)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def others(self) -> list[tuple[str, SideBySide]]:
        """The models evaluated next to this one, as ("baseline" | "compare", section)."""
        return [(key, other) for key, other in (("baseline", self.baseline), ("compare", self.compare))
                if isinstance(other, SideBySide)]

    def to_dict(self) -> dict[str, Any]:
        """report.json's content."""
        report = dataclasses.asdict(self)
        report["data"] = self.data.to_dict()
        if self.thresholds_applied is None:
            del report["thresholds_applied"]
        if self.fields is None:  # a bundle of the label alone: the report it always had
            del report["fields"]
        return report
