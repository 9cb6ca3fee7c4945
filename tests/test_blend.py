"""The served TF-IDF model and its blend with the fine-tuned model (classifier.blend)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from csv_files import read_csv

from classifier import bundle
from classifier.baseline import baseline_features, fit_baseline, save_baseline
from classifier.blend import TfidfModel, blend, char_terms, fit_blend, parity, read_text, word_terms
from classifier.calibration import fit_temperature, mean_confidence
from classifier.errors import UserError
from classifier.numerics import softmax
from classifier.predict import Predictor


def _sample(sample_csv: Path) -> tuple[list[str], list[str]]:
    rows = read_csv(sample_csv)
    return [f"{row['subject']}\n{row['body']}" for row in rows], [row["category"] for row in rows]


@pytest.mark.parametrize("text", ["Refund   for order #A-77,\tplease!", "a I ok x", "naïve café — ÜBER straße",
                                  "", "   ", "one\n\ntwo  three", "x" * 7])
def test_terms_are_scikit_learns(text: str) -> None:
    word, char = (vectorizer.build_analyzer() for _, vectorizer in baseline_features().transformer_list)
    assert word_terms(read_text(text)) == word(text)
    assert char_terms(read_text(text)) == char(text)


@pytest.mark.parametrize("classes", [None, 2])
def test_served_tfidf_model_gives_the_fitted_pipelines_probabilities(sample_csv: Path, tmp_path: Path,
                                                                     classes: int | None) -> None:
    texts, labels = _sample(sample_csv)
    if classes:  # a binary logistic regression keeps one row of weights
        kept = sorted(set(labels))[:classes]
        texts, labels = zip(*[(t, label) for t, label in zip(texts, labels) if label in kept])  # type: ignore[assignment]
    model = fit_baseline(texts[:-100], labels[:-100])
    save_baseline(model, tmp_path / "baseline.npz")
    order = sorted(set(labels), reverse=True)  # the manifest's order need not be scikit-learn's
    served = TfidfModel.load(tmp_path / "baseline.npz").aligned(order, tmp_path / "baseline.npz")
    fitted = model.predict_proba(texts[-100:])[:, [list(model.classes_).index(label) for label in order]]
    assert parity(served, fitted, texts[-100:]) < 1e-5
    assert served.logits(["zzzz qqqq"]).shape == (1, len(order))  # no known term: the intercepts


def test_a_tfidf_model_follows_renamed_labels_and_refuses_other_counts(sample_csv: Path, tmp_path: Path) -> None:
    texts, labels = _sample(sample_csv)
    path = tmp_path / "baseline.npz"
    save_baseline(fit_baseline(texts[:300], labels[:300]), path)
    model = TfidfModel.load(path)
    renamed = [f"queue {i}" for i in range(len(model.classes))]  # renamed in the manifest since training
    assert np.array_equal(model.aligned(renamed, path).logits(texts[:5]), model.logits(texts[:5]))
    swapped = [model.classes[1], model.classes[0], *model.classes[2:]]
    assert np.array_equal(model.aligned(swapped, path).logits(texts[:5])[:, :2], model.logits(texts[:5])[:, 1::-1])
    with pytest.raises(UserError, match=f"has {len(model.classes)} labels, the manifest lists 2"):
        model.aligned(["billing", "something else"], path)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a TF-IDF model"):
        TfidfModel.load(tmp_path / "broken.npz")


def test_the_blend_weight_follows_which_model_knows() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 400)
    informed = np.eye(5, dtype=np.float32)[truth] * 4 + rng.normal(0, 1, (400, 5)).astype(np.float32)
    noise = rng.normal(0, 1, (400, 5)).astype(np.float32)
    weight, scale, measured = fit_blend(informed, noise, truth)
    assert weight <= 0.1 and measured["blend_log_loss"] <= measured["model_log_loss"]
    weight, scale, measured = fit_blend(noise, informed, truth)
    assert weight >= 0.9 and measured["blend_accuracy"] > measured["model_accuracy"]
    # Two equally weak models, both far too sure: the sharpness, not the weight, takes the confidence down.
    weak, other = (6 * (np.eye(5, dtype=np.float32)[truth] + rng.normal(0, 1, (400, 5)).astype(np.float32))
                   for _ in range(2))
    weight, scale, _ = fit_blend(weak, other, truth)
    assert 0.3 <= weight <= 0.7 and scale < 1
    assert np.array_equal(blend(informed, noise, 0.0, 2.0, 3.0), informed / 2)  # weight 0: the model alone
    assert np.allclose(blend(informed, noise, 0.25, 2.0, 3.0), 3 * (0.75 * informed / 2 + 0.25 * noise))


def test_a_cautiously_calibrated_model_keeps_its_caution_in_the_blend() -> None:
    """Too few validation mistakes: calibration matches the mean confidence to a cautious accuracy, and the
    blend keeps that confidence at every weight instead of sharpening it back (and crediting TF-IDF for it)."""
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 10, 60)
    model = rng.normal(0, 0.5, (60, 10)) + 3.0 * np.eye(10)[truth]
    wrong = rng.choice(60, 2, replace=False)
    model[wrong, (truth[wrong] + 1) % 10] += 4  # two mistakes: fewer than the likelihood fit needs
    model = model.astype(np.float32)
    calibration = fit_temperature(model, truth)
    target, temperature = calibration["target_confidence"], calibration["temperature"]
    assert target is not None and mean_confidence(model, temperature) == pytest.approx(target, abs=1e-4)
    useful = (rng.normal(0, 1, (60, 10)) + 2.0 * np.eye(10)[truth]).astype(np.float32)
    noise = rng.normal(0, 1, (60, 10)).astype(np.float32)
    for tfidf in (useful, noise):
        weight, scale, _ = fit_blend(model, tfidf, truth, temperature)
        served = softmax(blend(model, tfidf, weight, temperature, scale).astype(np.float64)).max(axis=1).mean()
        assert served > target + 0.05  # chosen by log-loss alone, the sharpness undoes the caution
        weight, scale, _ = fit_blend(model, tfidf, truth, temperature, target)
        served = softmax(blend(model, tfidf, weight, temperature, scale).astype(np.float64)).max(axis=1).mean()
        assert served == pytest.approx(target, abs=1e-3)
    assert weight == 0.0  # pure noise gets no say once sharpening earns it nothing

def test_training_fits_the_blend_and_the_predictor_serves_it(tiny_bundle: Path, tmp_path: Path,
                                                               hand_edit: Callable[..., None]) -> None:
    manifest = bundle.read_manifest(tiny_bundle)
    section = manifest.baseline
    assert section is not None and 0.0 <= section.blend_weight <= 1.0
    assert set(section.blend_metrics) >= {"model_accuracy", "tfidf_accuracy", "blend_accuracy", "blend_log_loss"}
    assert section.blend_metrics["blend_log_loss"] <= section.blend_metrics["model_log_loss"]

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    hand_edit(copy, lambda data: data["baseline"].update(blend_weight=0.5, blend_scale=1.5))
    texts = ["I was charged twice for my subscription", "cannot log in since the password reset"]
    served = Predictor.load(copy)
    assert served.blend_weight == 0.5 and served.tfidf is not None
    outputs = served.outputs(texts, features=False)
    expected = softmax(1.5 * (0.5 * outputs.logits / served.temperature
                              + 0.5 * served.tfidf.logits(served.texts(texts))))
    assert np.allclose(served.predict_proba(texts), expected, atol=1e-6)
    assert [p.confidence for p in served.predict(texts)] == pytest.approx(expected.max(axis=1).tolist(), abs=1e-6)

    hand_edit(copy, lambda data: data["baseline"].update(blend_weight=0.0))
    alone = Predictor.load(copy)
    assert alone.tfidf is None
    assert np.allclose(alone.predict_proba(texts), softmax(outputs.logits / alone.temperature), atol=1e-6)


def test_a_blending_bundle_without_its_tfidf_model_is_refused(tiny_bundle: Path, tmp_path: Path,
                                                              hand_edit: Callable[..., None]) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    hand_edit(copy, lambda data: data["baseline"].update(blend_weight=0.3))
    (copy / bundle.BASELINE_FILE).write_bytes(b"tampered")
    with pytest.raises(UserError, match="baseline.npz"):
        Predictor.load(copy)


def test_a_manifest_blend_weight_outside_0_to_1_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    data: dict[str, Any] = json.loads((copy / bundle.MANIFEST).read_text())
    data["baseline"]["blend_weight"] = 1.5
    (copy / bundle.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(UserError, match="blend_weight"):
        bundle.read_manifest(copy)
