"""The report's pictures: sizes that stay readable whatever the class names."""

from __future__ import annotations

import numpy as np
from PIL import Image


def test_a_very_long_class_name_does_not_crowd_out_the_confusion_matrix() -> None:
    import io

    from classifier.plots import confusion_matrix_png

    def width(labels: list[str]) -> int:
        return Image.open(io.BytesIO(confusion_matrix_png(np.eye(3, dtype=int) * 5, labels, [0, 1, 2]))).width

    forty = "a class name of exactly forty characters"
    # Cut to about forty characters: the picture is as wide as with a forty-character name (not 5 times wider).
    assert width(["a", "b", forty + " and then a great deal more " * 10]) < 1.05 * width(["a", "b", forty])


def test_class_and_model_names_with_dollar_signs_are_drawn_as_written() -> None:
    """matplotlib reads text between two ``$`` as math: ``$$ billing`` raised in its parser; no report was written."""
    import io

    from classifier.plots import confusion_matrix_png, precision_coverage_png

    labels = ["$$ billing", "refunds of $5 or $10", r"\frac{a}{b} $x^"]
    picture = confusion_matrix_png(np.eye(3, dtype=int) * 5, labels, [0, 1, 2])
    assert Image.open(io.BytesIO(picture)).width > 0
    curve = (np.linspace(0, 1, 5), np.linspace(1, 0, 5), np.linspace(0.8, 1, 5))
    assert precision_coverage_png({"$$ model": curve, "$old$": curve}, 0.95, None)
