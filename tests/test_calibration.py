"""Temperature scaling: the fitted temperature undoes over- and under-confidence."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.calibration import fit_temperature


def test_temperature_undoes_over_and_under_confidence() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, size=400)
    right = rng.random(400) < 0.7  # a model right 70 % of the time
    predicted = np.where(right, truth, (truth + 1) % 5)
    logits = np.eye(5)[predicted] * 2.0  # a confidence of about 0.65 for its label
    assert fit_temperature(logits * 4, truth)["temperature"] > 1  # told far surer than 70 %: cooled down
    assert fit_temperature(logits / 4, truth)["temperature"] < 1  # told barely surer than chance: sharpened
    few = fit_temperature(logits[:10], truth[:10])
    assert few["temperature"] == 1.0 and few["skipped"] == "fewer than 50 validation tickets"
    # Logits far too small to explain 70 % right: the best temperature is past its floor, and even there the
    # mean confidence stays under the accuracy: the floor, the nearest to right (1 would be the farthest).
    extreme = fit_temperature(logits / 200, truth)
    assert extreme["why"].startswith("the likelihood fit ran to its bound (0.1")
    assert extreme["temperature"] == 0.1
    assert extreme["method"] == "mean confidence at its lower bound to the cautious accuracy"
    # No mistakes: the likelihood would push the temperature to its floor and every confidence to 1.0. The
    # mean confidence is matched to the lower end of the accuracy's 95 % Wilson interval instead, not 1.
    flawless = fit_temperature(np.eye(5)[truth] * 3.0, truth)  # a confidence of 0.83 for the right label, always
    assert flawless["method"] == "mean confidence matched to the cautious accuracy"
    assert flawless["why"] == "fewer than 5 mistakes on the validation split"
    wilson = 400 / (400 + 1.959964 ** 2)  # the Wilson lower bound of 400 right of 400
    assert flawless["target_confidence"] == pytest.approx(wilson, abs=1e-6)
    # softmax of (3, 0, 0, 0, 0) / T has a top probability of wilson when exp(3 / T) = 4 wilson / (1 - wilson)
    assert flawless["temperature"] == pytest.approx(3 / np.log(4 * wilson / (1 - wilson)), abs=1e-5)
    broken = logits.copy()
    broken[0] = np.nan  # a model giving NaN: no temperature, and no crash at the end of training
    assert fit_temperature(broken, truth)["skipped"] == "validation scores that are not numbers"
