"""The TF-IDF model as served, and its blend with the fine-tuned model: numpy only, no scikit-learn.

Training fits a TF-IDF + logistic-regression model beside the encoder (:mod:`classifier.baseline`) and keeps
it as plain arrays (``baseline.npz``). The two err on different tickets: the encoder on rare wordings and
codes, TF-IDF on paraphrases. Their product of experts,

    p = softmax(s * ((1 - w) * model_logits / T + w * tfidf_logits)),

with the weight ``w`` and the sharpness ``s`` fitted on the validation split (:func:`fit_blend`), is what a
bundle serves when ``manifest.baseline.blend_weight`` is above 0. The sharpness keeps the weight from doubling
as a temperature: fitted alone, the weight that made the blend's confidence right was not the one that made
its answers right (docs/benchmarks.md, "Accuracy on every export").

:class:`TfidfModel` computes exactly what scikit-learn's fitted pipeline does (word 1-2-grams and
``char_wb`` 2-5-grams, sublinear TF, IDF, L2 norm per vectorizer, then the linear model): skl2onnx cannot
convert ``char_wb`` n-grams, and the service should not need scikit-learn to read thirty lines of arithmetic.
Training checks the two agree before it lets a bundle blend (:func:`parity`).
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from classifier.errors import UserError, one_line
from classifier.numerics import log_loss, softmax
from classifier.options import MIN_FITTED_TICKETS
from classifier.text import window_chars

# The features, as both the fitted pipeline (classifier.baseline) and TfidfModel compute them.
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (2, 5)
_READ_CHARS = window_chars()  # of each ticket's text
_WORD = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern
_SPACES = re.compile(r"\s\s+")

# Weights tried for the blend, 0 (the model alone) to 0.9 (the fine-tuned model always has a say), and
# sharpness factors. Below MIN_TICKETS validation tickets nothing is fitted: 163 candidates (each weight
# above 0 at each sharpness, and the model alone) on 11 tickets would fit noise (calibration's floor too).
BLEND_WEIGHTS = np.round(np.linspace(0.0, 0.9, 19), 2)
MIN_TICKETS = MIN_FITTED_TICKETS
BLEND_SCALES = (0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
# Largest difference between TfidfModel's probabilities and scikit-learn's that still counts as the same model
# (float32 weights: 8e-7 on BANKING77 and the sample; a probability 1e-4 off changes no answer that matters).
PARITY_TOLERANCE = 1e-4


def read_text(text: str) -> str:
    """What the vectorizers see of a ticket: its start, lower-cased. Reading a 50 MB ticket whole, its
    character n-grams took an evaluation to 12.5 GB (issue 19)."""
    return text[:_READ_CHARS].lower()


def word_terms(text: str) -> list[str]:
    """Word 1- and 2-grams of a read text, as scikit-learn's ``analyzer='word'`` makes them."""
    words = _WORD.findall(text)
    return words + [" ".join(pair) for pair in zip(words, words[1:])]


def char_terms(text: str) -> list[str]:
    """Character 2- to 5-grams inside each word padded with a space (scikit-learn's ``char_wb``); a word
    shorter than n gives its whole padded self once."""
    terms: list[str] = []
    low, high = CHAR_NGRAMS
    for word in _SPACES.sub(" ", text).split():
        padded = f" {word} "
        for n in range(low, high + 1):
            terms.extend(padded[start:start + n] for start in range(max(1, len(padded) - n + 1)))
            if len(padded) <= n:
                break
    return terms


class TfidfModel:
    """The bundle's TF-IDF model: logits per class, in the order of :attr:`classes`."""

    ANALYZERS = (word_terms, char_terms)  # the order of baseline.npz's terms_0, terms_1

    def __init__(self, classes: list[str], vocabularies: list[dict[str, int]], idfs: list[np.ndarray],
                 weights: np.ndarray, intercept: np.ndarray) -> None:
        self.classes = classes
        self.vocabularies = vocabularies
        self.idfs = idfs
        self.offsets = np.cumsum([0] + [len(v) for v in vocabularies])  # each vectorizer's first column
        self.weights = weights  # (features, labels), float32: a row per feature is one gather per ticket
        self.intercept = intercept

    @classmethod
    def load(cls, path: Path, data: bytes | None = None) -> TfidfModel:
        """Read ``baseline.npz`` (from ``data`` where given: bytes read and checked by the caller)."""
        try:
            with np.load(io.BytesIO(data) if data is not None else path, allow_pickle=False) as arrays:
                classes = arrays["classes"].tolist()
                vocabularies = [{term: i for i, term in enumerate(arrays[f"terms_{k}"].tolist())}
                                for k in range(len(cls.ANALYZERS))]
                idfs = [arrays[f"idf_{k}"].astype(np.float64) for k in range(len(cls.ANALYZERS))]
                coef, intercept = arrays["coef"], arrays["intercept"]
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"{path}: not a TF-IDF model this release can read ({one_line(error)}); "
                            "train the bundle again") from None
        if coef.shape[0] == 1 and len(classes) == 2:  # a binary logistic regression: one row, for classes[1]
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        return cls(classes, vocabularies, idfs, np.ascontiguousarray(coef.T, dtype=np.float32),
                   intercept.astype(np.float32))

    def aligned(self, labels: Sequence[str], path: Path) -> TfidfModel:
        """The model with its columns in the order of ``labels`` (the manifest's): by name, or where the
        manifest renamed labels since training, by position (training sorts the labels, as scikit-learn
        sorts its classes)."""
        if sorted(self.classes) == sorted(labels):
            order = [self.classes.index(label) for label in labels]
        elif len(self.classes) == len(labels):
            order = list(range(len(labels)))
        else:
            raise UserError(f"{path}: the TF-IDF model has {len(self.classes)} labels, the manifest lists "
                            f"{len(labels)}; train the bundle again")
        return TfidfModel(list(labels), self.vocabularies, self.idfs, self.weights[:, order], self.intercept[order])

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """The logistic regression's logits for each (cleaned) ticket text: softmax gives its probabilities."""
        logits = np.tile(self.intercept, (len(texts), 1))
        for row, text in enumerate(texts):
            read = read_text(text)
            for analyzer, vocabulary, idf, offset in zip(self.ANALYZERS, self.vocabularies, self.idfs, self.offsets):
                counts = Counter(i for i in map(vocabulary.get, analyzer(read)) if i is not None)
                if not counts:
                    continue
                ids = np.fromiter(counts, dtype=np.int64, count=len(counts))
                values = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))) * idf[ids]
                values /= np.sqrt(values @ values)
                logits[row] += values.astype(np.float32) @ self.weights[ids + offset]
        return logits


