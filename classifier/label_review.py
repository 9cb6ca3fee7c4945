"""Likely mislabelled tickets: out-of-fold probabilities of the TF-IDF baseline, confident-learning style.

Every ticket is scored by the baseline's classifier (:mod:`classifier.baseline`, the same features and
classifier) fitted on the other folds of a stratified k-fold split, so that no ticket is judged by a
model that learnt its label; near-duplicates share a fold, so that none is judged by a model that
learnt its twin's. The features (TF-IDF vocabularies and weights) are fitted once on all tickets: they
see no labels.

How many tickets of a class look mislabelled is counted as confident learning counts them: a class's
threshold is its mean out-of-fold probability on the tickets labelled with it (how sure the model is of
the class where the labels say it is right), and a ticket counts when another class's probability
reaches that class's threshold and beats its own label's. Which tickets are flagged: that many of the
class's tickets, those with the lowest probability of their label (Northcutt et al.'s "prune by
class"). On BANKING77 with 5 % of labels flipped, flagging the counted tickets themselves found 68 % of
the flips at a precision of 0.68; flagging the least likely as many found 84 % at 0.84
(docs/benchmarks.md, "Label noise"). The suggestion is the most probable other class, and flagged
tickets rank by the margin between its probability and the label's.

Near-duplicates labelled otherwise are listed too: tickets whose word TF-IDF vectors have a cosine of
at least 0.95 (identical texts, whatever their case, punctuation and spacing, have 1).

Written for this project: cleanlab, which does this too, is AGPL.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from threadpoolctl import threadpool_limits

from classifier.baseline import baseline_classifier, baseline_features
from classifier.columns import label_line
from classifier.cpus import usable_cpus
from classifier.data import (
    CORRECTED_LABEL_COLUMN,
    DataReport,
    deduplicate,
    flat_columns,
    from_review_file,
    load_tickets,
    one_spelling_per_label,
    write_csv,
)
from classifier.errors import UserError, one_line
from classifier.readers import records_and_columns
from classifier.text import TextOptions

DEFAULT_FOLDS = 5
NEAR_DUPLICATE_COSINE = 0.95
REVIEW_COLUMNS = ("suggested_label", "confidence", "reason", CORRECTED_LABEL_COLUMN)
PARALLEL_FROM = 2000  # tickets from which the folds are fitted in parallel processes (starting them costs)
_SIMILARITY_BLOCK = 2**23  # entries of one block of the cosine matrix (rows x tickets)
# What flagging found on BANKING77 with 5 % of its training labels flipped at random (docs/benchmarks.md).
MEASURED = ("on BANKING77 with 5 % of labels flipped, 84 % of the tickets flagged were flipped, and 84 % of those "
            "flipped flagged")


@dataclass
class Finding:
    """A ticket whose label looks wrong, or that has a near-duplicate labelled otherwise."""

    index: int  # among the reviewed tickets
    label: str
    suggested: str  # the label the out-of-fold model prefers (for a near-duplicate: of the two labels)
    confidence: float  # the out-of-fold probability of the suggested label
    margin: float  # that minus the probability of the given label
    reasons: list[str] = field(default_factory=list)

    def entry(self, texts: Sequence[str], ids: Sequence[str]) -> dict[str, Any]:
        """The finding as the data report lists it."""
        return {"id": ids[self.index], "text": texts[self.index][:200], "label": self.label,
                "suggested_label": self.suggested, "confidence": round(self.confidence, 3),
                "reason": "; ".join(self.reasons)}


def entry_line(entry: dict[str, Any], width: int) -> str:
    """One finding (:meth:`Finding.entry`) on a line, its text cut to ``width``: the change suggested, or for a
    near-duplicate whose own label the model prefers, that label kept and the ticket labelled otherwise."""
    if entry["suggested_label"] != entry["label"]:
        verdict = f"{entry['label']!r} -> {entry['suggested_label']!r} ({entry['confidence']:.2f})"
    else:
        verdict = f"{entry['label']!r} kept, {entry['reason']}"
    return f"  {entry['id']}: {verdict}: {entry['text'][:width]!r}"


@dataclass
class LabelReview:
    tickets: int
    folds: int
    thresholds: dict[str, float]  # per class: its mean out-of-fold probability on the tickets labelled with it
    probabilities: np.ndarray  # out-of-fold, one column per class in sorted order
    flagged: list[Finding]  # likely mislabelled, the largest margin first
    duplicates: list[Finding]  # not flagged, but a near-duplicate of a ticket labelled otherwise

    def findings(self) -> list[Finding]:
        return self.flagged + self.duplicates

    def summary(self) -> dict[str, Any]:
        return {"method": f"TF-IDF baseline, {self.folds}-fold out-of-fold probabilities", "tickets": self.tickets,
                "flagged": len(self.flagged), "near_duplicates": len(self.duplicates), "measured": MEASURED}


def review_labels(texts: Sequence[str], labels: Sequence[str], ids: Sequence[str] | None = None,
                  folds: int = DEFAULT_FOLDS, seed: int = 0) -> LabelReview:
    """Flag likely mislabelled tickets and near-duplicates labelled otherwise (``ids`` name tickets in
    the reasons; default: their position)."""
    ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise UserError("reviewing labels needs at least two classes")
    largest = max(Counter(labels).values())
    most = min(len(texts) // 2, largest)  # each fold needs 2 tickets, and the largest class one in each fold
    if most < 2:
        raise UserError(f"too few tickets to review in folds: {len(texts)} tickets, the largest class {largest} "
                        "(at least 4 tickets and a class of 2 are needed)")
    if not 2 <= folds <= most:
        raise UserError(f"--folds {folds}: choose 2 to {most} folds for these tickets (at most half of the "
                        f"{len(texts)} tickets and at most the {largest} of the largest class)")
    y = np.searchsorted(classes, labels)
    union = baseline_features(len(classes))  # bounded weights: see baseline.MAX_WEIGHTS
    features = union.fit_transform(list(texts))
    similar = Similar(union.transformer_list[0][1].transform(list(texts)))  # on the word n-grams
    probabilities = out_of_fold_probabilities(features, y, similar.groups, folds, seed)
    thresholds = np.array([probabilities[y == k, k].mean() for k in range(len(classes))])
    flagged = _flagged(probabilities, y, thresholds, classes)
    duplicates = _near_duplicates(similar.labelled_otherwise(y), y, probabilities, classes, ids,
                                  {f.index: f for f in flagged})
    return LabelReview(len(texts), folds, dict(zip(classes, thresholds.round(4).tolist())), probabilities, flagged,
                       duplicates)


def out_of_fold_probabilities(features: Any, y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each ticket's class probabilities from the baseline classifier fitted on the other folds; tickets of
    one ``groups`` value (near-duplicates) share a fold, so that none is judged by a model that learnt its
    twin's label.

    The folds are fitted in parallel processes on larger data, each with one BLAS thread: on cores
    that other work shares, BLAS threads waiting for each other made the review 5 times slower."""
    jobs = min(folds, usable_cpus()) if len(y) >= PARALLEL_FROM else None
    with threadpool_limits(1), warnings.catch_warnings():
        # A class with fewer tickets than folds (sklearn warns) gets probability 0 where its folds lack it.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            return cross_val_predict(baseline_classifier(seed), features, y, groups=groups, method="predict_proba",
                                     n_jobs=jobs, cv=StratifiedGroupKFold(folds, shuffle=True, random_state=seed))
        except ValueError as error:  # e.g. a fold whose other folds hold a single class: too few tickets
            raise UserError(f"the labels cannot be reviewed in {folds} folds: {one_line(error)}") from None


