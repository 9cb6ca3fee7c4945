"""Out-of-scope detection: how far a ticket lies from every queue the model was trained on.

A classifier must pick one of its labels, and it picks one confidently for spam, auto-replies or
a kind of problem no queue handles yet. The fine-tuned encoder's feature space knows better: a
ticket of a known queue lands near that queue's training tickets, an unknown kind of ticket lands
away from all of them. The score combines two pieces of evidence:

- the Mahalanobis distance to the nearest class mean with one covariance shared by the classes (Lee
  et al. 2018; Podolskiy et al. 2021 for fine-tuned transformers), on the features the classification
  head reads: the first token of the last layer (:data:`FEATURE`), which the exported ONNX model
  outputs beside the logits;
- the energy of the logits, ``-logsumexp`` (Liu et al. 2020): low when some queue's logit is high.

Each becomes a p-value, the share of in-scope validation tickets that score at least as high, and
the score is Fisher's combination of the two, ``-log p_distance - log p_energy``: no weight to choose,
and both kept on the scale where the threshold sits. On BANKING77 with a quarter of its intents hidden
(six seeds) it flagged 1.29x the out-of-scope tickets the calibrated softmax did at exactly 1 % in-scope
abstention, where the distance alone flagged 1.19x (docs/benchmarks.md, "Out-of-scope detection").

At training, :func:`fit_detector` fits the class means and a shrunk covariance on the training
split's features, :meth:`OutOfScopeDetector.with_references` keeps the validation split's distances
and energies, and :func:`choose_threshold` takes the score that a target share of the validation
split's tickets exceeds (the in-scope abstention, 1 % by default). All go into the bundle as plain
arrays (``out_of_scope.npz``, no pickles) and the manifest's ``out_of_scope`` section. Serving needs
numpy and scipy's BLAS only: with the covariance folded into a triangular whitening matrix, the
distance is a triangular and a plain matrix-vector product and a nearest-mean search. A detector
saved without references (bundles before them) scores by the distance alone, as it did.

Tickets of an "Other" class are left out of the fit: that class is everything the other queues are
not, so it has no centre, and its spread would blur the covariance that the known queues share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classifier.errors import UserError
from classifier.numerics import shown_score

METHOD = "mahalanobis+energy"  # Fisher's combination; "mahalanobis" alone in bundles before it
FEATURE = "first_token"  # the last layer's first-token state, as the classification head reads it
FEATURES_OUTPUT = "features"  # the ONNX model's output holding them


@dataclass(frozen=True)
class OutOfScopeDetector:
    """Squared Mahalanobis distance to the nearest class mean, per feature dimension.

    ``whitening`` is ``W`` with ``W.T @ W`` the shared precision matrix, so the distance of ``x`` to
    mean ``m`` is ``|W x - W m|^2``; ``centres`` holds the whitened class means, one row each. Dividing
    by the dimension puts a typical in-scope ticket near 1 whatever the encoder's width.
    """

    whitening: np.ndarray  # (dim, dim) float64, upper triangular
    centres: np.ndarray  # (classes fitted, dim) float64
    # The in-scope validation tickets' distances and energies, sorted; None: score by the distance alone.
    distances: np.ndarray | None = None
    energies: np.ndarray | None = None
    # At batch 1 the score's cost is reading its matrices: the model's run has just pushed them out of the
    # CPU caches, and reading them pushes out the model's weights. So W is kept packed (its upper triangle
    # column by column, as BLAS's tpmv reads it: half the bytes) and in float32, beside C W, whose rows'
    # products with x are the products z.c with every centre; |c|^2 / 2 is kept in float64.
    _packed: np.ndarray = field(init=False, repr=False)
    _centre_products: np.ndarray = field(init=False, repr=False)
    _half_centre_norms: np.ndarray = field(init=False, repr=False)
    _tpmv: Any = field(init=False, repr=False)
    # (values, -log p) points that the score interpolates, the reference values and a tail past them: one
    # numpy call per reference.
    _distance_evidence: tuple[np.ndarray, np.ndarray] | None = field(init=False, repr=False, default=None)
    _energy_evidence: tuple[np.ndarray, np.ndarray] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        from scipy.linalg.blas import stpmv  # here, not at the first ticket: scipy.linalg takes ~0.2 s to import

        whitening, centres = self.whitening, self.centres
        if (whitening.ndim != 2 or centres.ndim != 2 or whitening.shape[0] != whitening.shape[1]
                or whitening.shape[1] != centres.shape[1] or np.any(np.tril(whitening, -1))):
            # The score reads W's upper triangle only: a full matrix would be scored wrongly, not refused.
            raise ValueError(f"a {whitening.shape} whitening matrix, upper triangular, and {centres.shape} centres")
        if not (np.isfinite(whitening).all() and np.isfinite(centres).all()):
            raise ValueError("the whitening matrix and the centres must hold numbers only (no NaN or infinity)")
        if (self.distances is None) != (self.energies is None) or any(
                reference is not None and (reference.ndim != 1 or len(reference) == 0 or
                                           np.any(np.diff(reference) < 0) or not np.isfinite(reference).all())
                for reference in (self.distances, self.energies)):
            raise ValueError("distances and energies both or neither, each a sorted list of numbers")
        object.__setattr__(self, "_tpmv", stpmv)
        lower = np.tril_indices(self.dimension)  # W's transpose row by row: W's upper triangle column by column
        object.__setattr__(self, "_packed", np.ascontiguousarray(self.whitening.T[lower], dtype=np.float32))
        object.__setattr__(self, "_centre_products", (self.centres @ self.whitening).astype(np.float32))
        object.__setattr__(self, "_half_centre_norms", np.einsum("cd,cd->c", self.centres, self.centres) / 2)
        if self.distances is not None and self.energies is not None:
            object.__setattr__(self, "_distance_evidence", evidence_curve(self.distances))
            object.__setattr__(self, "_energy_evidence", evidence_curve(self.energies))

    @property
    def dimension(self) -> int:
        return int(self.whitening.shape[1])

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """One score per ticket, from its ``features`` and label ``logits`` (a row each): higher is further
        from every known queue. ``-log p_distance - log p_energy``, each p the share of in-scope validation
        tickets at least as far (:func:`evidence_curve`), interpolated between reference values so that a
        score moves by little when its value does (another engine's rounding)."""
        distances = self.distance(features)
        if self._distance_evidence is None or self._energy_evidence is None:
            return distances
        return (np.interp(distances, *self._distance_evidence)
                + np.interp(energies(logits), *self._energy_evidence))

    def with_references(self, features: np.ndarray, logits: np.ndarray) -> OutOfScopeDetector:
        """This detector with the in-scope validation tickets' ``features`` and ``logits`` as its references."""
        return OutOfScopeDetector(self.whitening, self.centres, np.sort(self.distance(features)),
                                  np.sort(energies(logits)))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """The squared Mahalanobis distance of each row of ``features`` to the nearest class mean."""
        if features.ndim != 2 or features.shape[1] != self.dimension:
            raise UserError(f"the out-of-scope detector expects {self.dimension} features per ticket, the model "
                            f"gives {features.shape[-1]}; train the bundle again")
        rows = np.asarray(features, dtype=np.float32)
        return np.fromiter(map(self._score_row, rows), dtype=np.float64, count=len(rows))

    def _score_row(self, row: np.ndarray) -> float:
        # Row by row: a matrix product's rounding depends on how many rows it holds (BLAS blocking), and a
        # ticket's shown score must not depend on its batch-mates. Few numpy calls: at batch 1 each costs
        # about as much as the arithmetic.
        whitened = self._tpmv(self.dimension, self._packed, row).astype(np.float64)
        # min |z - c|^2 = |z|^2 - 2 max (z.c - |c|^2 / 2), the maximum at the nearest centre.
        nearest = float((self._centre_products @ row - self._half_centre_norms).max())
        return max(float(whitened @ whitened) - 2 * nearest, 0.0) / self.dimension

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {"whitening": self.whitening, "centres": self.centres}
        if self.distances is not None:
            arrays |= {"distances": self.distances, "energies": self.energies}
        with open(path, "wb") as out:
            np.savez(out, **arrays)

    @classmethod
    def load(cls, path: Path, data: bytes | None = None) -> OutOfScopeDetector:
        """Read a detector saved by :meth:`save` (from ``data`` when the caller read and checked the file)."""
        import io

        try:
            with np.load(io.BytesIO(data) if data is not None else path, allow_pickle=False) as arrays:
                whitening, centres = arrays["whitening"], arrays["centres"]
                references = [arrays[name].astype(np.float64) if name in arrays.files else None
                              for name in ("distances", "energies")]
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"{path}: not an out-of-scope detector ({error}); train the bundle again") from None
        try:
            return cls(whitening.astype(np.float64), centres.astype(np.float64), *references)
        except ValueError as error:
            raise UserError(f"{path}: the detector's arrays do not fit together ({error}); train the bundle "
                            "again") from None


