"""The evaluation report's out-of-scope section: does the detector find the test tickets of no known queue?

Out of scope are the test tickets whose label the model was not trained on, and those labelled with
``--oos-label`` (e.g. ``out_of_scope``, or the data's own "Other" class when the model knows it: then
the section also sets the class, as trained, beside the detector). The detector's score ranks them
against the in-scope tickets (AUROC, and the share of in-scope tickets flagged at 95 % recall); the
bundle's threshold is one operating point; the curve gives the others, so a support lead can pick one
(and set it: ``out_of_scope.threshold`` in the manifest).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from classifier.report import OtherClassComparison, OutOfScopePoint, OutOfScopeSection

# Shares of the in-scope tickets flagged at the curve's points: from none to a third.
CURVE_FLAGGED = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.33)


def out_of_scope_section(scores: np.ndarray, labels: Sequence[str], predicted: Sequence[str],
                         confidence: np.ndarray, classes: Sequence[str], threshold: float, method: str,
                         oos_label: str | None = None) -> OutOfScopeSection | None:
    """The section for test tickets with these out-of-scope ``scores``, true ``labels``, the model's ``predicted``
    labels and ``confidence``; None when the test file has no out-of-scope tickets or nothing else."""
    known = set(classes) - {oos_label}
    labels_array = np.asarray(labels, dtype=object)
    out_of_scope = np.array([label not in known for label in labels])
    if out_of_scope.all() or not out_of_scope.any():
        return None
    correct = labels_array == np.asarray(predicted, dtype=object)
    in_scope_scores = scores[~out_of_scope]
    false_rates, true_rates, _ = roc_curve(out_of_scope, scores)
    levels = sorted({float(np.quantile(in_scope_scores, 1 - share, method="higher")) for share in CURVE_FLAGGED})
    return OutOfScopeSection(
        labels=sorted(set(labels_array[out_of_scope].tolist())),
        out_of_scope_tickets=int(out_of_scope.sum()),
        in_scope_tickets=int((~out_of_scope).sum()),
        method=method,
        auroc=float(roc_auc_score(out_of_scope, scores)),
        fpr_at_95_recall=float(false_rates[np.searchsorted(true_rates, 0.95)]),
        confidence_auroc=float(roc_auc_score(out_of_scope, -confidence)),
        in_scope_accuracy_without_detector=float(correct[~out_of_scope].mean()),
        at_threshold=_point(scores, out_of_scope, correct, threshold),
        curve=[_point(scores, out_of_scope, correct, level) for level in sorted(levels, reverse=True)],
        other_class=_other_class(scores > threshold, labels_array, np.asarray(predicted, dtype=object), oos_label)
        if oos_label is not None and oos_label in classes else None,
    )


def _point(scores: np.ndarray, out_of_scope: np.ndarray, correct: np.ndarray, threshold: float) -> OutOfScopePoint:
    flagged = scores > threshold
    return OutOfScopePoint(threshold=float(threshold),
                           out_of_scope_recall=float(flagged[out_of_scope].mean()),
                           in_scope_flagged=float(flagged[~out_of_scope].mean()),
                           in_scope_accuracy=float((correct & ~flagged)[~out_of_scope].mean()))


def _other_class(flagged: np.ndarray, labels: np.ndarray, predicted: np.ndarray, other: str) -> OtherClassComparison:
    """The "Other" class as the classifier learned it, against the detector, and both as the predictor uses them."""
    ours = labels == other
    by_class = predicted == other

    def share(mask: np.ndarray, within: np.ndarray) -> float:
        return float(mask[within].mean()) if within.any() else 0.0

    return OtherClassComparison(
        label=other, tickets=int(ours.sum()), caught_by_class=share(by_class, ours),
        caught_by_detector=share(flagged, ours), caught_by_either=share(by_class | flagged, ours),
        in_scope_sent_by_class=share(by_class, ~ours), in_scope_sent_by_detector=share(flagged, ~ours))