def _flagged(probabilities: np.ndarray, y: np.ndarray, thresholds: np.ndarray, classes: list[str]) -> list[Finding]:
    """Per class, as many tickets as look mislabelled (another class reaches its threshold and beats the
    label): those with the lowest probability of their label; the largest margin first."""
    rows = np.arange(len(y))
    given = probabilities[rows, y]
    contradicted = (probabilities >= thresholds) & (probabilities > given[:, None])
    contradicted[rows, y] = False
    counts = np.bincount(y[contradicted.any(axis=1)], minlength=len(classes))
    others = probabilities.copy()
    others[rows, y] = -1.0
    suggested = others.argmax(axis=1)
    findings = []
    for k in np.flatnonzero(counts):
        labelled = np.flatnonzero(y == k)
        for i in labelled[np.argsort(given[labelled], kind="stable")[:counts[k]]]:
            best = probabilities[i, suggested[i]]
            findings.append(Finding(int(i), classes[k], classes[suggested[i]], float(best), float(best - given[i]),
                                    [f"model: {given[i]:.2f} for the label, {best:.2f} for the suggestion ({counts[k]} "
                                     f"of the {len(labelled)} tickets labelled so look mislabelled)"]))
    return sorted(findings, key=lambda finding: -finding.margin)


def _near_duplicates(partner: dict[int, tuple[int, float]], y: np.ndarray, probabilities: np.ndarray,
                     classes: list[str], ids: list[str], flagged: dict[int, Finding]) -> list[Finding]:
    """Each ticket's near-duplicate labelled otherwise (``partner``): added to its finding if flagged, else
    a finding of its own (the most similar first), suggesting the model's choice of the two labels."""
    duplicates = []
    for i, (j, cosine) in partner.items():
        reason = f"near-duplicate of {ids[j]} labelled {classes[y[j]]!r} (cosine {min(cosine, 1.0):.2f})"
        if i in flagged:
            flagged[i].reasons.append(reason)
            continue
        k = max((y[i], y[j]), key=lambda label: probabilities[i, label])
        duplicates.append(Finding(i, classes[y[i]], classes[k], float(probabilities[i, k]),
                                  float(probabilities[i, k] - probabilities[i, y[i]]), [reason]))
    return sorted(duplicates, key=lambda finding: (-partner[finding.index][1], finding.index))


