"""The out-of-scope detector (classifier.oos): fit and score, in the bundle, exported, served and reported."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from classifier.bundle import read_examples, read_manifest
from classifier.errors import UserError
from classifier.evaluate import EvaluationOptions, evaluate
from classifier.integrity import seal
from classifier.oos import OutOfScopeDetector, choose_threshold, fit_detector
from classifier.predict import Predictor

# Nothing like the sample's support tickets (billing, logins, bugs, ...), in the same language.
UNRELATED = "Preheat the oven to 200 degrees, whisk three eggs with flour and sugar and bake the cake for 40 minutes."


def direct_scores(features: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean, per dimension, the textbook way."""
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    precision = np.linalg.inv(LedoitWolf(assume_centered=True).fit(centred).covariance_)
    distances = [[(q - m) @ precision @ (q - m) for m in means] for q in queries.astype(np.float64)]
    return np.min(distances, axis=1) / features.shape[1]


def test_detector_scores_equal_a_direct_computation_on_a_real_models_features(tiny_bundle: Path) -> None:
    predictor = Predictor.load(tiny_bundle, engine="torch")
    texts, labels = read_examples(tiny_bundle)
    features = predictor.outputs(texts, cleaned=True).features
    label_ids = np.array([predictor.labels.index(label) for label in labels])
    detector = fit_detector(features, label_ids)
    queries = predictor.outputs([UNRELATED, *texts[:5]]).features
    np.testing.assert_allclose(detector.distance(queries), direct_scores(features, label_ids, queries), rtol=2e-4)


def test_the_score_combines_the_p_values_of_distance_and_energy() -> None:
    rng = np.random.default_rng(3)
    features, logits, labels = rng.normal(size=(40, 3)), rng.normal(size=(40, 2)), np.repeat([0, 1], 20)
    detector = fit_detector(features, labels).with_references(features[:30], logits[:30])
    distances = direct_scores(features, labels, features[:30])
    energies = -np.log(np.exp(logits[:30]).sum(axis=1))

    def p_values(values: np.ndarray) -> np.ndarray:  # of each reference ticket: the share at least as high
        at_least = len(values) - np.argsort(np.argsort(values))
        return (at_least + 1) / (len(values) + 1)

    expected = -np.log(p_values(distances)) - np.log(p_values(energies))
    np.testing.assert_allclose(detector.score(features[:30], logits[:30]), expected, rtol=1e-6)
    # Past the farthest reference ticket, -log p grows by 1 every tail scale (the mean excess of the farthest
    # three of 30 over the nearest of them), up to 50 more: far out on one count alone is out of scope.
    top = np.sort(distances)[-3:]
    scale = np.mean(top - top[0])
    beyond = direct_scores(features, labels, features[:1] * 1.5)[0]
    assert beyond > distances.max()
    np.testing.assert_allclose(detector.score(features[:1] * 1.5, logits[:1]), [
        np.log(31 / 2) + min(50, (beyond - distances.max()) / scale) - np.log(p_values(energies)[0])], rtol=1e-4)
    very_far = detector.score(features[:1] * 1000, logits[:1])
    np.testing.assert_allclose(very_far, [np.log(31 / 2) + 50 - np.log(p_values(energies)[0])], rtol=1e-6)
    # Counts interpolated between reference values: a rounding's worth moves a score by little, where a
    # count's step (a reference ticket passed) would move it by log(31 / 30) or more.
    moved = detector.score(features[:30] * (1 + 1e-6), logits[:30]) - detector.score(features[:30], logits[:30])
    assert np.abs(moved).max() < 1e-3


def test_a_class_left_out_of_the_fit_has_no_centre_and_no_weight() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 4))
    labels = np.repeat([0, 1, 2], 20)
    kept = labels != 2
    fitted = fit_detector(features, labels, ignored=(2,))
    np.testing.assert_allclose(fitted.distance(features[:5]),
                               direct_scores(features[kept], labels[kept], features[:5]), rtol=1e-5)
    assert fitted.centres.shape == (2, 4)


def test_the_threshold_flags_the_target_share_of_tickets() -> None:
    scores = np.arange(1000, dtype=float) / 100
    threshold = choose_threshold(scores, 0.01)
    assert (scores > threshold).sum() == 10 and 9.89 < threshold < 9.9  # halfway to the next score
    assert (scores > choose_threshold(scores, 0.0)).sum() == 0
    with pytest.raises(UserError, match="--oos-abstention must be at least 0 and below 1"):
        choose_threshold(scores, 1.0)


