"""Temperature scaling: make a fine-tuned model's confidences mean what they say.

Label smoothing (a training default) keeps a model's softmax below about
``0.9 + 0.1 / classes``, so a confidence of 0.93 could be the model's surest answer.
Dividing the logits by one temperature, fitted on the validation split to minimise the
negative log-likelihood (Guo et al., 2017), fixes the scale without changing any ranking:
labels, top-k order and accuracy stay the same. Training stores the temperature in the
manifest (``calibration``); the predictor divides by it before the softmax.

When the split has too few mistakes for the likelihood to settle (a good model on a small
split: the very case where label smoothing leaves it most under-confident), the temperature is
instead the one at which the mean confidence equals a cautious estimate of the accuracy: the
lower end of its 95 % Wilson interval. Cautious because the same split chose the checkpoint, so
its accuracy is optimistic, and a flawless split must not ask for certainty. If no temperature
within the bounds reaches it, the nearest bound is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from classifier.numerics import log_loss, softmax
from classifier.options import MIN_FITTED_TICKETS

# Fewer validation tickets than this: one parameter fits their noise (in a walkthrough, 29 tickets
# drove it to its lower bound, ten times sharper confidences). Training's validation split reaches it
# where the data allows.
MIN_TICKETS = MIN_FITTED_TICKETS
# With no mistakes to weigh, the likelihood grows without bound as the temperature falls: every
# confidence would become 1.0 and nothing would ever need review. A few mistakes are needed.
MIN_MISTAKES = 5
BOUNDS = (0.1, 10.0)


def fit_temperature(logits: np.ndarray, label_ids: np.ndarray) -> dict[str, Any]:
    """The manifest's ``calibration`` section for these validation logits and true label ids."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    label_ids = np.asarray(label_ids)
    tickets = int(len(label_ids))
    mistakes = int((logits.argmax(axis=1) != label_ids).sum())
    if tickets < MIN_TICKETS:
        return {"temperature": 1.0, "tickets": tickets, "skipped": f"fewer than {MIN_TICKETS} validation tickets"}
    if not np.isfinite(logits).all():  # the export's drift check and the predictor's load check name the model
        return {"temperature": 1.0, "tickets": tickets, "skipped": "validation scores that are not numbers"}
    if mistakes < MIN_MISTAKES:
        return _matched(logits, label_ids, tickets - mistakes,
                        f"fewer than {MIN_MISTAKES} mistakes on the validation split")
    fitted = minimize_scalar(lambda log_t: negative_log_likelihood(logits, label_ids, float(np.exp(log_t))),
                             bounds=tuple(np.log(BOUNDS)), method="bounded")
    temperature = float(np.exp(fitted.x))
    if not BOUNDS[0] * 1.01 < temperature < BOUNDS[1] / 1.01:
        return _matched(logits, label_ids, tickets - mistakes,
                        f"the likelihood fit ran to its bound ({temperature:.3g})")
    return {"temperature": round(temperature, 6), "tickets": tickets, "method": "likelihood",
            "validation_nll": _nll_before_after(logits, label_ids, temperature)}


def _matched(logits: np.ndarray, label_ids: np.ndarray, right: int, why: str) -> dict[str, Any]:
    """The temperature at which the mean confidence equals the cautious accuracy (the nearest bound if
    none within them does: the mean confidence only falls as the temperature rises)."""
    target = wilson_lower_bound(right, len(label_ids))
    temperature, how = matched_temperature(logits, target)
    return {"temperature": round(temperature, 6), "tickets": int(len(label_ids)),
            "method": f"mean confidence {how} to the cautious accuracy", "why": why,
            "target_confidence": round(target, 6), "validation_nll": _nll_before_after(logits, label_ids, temperature)}


def matched_temperature(logits: np.ndarray, target: float) -> tuple[float, str]:
    """The temperature (within :data:`BOUNDS`) at which the mean confidence of ``logits`` is ``target``, and how
    it was reached: "matched", or the nearest bound where none within them does (the mean confidence only falls
    as the temperature rises)."""
    from scipy.optimize import brentq

    def gap(log_t: float) -> float:
        return mean_confidence(logits, float(np.exp(log_t))) - target

    low, high = np.log(BOUNDS)
    if gap(low) < 0:  # under-confident even at the lowest temperature
        return BOUNDS[0], "at its lower bound"
    if gap(high) > 0:
        return BOUNDS[1], "at its upper bound"
    return float(np.exp(brentq(gap, low, high, xtol=1e-6))), "matched"


def wilson_lower_bound(right: int, tickets: int) -> float:
    """The lower end of the 95 % Wilson score interval for an accuracy of ``right`` of ``tickets``."""
    from scipy.stats import binomtest

    return float(binomtest(right, tickets).proportion_ci(confidence_level=0.95, method="wilson").low)


def _nll_before_after(logits: np.ndarray, label_ids: np.ndarray, temperature: float) -> dict[str, float]:
    return {"raw": round(negative_log_likelihood(logits, label_ids, 1.0), 6),
            "calibrated": round(negative_log_likelihood(logits, label_ids, temperature), 6)}


def mean_confidence(logits: np.ndarray, temperature: float) -> float:
    """Mean top softmax probability of ``logits / temperature``."""
    return float(softmax(logits / temperature).max(axis=1).mean())


def negative_log_likelihood(logits: np.ndarray, label_ids: np.ndarray, temperature: float) -> float:
    """Mean -log p(true label) of ``softmax(logits / temperature)``."""
    return log_loss(logits / temperature, label_ids)