def blend(model_logits: np.ndarray, tfidf_logits: np.ndarray | None, weight: float, temperature: float = 1.0,
          scale: float = 1.0) -> np.ndarray:
    """The blended logits: softmax of them is the product of experts the module docstring gives. Weight 0
    (or no TF-IDF logits): the model's calibrated logits alone."""
    calibrated = model_logits / np.float32(temperature) if temperature != 1.0 else model_logits
    if weight <= 0.0 or tfidf_logits is None:
        return calibrated
    return np.float32(scale) * (np.float32(1.0 - weight) * calibrated + np.float32(weight) * tfidf_logits)


def fit_blend(model_logits: np.ndarray, tfidf_logits: np.ndarray, truth: np.ndarray, temperature: float = 1.0,
              target_confidence: float | None = None) -> tuple[float, float, dict[str, float]]:
    """The weight of :data:`BLEND_WEIGHTS` and the sharpness of :data:`BLEND_SCALES` whose blend has the
    lowest log-loss on ``truth`` (validation tickets; the smaller weight, then the scale nearer 1, on a
    tie), and the validation accuracy and log-loss of the model alone, the TF-IDF model alone and the
    blend. Log-loss rather than accuracy: on a few hundred tickets accuracy moves by whole tickets,
    log-loss by how sure each answer is. Weight 0 keeps scale 1: the model alone is calibrated already.

    ``target_confidence``: where calibration matched the model's mean confidence to a cautious accuracy (too
    few validation mistakes for log-loss to weigh, :mod:`classifier.calibration`), each weight's sharpness is
    the one that keeps that mean confidence. Chosen by log-loss, the sharpness undid the caution, and
    credited the TF-IDF model with it: a weight above 0 won even for TF-IDF logits of pure noise."""
    def measured(weight: float, scale: float) -> tuple[float, float]:
        blended = blend(model_logits, tfidf_logits, weight, temperature, scale)
        return log_loss(blended, truth), float((blended.argmax(axis=1) == truth).mean())

    if target_confidence is None:
        candidates = [(0.0, 1.0)] + [(float(w), s) for w in BLEND_WEIGHTS if w > 0 for s in BLEND_SCALES]
    else:
        candidates = [(0.0, 1.0)] + [(float(w), _matched_scale(blend(model_logits, tfidf_logits, float(w), temperature),
                                                               target_confidence)) for w in BLEND_WEIGHTS if w > 0]
    losses = {candidate: measured(*candidate) for candidate in candidates}
    weight, scale = min(losses, key=lambda c: (round(losses[c][0], 6), c[0], abs(np.log(c[1]))))
    alone, tfidf = losses[(0.0, 1.0)], measured(1.0, 1.0)  # TF-IDF alone: reported, never chosen
    return weight, scale, {"model_accuracy": alone[1], "model_log_loss": alone[0], "tfidf_accuracy": tfidf[1],
                           "tfidf_log_loss": tfidf[0], "blend_accuracy": losses[(weight, scale)][1],
                           "blend_log_loss": losses[(weight, scale)][0]}


def _matched_scale(logits: np.ndarray, target_confidence: float) -> float:
    """The sharpness at which the mean confidence of ``logits`` is ``target_confidence``."""
    from classifier.calibration import matched_temperature  # training only: it needs scipy's root finder

    return round(1.0 / matched_temperature(logits.astype(np.float64), target_confidence)[0], 6)


def parity(served: TfidfModel, fitted_probabilities: np.ndarray, texts: Sequence[str]) -> float:
    """The largest difference between the served model's probabilities and the fitted pipeline's."""
    return float(np.abs(softmax(served.logits(texts).astype(np.float64)) - fitted_probabilities).max()) \
        if len(texts) else 0.0