class Similar:
    """Near-duplicate tickets: word TF-IDF cosine >= NEAR_DUPLICATE_COSINE (rows of unit length, so products
    are cosines). Tickets with the same word vector (the same text but for case, punctuation and spacing)
    share one representative, and only representatives are multiplied, block by block: memory stays
    bounded however many copies of a ticket an export has."""

    def __init__(self, words: sparse.csr_matrix) -> None:
        words = words.tocsr()
        words.sort_indices()
        first: dict[bytes, int] = {}
        self.representative = np.array([first.setdefault(_row_key(words, i), i) for i in range(words.shape[0])])
        kept = np.unique(self.representative)
        self.edges = _similar_pairs(words[kept], kept)  # (i, j, cosine) between representatives, i != j
        graph = sparse.coo_matrix((np.ones(len(self.edges)), (self.edges[:, 0].astype(int),
                                  self.edges[:, 1].astype(int))), shape=(words.shape[0],) * 2)
        _, components = connected_components(graph, directed=False)
        self.groups = components[self.representative]

    def labelled_otherwise(self, y: np.ndarray) -> dict[int, tuple[int, float]]:
        """{ticket: (its most similar ticket of another label, cosine)}."""
        members: dict[int, dict[int, int]] = {}  # representative -> {label: its first ticket}
        for i, r in enumerate(self.representative):
            members.setdefault(int(r), {}).setdefault(int(y[i]), i)
        neighbours: dict[int, list[tuple[float, int]]] = {}
        for i, j, cosine in self.edges:
            neighbours.setdefault(int(i), []).append((float(cosine), int(j)))
        best = {}
        for i, r in enumerate(self.representative):
            for cosine, other in [(1.0, int(r)), *sorted(neighbours.get(int(r), []), reverse=True)]:
                partner = next((t for label, t in members[other].items() if label != y[i]), None)
                if partner is not None:
                    best[i] = (partner, cosine)
                    break
        return best


