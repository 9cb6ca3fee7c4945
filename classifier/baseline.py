"""A TF-IDF + logistic-regression baseline: the bar a fine-tuned encoder has to clear."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline, make_union


def fit_baseline(texts: Sequence[str], labels: Sequence[str], seed: int = 0) -> Pipeline:
    """Word 1-2-grams and character 2-5-grams, TF-IDF weighted, into a multinomial logistic regression.

    Character n-grams catch typos and word fragments that a word vocabulary misses.
    The fitted pipeline has scikit-learn's ``predict`` / ``predict_proba`` and ``classes_``.
    """
    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
    )
    model = make_pipeline(features, LogisticRegression(C=10.0, max_iter=2000, random_state=seed))
    return model.fit(list(texts), list(labels))