def test_a_detector_survives_saving_and_a_broken_file_is_one_line(tmp_path: Path) -> None:
    features = np.random.default_rng(1).normal(size=(40, 3))
    logits = np.random.default_rng(2).normal(size=(40, 2))
    queries, query_logits = np.ones((2, 3), dtype=np.float32), np.zeros((2, 2))
    without = fit_detector(features, np.repeat([0, 1], 20))  # a bundle's from before the references
    for detector in (without, without.with_references(features, logits)):
        detector.save(tmp_path / "oos.npz")
        loaded = OutOfScopeDetector.load(tmp_path / "oos.npz")
        assert np.array_equal(loaded.score(queries, query_logits), detector.score(queries, query_logits))
    assert np.array_equal(without.score(queries, query_logits), without.distance(queries))
    (tmp_path / "broken.npz").write_bytes(b"not numpy")
    with pytest.raises(UserError, match="broken.npz: not an out-of-scope detector"):
        OutOfScopeDetector.load(tmp_path / "broken.npz")
    # The score reads the whitening matrix's upper triangle only: a full one would be scored wrongly.
    np.savez(tmp_path / "full.npz", whitening=np.ones((3, 3)), centres=detector.centres)
    with pytest.raises(UserError, match="full.npz: the detector's arrays do not fit together .*upper triangular"):
        OutOfScopeDetector.load(tmp_path / "full.npz")
    # NaN in the matrices would make every score NaN, so every request would fail: refused at load instead.
    np.savez(tmp_path / "nan.npz", whitening=np.triu(np.full((3, 3), np.nan)), centres=detector.centres)
    with pytest.raises(UserError, match="nan.npz: the detector's arrays do not fit together .*no NaN"):
        OutOfScopeDetector.load(tmp_path / "nan.npz")


# ---------------------------------------------------------------- in a bundle


def test_training_leaves_an_other_class_out_of_the_fit_and_routes_to_it(tiny_bundle: Path, tiny_csv: Path,
                                                                        tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from classifier.data import prepare_data
    from classifier.manifest import Calibration
    from classifier.options import DataOptions, TrainingOptions
    from classifier.train import Fitted, fit_out_of_scope, model_outputs

    with open(tiny_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    first = rows[0]["category"]
    path = tmp_path / "with_other.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(dict(row, category="Other" if row["category"] == first else row["category"]) for row in rows)
    data = prepare_data(path, DataOptions(validation_fraction=0.2), seed=0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bundle)  # any model of as many labels
    fitted = Fitted(model, AutoTokenizer.from_pretrained(tiny_bundle), 96, 0.0, {}, Calibration(), True)
    validation_logits, validation_features = model_outputs(model, fitted.tokenizer, data.validation.texts, 96)
    detector, section = fit_out_of_scope(fitted, data, TrainingOptions(), validation_logits, validation_features)
    assert section.route_to == "Other" and detector.centres.shape[0] == len(data.labels) - 1
    assert detector.energies is not None and len(detector.energies) == section.validation_tickets
    assert section.training_tickets == sum(label != "Other" for label in data.train.labels)
    assert section.validation_tickets == sum(label != "Other" for label in data.validation.labels)


def test_training_puts_a_detector_and_its_threshold_in_the_bundle(tiny_bundle: Path) -> None:
    section = read_manifest(tiny_bundle).out_of_scope
    assert section is not None and section.method == "mahalanobis+energy" and section.target_abstention == 0.01
    assert (tiny_bundle / section.file).is_file() and section.route_to is None  # the tiny data has no "other"
    texts, _ = read_examples(tiny_bundle)
    scores = Predictor.load(tiny_bundle, engine="torch").out_of_scope_scores(texts, cleaned=True)
    assert scores is not None and (scores > section.thresholds["torch"]).mean() <= 0.01


def test_an_unrelated_text_is_out_of_scope_and_the_bundles_own_tickets_are_not(exported_bundle: Path) -> None:
    predictor = Predictor.load(exported_bundle)
    texts, _ = read_examples(exported_bundle)
    [unrelated] = predictor.predict([UNRELATED])
    assert unrelated.needs_review and unrelated.review_reason == "out_of_scope"
    assert unrelated.out_of_scope_score is not None and predictor.out_of_scope_threshold is not None
    assert unrelated.out_of_scope_score > predictor.out_of_scope_threshold
    own = predictor.predict(texts, cleaned=True)
    assert sum(p.review_reason == "out_of_scope" for p in own) <= max(1, 0.02 * len(own))
    assert all(p.needs_review == (p.review_reason is not None) for p in own)


@pytest.mark.parametrize("engine", ["fp32", "int8"])
def test_the_exported_models_score_as_pytorch_does(exported_bundle: Path, engine: str) -> None:
    texts, _ = read_examples(exported_bundle)
    torch_scores = Predictor.load(exported_bundle, engine="torch").out_of_scope_scores(texts, cleaned=True)
    onnx_scores = Predictor.load(exported_bundle, engine=engine).out_of_scope_scores(texts, cleaned=True)
    assert torch_scores is not None and onnx_scores is not None
    if engine == "fp32":
        np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-3)
    else:  # int8 moves the features: the ranking holds, and the export gave int8 a threshold of its own
        assert np.corrcoef(onnx_scores, torch_scores)[0, 1] > 0.95
        assert set(read_manifest(exported_bundle).out_of_scope.thresholds) == {"torch", "fp32", "int8"}


def test_a_bundle_without_a_detector_predicts_as_before(bundle_copy: Path,
                                                        hand_edit: Callable[[Path, Callable[[dict[str, Any]], object]],
                                                                            None]) -> None:
    (bundle_copy / "out_of_scope.npz").unlink()
    hand_edit(bundle_copy, lambda manifest: manifest.pop("out_of_scope"))
    manifest = read_manifest(bundle_copy)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest.model_copy(
        update={"integrity": seal(bundle_copy, "test")}).to_json()))
    predictor = Predictor.load(bundle_copy)
    [prediction] = predictor.predict([UNRELATED])
    assert predictor.detector is None and prediction.out_of_scope_score is None
    assert prediction.review_reason == ("low_confidence" if prediction.needs_review else None)