def _row_key(words: sparse.csr_matrix, i: int) -> bytes:
    start, end = words.indptr[i], words.indptr[i + 1]
    return words.indices[start:end].tobytes() + np.round(words.data[start:end], 6).tobytes()


def _similar_pairs(words: sparse.csr_matrix, index: np.ndarray) -> np.ndarray:
    """(index[a], index[b], cosine) for the rows a != b of ``words`` at cosine >= NEAR_DUPLICATE_COSINE."""
    n = words.shape[0]
    block = max(1, _SIMILARITY_BLOCK // n)
    found = [np.empty((0, 3))]
    for start in range(0, n, block):
        products = (words[start:start + block] @ words.T).tocoo()
        keep = (products.data >= NEAR_DUPLICATE_COSINE) & (products.row + start != products.col)
        found.append(np.column_stack([index[products.row[keep] + start], index[products.col[keep]],
                                      products.data[keep]]))
    return np.vstack(found)


# ---------------------------------------------------------------- the file for an agent


@dataclass
class ReviewFile:
    review: LabelReview
    rows: int  # written
    texts: list[str]
    ids: list[str]
    labels_from: str = ""  # which column the labels came from (classifier.columns.label_line)
    class_sizes: Counter[str] = field(default_factory=Counter)  # tickets per label, copies once, as train counts


def write_review(data: str | Path, output: str | Path, text_options: TextOptions | None = None,
                 label_column: str | None = None, folds: int = DEFAULT_FOLDS, seed: int = 0) -> ReviewFile:
    """Review ``data``'s labels and write every row of it to ``output`` as CSV, with the columns
    REVIEW_COLUMNS added: the findings first (most likely mislabelled first), then the other rows as
    they were. ``corrected_label`` is left for an agent to fill (a value it has already is kept):
    training reads it in place of the label."""
    data, output = Path(data), Path(output)
    if output.resolve() == data.resolve():
        raise UserError(f"{output}: is the input file; write the review to another file")
    report = DataReport()
    tickets, _ = load_tickets(data, text_options, label_column, report)
    tickets = one_spelling_per_label(tickets, report)  # 'Billing ' and 'billing' are one class, as in training
    try:
        review = review_labels(tickets.texts, tickets.labels, tickets.ids, folds, seed)
    except UserError as error:  # about these tickets: name their file
        raise UserError(f"{data}: {error}") from None
    numbered, columns = records_and_columns(data)
    from_review_file(numbered, columns)  # a review reviewed again: escaped once when written, not twice
    records = dict(numbered)
    first = [tickets.rows[finding.index] for finding in review.findings()]
    listed = set(first)
    rows = first + [row for row in records if row not in listed]
    for record in records.values():  # a review's own columns, if DATA is one, are written anew (not corrections)
        for name in REVIEW_COLUMNS[:-1]:
            record.pop(name, None)
    for finding in review.findings():
        record = records[tickets.rows[finding.index]]
        record.update(suggested_label=finding.suggested, confidence=f"{finding.confidence:.3f}",
                      reason="; ".join(finding.reasons))
    out_columns = [name for name in flat_columns(records.values(), columns) if name not in REVIEW_COLUMNS]
    write_csv(output, out_columns + list(REVIEW_COLUMNS), [records[row] for row in rows], for_spreadsheets=True,
              like=data)
    return ReviewFile(review, len(rows), tickets.texts, tickets.ids,
                      label_line(tickets.source["label_column"], report.label_alternatives),
                      Counter(deduplicate(tickets, DataReport()).labels))  # as train counts a class
