"""The evaluation report's pictures, as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files on servers without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from classifier.numerics import row_normalise  # noqa: E402
from classifier.report import THRESHOLD  # noqa: E402

if TYPE_CHECKING:
    from classifier.report import OperatingPoint, OutOfScopeSection, Reliability, Routing

DPI = 110
INCH_PT = 72
MAX_LABEL_CHARS = 40  # longer class names would squeeze the matrix itself
COLORS = ("#1f5fa8", "#d9822b", "#5b8c3a", "#8e44ad")
_Arguments = ParamSpec("_Arguments")


def _plain_text(draw: Callable[_Arguments, bytes]) -> Callable[_Arguments, bytes]:
    """Draw with every text taken literally: class and model names are the user's, and matplotlib reads
    a pair of ``$`` as math (a class ``$$ billing`` made it raise, and no report was written)."""
    @functools.wraps(draw)
    def drawn(*args: _Arguments.args, **kwargs: _Arguments.kwargs) -> bytes:
        with plt.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return drawn


@_plain_text
def confusion_matrix_png(matrix: np.ndarray, labels: list[str], order: list[int] | np.ndarray,
                         subject: str | None = None) -> bytes:
    """Rows: true class, normalised to 100 %; cells: ticket counts where the font still fits. ``subject``: the
    field the classes are of, when not the label."""
    order = np.asarray(order, dtype=int)
    counts = matrix[np.ix_(order, order)]
    names = [_short(labels[i]) for i in order]
    n = len(names)
    cell = 0.24 if n > 40 else 0.34 if n > 15 else 0.6  # inches
    label_room = 0.6 + 0.065 * max(len(name) for name in names) * _tick_size(n) / 8
    side = max(n * cell, 3.0)
    fig = plt.figure(figsize=(side + label_room + 1.6, side + label_room + 1.1), dpi=DPI)
    ax = fig.add_axes((label_room / fig.get_figwidth(), label_room / fig.get_figheight(),
                       side / fig.get_figwidth(), side / fig.get_figheight()))
    rates = row_normalise(counts)
    # A square-root scale makes the small off-diagonal rates, the confusions, visible next to the diagonal.
    colormap = matplotlib.colormaps["Blues"].with_extremes(bad="white")  # empty cells white: errors stand out
    image = ax.imshow(np.ma.masked_where(counts == 0, rates), cmap=colormap, norm=PowerNorm(0.5, vmin=0, vmax=1),
                      interpolation="nearest")
    _annotate_counts(ax, counts, rates, cell)
    _label_axes(ax, names, n)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, aspect=40)
    colorbar.set_label("share of the true class's tickets")
    colorbar.set_ticks([0, 0.05, 0.2, 0.5, 1.0], labels=["0", "5 %", "20 %", "50 %", "100 %"])
    of = f" of {_short(subject)}" if subject else ""
    ax.set_title(f"Confusion matrix{of}: each row is one true class (sums to 100 %); numbers are tickets.\n"
                 "Classes that get confused are placed next to each other.", fontsize=11, loc="left", pad=10)
    return _png(fig)


def _short(label: str) -> str:
    """A label cut to fit beside the matrix (the report's tables keep the whole name)."""
    return label if len(label) <= MAX_LABEL_CHARS else label[:MAX_LABEL_CHARS - 1] + "…"


def _tick_size(n: int) -> float:
    return 8.0 if n > 40 else 9.0 if n > 15 else 10.0


def _annotate_counts(ax: Any, counts: np.ndarray, rates: np.ndarray, cell: float) -> None:
    width = max(len(str(int(counts.max()))), 1)
    size = min(10.0, cell * INCH_PT * 0.9 / (0.62 * width))  # a digit is about 0.6 em wide
    if size < 4.5:
        return  # the numbers would not be readable; the colours still are
    for i, j in zip(*np.nonzero(counts)):
        ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=size,
                color="white" if rates[i, j] > 0.45 else "#222222")