def test_a_detector_that_does_not_fit_the_model_is_refused_at_load(bundle_copy: Path) -> None:
    # Sealed as if on purpose: only loading can tell that its 8 features are not the model's.
    fit_detector(np.random.default_rng(2).normal(size=(40, 8)), np.repeat([0, 1], 20)).save(
        bundle_copy / "out_of_scope.npz")
    manifest = read_manifest(bundle_copy)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest.model_copy(
        update={"integrity": seal(bundle_copy, "test")}).to_json()))
    with pytest.raises(UserError, match=f"{bundle_copy}: the out-of-scope detector expects 8 features per ticket"):
        Predictor.load(bundle_copy)


def test_a_threshold_set_by_hand_wins_and_flagged_tickets_go_to_the_route_class(
        bundle_copy: Path, hand_edit: Callable[[Path, Callable[[dict[str, Any]], object]], None]) -> None:
    route_to = read_manifest(bundle_copy).labels[-1]
    hand_edit(bundle_copy, lambda manifest: manifest["out_of_scope"].update(threshold=0.0, route_to=route_to))
    predictor = Predictor.load(bundle_copy)
    predictions = predictor.predict(["I was charged twice", UNRELATED])
    assert predictor.out_of_scope_threshold == 0.0
    assert all(p.label == route_to and p.review_reason == "out_of_scope" for p in predictions)


# ---------------------------------------------------------------- served and reported


def test_the_service_answers_the_reason_and_score_and_lists_the_threshold(client: Any, predictor: Predictor) -> None:
    [answer] = client.post("/classify", json={"text": UNRELATED}).get_json()["predictions"]
    assert answer["review_reason"] == "out_of_scope" and answer["needs_review"] is True
    assert answer["out_of_scope_score"] > client.get("/labels").get_json()["out_of_scope_threshold"] \
        == predictor.out_of_scope_threshold


def test_the_report_measures_the_detector_on_tickets_of_unknown_queues(exported_bundle: Path, sample_csv: Path,
                                                                       tmp_path: Path) -> None:
    with open(sample_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[-60:]
    unrelated = [dict(rows[0], id=f"X-{i}", subject="Recipe", body=f"{UNRELATED} Step {i}.", category="cooking")
                 for i in range(10)]
    path = tmp_path / "test.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + unrelated)
    report = evaluate(exported_bundle, path, tmp_path / "report", EvaluationOptions(baseline=False))
    section = report["out_of_scope"]
    assert section["labels"] == ["cooking"] and section["out_of_scope_tickets"] == 10
    assert section["auroc"] > 0.9 and section["at_threshold"]["out_of_scope_recall"] > 0.5
    thresholds = [point["threshold"] for point in section["curve"]]
    assert thresholds == sorted(thresholds, reverse=True)
    recalls = [point["out_of_scope_recall"] for point in section["curve"]]
    assert recalls == sorted(recalls)  # a lower threshold flags more
    assert "Tickets of no known queue" in (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert (tmp_path / "report" / "out_of_scope.png").stat().st_size > 0
