"""A TF-IDF + logistic-regression baseline: the bar a fine-tuned encoder has to clear.

Training fits it on the bundle's training split and keeps it in the bundle
(``baseline.npz``: vocabularies, IDF weights and coefficients as plain arrays, no pickles), so
evaluation sets the model beside it without the original export, and the service can blend it with the
fine-tuned model (:mod:`classifier.blend`, which computes the same features without scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline, make_union

from classifier.blend import CHAR_NGRAMS, WORD_NGRAMS, read_text
from classifier.numerics import macro_f1

BASELINE_NAME = "TF-IDF + logistic regression"

# Weights of the logistic regression at most (features x classes). L-BFGS keeps 20 vectors of that size
# besides the weights: on 10,000 synthetic tickets of 2,000 characters in 20 queues, 1.14 million features
# took the fit to 7.1 GB. 2^22 weights bound it near 0.8 GB and cut no feature of BANKING77 (37,700 x 77).
MAX_WEIGHTS = 2**22
MIN_FEATURES = 2**15  # per vectorizer, however many classes
# Per vectorizer at most: the service keeps each term in a dict (classifier.blend), about 100 bytes a term,
# in every worker; 2^18 terms is ~26 MB, where two classes under MAX_WEIGHTS alone would allow 2^20.
MAX_FEATURES = 2**18


def _unfitted(seed: int = 0, classes: int = 0) -> Pipeline:
    """Word 1-2-grams and character 2-5-grams, TF-IDF weighted, into a multinomial logistic regression."""
    return make_pipeline(baseline_features(classes), baseline_classifier(seed))


def baseline_features(classes: int = 0) -> FeatureUnion:
    """The baseline's features, unfitted: word 1-2-grams (the first transformer) and character 2-5-grams,
    each TF-IDF weighted. Character n-grams catch typos and word fragments that a word vocabulary misses.
    With ``classes``, each vectorizer keeps its most frequent terms, so that the classifier has at most
    :data:`MAX_WEIGHTS` weights."""
    most = min(MAX_FEATURES, max(MIN_FEATURES, MAX_WEIGHTS // (2 * classes))) if classes else None
    return make_union(
        TfidfVectorizer(preprocessor=read_text, ngram_range=WORD_NGRAMS, sublinear_tf=True, min_df=1,
                        max_features=most),
        TfidfVectorizer(preprocessor=read_text, analyzer="char_wb", ngram_range=CHAR_NGRAMS, sublinear_tf=True,
                        min_df=2, max_features=most),
    )


def baseline_classifier(seed: int = 0) -> LogisticRegression:
    """The baseline's classifier on :func:`baseline_features`, unfitted."""
    return LogisticRegression(C=10.0, max_iter=2000, random_state=seed)


def fit_baseline(texts: Sequence[str], labels: Sequence[str], seed: int = 0) -> Pipeline:
    """The fitted pipeline, with scikit-learn's ``predict`` / ``predict_proba`` and ``classes_``."""
    return _unfitted(seed, len(set(labels))).fit(list(texts), list(labels))


def score_baseline(model: Pipeline, texts: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    predicted = model.predict(list(texts))
    return {"accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": macro_f1(labels, predicted)}


def save_baseline(model: Pipeline, path: Path) -> None:
    """Store a fitted baseline as arrays only (``np.load`` reads it back with ``allow_pickle=False``)."""
    union, regression = model.steps[0][1], model.steps[-1][1]
    arrays: dict[str, Any] = {"classes": np.asarray(regression.classes_, dtype=str),
                                     "coef": regression.coef_, "intercept": regression.intercept_}
    for index, (_, vectorizer) in enumerate(union.transformer_list):
        vocabulary = vectorizer.vocabulary_
        arrays[f"terms_{index}"] = np.asarray(sorted(vocabulary, key=vocabulary.__getitem__), dtype=str)
        arrays[f"idf_{index}"] = vectorizer.idf_
    with open(path, "wb") as out:
        np.savez_compressed(out, **arrays)


def load_baseline(path: Path) -> Pipeline:
    """A baseline saved by :func:`save_baseline`, predicting exactly as the fitted one did."""
    model = _unfitted()
    union, regression = model.steps[0][1], model.steps[-1][1]
    with np.load(path, allow_pickle=False) as arrays:
        for index, (_, vectorizer) in enumerate(union.transformer_list):
            vectorizer.vocabulary_ = {term: i for i, term in enumerate(arrays[f"terms_{index}"].tolist())}
            vectorizer.idf_ = arrays[f"idf_{index}"]
        regression.classes_ = arrays["classes"].astype(object)
        regression.coef_, regression.intercept_ = arrays["coef"], arrays["intercept"]
    return model