# Past the highest reference value, -log p grows by one every tail scale (an exponential tail) up to this
# much more; a ticket that far out is out of scope on this count alone, whatever the other says.
TAIL_EVIDENCE = 50.0
TAIL_SHARE = 0.1  # the top share of reference values whose mean excess is the tail scale


def evidence_curve(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (value, -log p) to interpolate, from the sorted ``reference`` values (distinct): the k-th (from
    0) has ``n - k`` at least as high, ``p = (n - k + 1) / (n + 1)``, never 0. Past the highest, p keeps
    falling as an exponential tail fitted to the top tenth (scale: their mean excess over its lowest), so
    that a ticket far beyond every reference ticket on one count is not capped at ``log((n + 1) / 2)``:
    with 100 validation tickets that cap let a far-away ticket with confident logits pass."""
    count = len(reference)
    evidence = np.log((count + 1) / (count + 1 - np.arange(count, dtype=np.float64)))
    top = reference[max(0, min(count - 2, int(count * (1 - TAIL_SHARE)))):]  # two values at least
    scale = float(np.mean(top - top[0])) or float(reference[-1] - reference[0]) / count or 1.0
    return (np.append(reference, reference[-1] + TAIL_EVIDENCE * scale),
            np.append(evidence, evidence[-1] + TAIL_EVIDENCE))


def energies(logits: np.ndarray) -> np.ndarray:
    """The energy of each row of label logits, ``-logsumexp``: low when some label's logit is high."""
    return -np.logaddexp.reduce(np.asarray(logits, dtype=np.float64), axis=1)


def fit_detector(features: np.ndarray, label_ids: np.ndarray, ignored: tuple[int, ...] = ()) -> OutOfScopeDetector:
    """Class means and a shared covariance of the training split's features (rows labelled with an
    ``ignored`` class id left out). The covariance is Ledoit-Wolf shrunk: a small export has fewer
    tickets than the features have dimensions, and the plain estimate then cannot be inverted."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, dtype=np.float64)
    label_ids = np.asarray(label_ids)
    kept = ~np.isin(label_ids, ignored)
    features, label_ids = features[kept], label_ids[kept]
    classes = np.unique(label_ids)
    if len(features) < 2:
        raise UserError("too few training tickets to fit the out-of-scope detector")
    means = np.stack([features[label_ids == label].mean(axis=0) for label in classes])
    centred = features - means[np.searchsorted(classes, label_ids)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    # precision = L L^T (Cholesky), so |x - m|^2 under it is |L^T (x - m)|^2: W = L^T.
    whitening = np.linalg.cholesky((precision + precision.T) / 2).T
    return OutOfScopeDetector(whitening, means @ whitening.T)


def check_abstention(abstention: float) -> None:
    if not 0 <= abstention < 1:
        raise UserError(f"--oos-abstention must be at least 0 and below 1, got {abstention}")


# Past the highest kept score when no ticket is to be flagged: another engine or batch moves a score by
# about 1e-6, and the ticket that set the threshold must not be flagged by that.
TOP_MARGIN = 1e-3


def choose_threshold(scores: np.ndarray, abstention: float) -> float:
    """A score that at most a share ``abstention`` of these (in-scope) tickets exceed: halfway between the
    highest score kept and the lowest flagged, so that the last digits of another run change nothing."""
    check_abstention(abstention)
    if len(scores) == 0:
        raise UserError("no validation tickets to choose the out-of-scope threshold on")
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    kept = max(1, int(np.ceil((1 - abstention) * len(ordered) - 1e-9)))  # tickets at or below the threshold
    highest = ordered[kept - 1]
    above = ordered[kept] if kept < len(ordered) else highest + 2 * TOP_MARGIN * max(abs(highest), 1.0)
    return shown_score(float((highest + above) / 2))  # as predictions show scores


def torch_features(outputs: Any) -> Any:
    """:data:`FEATURE` from a transformers model's outputs (run with ``output_hidden_states=True``)."""
    return outputs.hidden_states[-1][:, 0]