def _label_axes(ax: Any, names: list[str], n: int) -> None:
    ticks = np.arange(n)
    size = _tick_size(n)
    ax.set_xticks(ticks, names, rotation=90, fontsize=size)
    ax.set_yticks(ticks, names, fontsize=size)
    ax.set_xlabel("predicted class", fontsize=11)
    ax.set_ylabel("true class", fontsize=11)
    ax.set_xticks(ticks - 0.5, minor=True)
    ax.set_yticks(ticks - 0.5, minor=True)
    ax.grid(which="minor", color="#e4e4e4", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.tick_params(which="major", length=2)


@_plain_text
def precision_coverage_png(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], target: float,
                           recommended: OperatingPoint | None, subject: str | None = None,
                           per_class: Routing | None = None) -> bytes:
    """Left: precision against coverage per model, with the routing of a threshold per class (``per_class``)
    as a point. Right: both against the threshold, for the first model. ``subject``: the field whose
    confidence the curves are of, when not the label."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=DPI, layout="constrained")
    for (name, (_, coverage, precision)), color in zip(curves.items(), COLORS):
        left.plot(coverage * 100, precision * 100, color=color, label=name, linewidth=1.8)
    thresholds, coverage, precision = next(iter(curves.values()))
    right.plot(thresholds, precision * 100, color=COLORS[0], label="precision of routed tickets", linewidth=1.8)
    right.plot(thresholds, coverage * 100, color=COLORS[1], linestyle="--", label="coverage (share routed)",
               linewidth=1.8)
    for ax in (left, right):
        ax.axhline(target * 100, color="#b03030", linewidth=1, linestyle=":", label=f"target {target:.0%}")
        ax.grid(alpha=0.3)
    if per_class is not None and per_class.tickets:
        left.plot(per_class.coverage * 100, (per_class.precision or 0.0) * 100, "D", color="#2e7d32", markersize=7,
                  label=f"a threshold per class: {per_class.coverage:.1%} routed, {per_class.precision or 0:.1%} "
                        "right")
    # Precision lives near the top: from 0 its curves would be a flat line under the target. The range starts
    # a few points below the lowest precision drawn (a multiple of 10); coverage on the right needs all of it.
    points = [point.precision for point in (recommended, per_class) if point and point.precision is not None]
    lowest = min([target, *points, *(float(np.min(p)) for _, _, p in curves.values() if len(p))])
    left.set_ylim(max(0.0, 10 * math.floor(lowest * 10 - 0.5)), 101)
    right.set_ylim(0, 101)
    if recommended:
        point = (recommended.coverage * 100, (recommended.precision or 0.0) * 100)  # it routes tickets: a precision
        left.plot(*point, "o", color="#b03030")
        on_right = recommended.coverage > 0.5  # put the label on the side with room
        left.annotate(f"confidence >= {recommended.threshold:{THRESHOLD}}\n{recommended.coverage:.1%} routed", point,
                      xytext=(-20 if on_right else 20, -45), textcoords="offset points", fontsize=9,
                      ha="right" if on_right else "left", arrowprops={"arrowstyle": "-", "color": "#b03030"},
                      bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#b03030", "alpha": 0.9})
        right.axvline(recommended.threshold, color="#b03030", linewidth=1)
    left.set(xlabel="coverage: % of tickets routed without review", ylabel="precision: % routed correctly",
             xlim=(0, 101), title=f"Precision vs coverage{f' of {_short(subject)}' if subject else ''}")
    # No fixed x range: a model whose confidences all sit near 0.02 must still show its curve.
    right.set(xlabel="confidence threshold", ylabel="%",
              title=f"Effect of the threshold ({_short(subject) if subject else 'this model'})")
    left.legend(loc="lower left", fontsize=9)
    right.legend(loc="lower left", fontsize=9)
    return _png(fig)


FEW_IN_BIN = 5  # tickets in a reliability bin below which its accuracy is drawn faint


@_plain_text
def reliability_png(calibration: Reliability) -> bytes:
    """Accuracy per confidence bin against the diagonal of perfect calibration, with a ticket histogram below."""
    bins = [b for b in calibration.bins if b.count]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.4), dpi=DPI, height_ratios=(3, 1), sharex=True,
                                      layout="constrained")
    width = calibration.bins[0].upper - calibration.bins[0].lower
    # A bin of 1 or 2 tickets is 0 or 100 % right by chance: drawn faint, so that its full bar does not read
    # as the model's behaviour.
    faint = {"color": "#c6d2e6", "hatch": "//", "label": f"bin of under {FEW_IN_BIN} tickets: chance"}
    for few, look in ((False, {"color": COLORS[0], "alpha": 0.8, "label": "accuracy in bin"}), (True, faint)):
        shown = [b for b in bins if (b.count < FEW_IN_BIN) == few]
        if shown:
            top.bar([b.lower for b in shown], [b.accuracy for b in shown], width=width, align="edge",
                    edgecolor="white", **look)
    top.plot([b.confidence for b in bins], [b.accuracy for b in bins], "o", color="#222222", markersize=3,
             label="bin: mean confidence vs accuracy")
    top.plot([0, 1], [0, 1], linestyle="--", color="#b03030", linewidth=1, label="perfect calibration")
    top.set(ylabel="right answers in bin", ylim=(0, 1), xlim=(0, 1),
            title="Reliability: is a 90 % confident answer right 90 % of the time?\n"
                  f"expected calibration error {calibration.ece:.3f} (0: confidence is honest)")
    top.yaxis.set_major_formatter(PercentFormatter(1.0))
    top.legend(loc="upper left", fontsize=8, framealpha=0.9)
    top.grid(alpha=0.3)
    counts = bottom.bar([b.lower for b in bins], [b.count for b in bins], width=width, align="edge",
                        color="#888888", edgecolor="white")
    bottom.bar_label(counts, fontsize=7, padding=1)  # a full bar above of 1 ticket says little: show how many
    bottom.margins(y=0.25)
    bottom.set(xlabel="model confidence", ylabel="tickets")
    bottom.xaxis.set_major_formatter(PercentFormatter(1.0))
    return _png(fig)


@_plain_text
def out_of_scope_png(section: OutOfScopeSection) -> bytes:
    """Out-of-scope recall, in-scope accuracy and in-scope tickets flagged against the detector's threshold."""
    points = sorted(section.curve, key=lambda point: point.threshold)
    thresholds = [point.threshold for point in points]
    fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=DPI, layout="constrained")
    ax.plot(thresholds, [100 * p.out_of_scope_recall for p in points], color=COLORS[0], linewidth=1.8,
            marker="o", markersize=3, label="out-of-scope tickets flagged (recall)")
    ax.plot(thresholds, [100 * p.in_scope_accuracy for p in points], color=COLORS[2], linewidth=1.8,
            marker="o", markersize=3, label="in-scope accuracy (flagged count as errors)")
    ax.plot(thresholds, [100 * p.in_scope_flagged for p in points], color=COLORS[1], linewidth=1.8, linestyle="--",
            label="in-scope tickets flagged")
    chosen = section.at_threshold
    ax.axvline(chosen.threshold, color="#b03030", linewidth=1,
               label=f"the bundle's threshold ({chosen.threshold:.3g}): {chosen.out_of_scope_recall:.0%} caught, "
                     f"{chosen.in_scope_flagged:.1%} of in-scope flagged")
    ax.set(xlabel="out-of-scope threshold (flag tickets scoring above it)", ylabel="%", ylim=(0, 101),
           title="Effect of the out-of-scope threshold")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8, framealpha=0.9)
    return _png(fig)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white", bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return buffer.getvalue()
