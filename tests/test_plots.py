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
