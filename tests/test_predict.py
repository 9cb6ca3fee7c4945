"""ONNX export, drift check, and the Predictor on ordinary and hostile inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classifier.bundle import read_examples, read_manifest, write_manifest
from classifier.errors import ModelError, UserError
from classifier.export import ExportOptions, export
from classifier.predict import Predictor
from classifier.text import CLEANING_VERSION


def test_onnx_and_torch_give_the_same_probabilities(exported_bundle: Path) -> None:
    texts, _ = read_examples(exported_bundle)
    onnx = Predictor.load(exported_bundle, engine="fp32").predict_proba(texts)
    torch = Predictor.load(exported_bundle, engine="torch").predict_proba(texts)
    np.testing.assert_allclose(onnx, torch, atol=1e-4)


def test_predictions_follow_the_bundle_contract(exported_bundle: Path) -> None:
    predictor = Predictor.load(exported_bundle)
    tickets = [{"subject": "Charged twice", "body": "My card was billed two times for the March invoice"},
               "I cannot log in, the password reset email never arrives"]
    predictions = predictor.predict(tickets, top_k=3)
    assert len(predictions) == 2
    for prediction in predictions:
        assert prediction.label in predictor.labels
        assert prediction.top_k[0] == {"label": prediction.label, "score": prediction.confidence}
        assert [s["score"] for s in prediction.top_k] == sorted((s["score"] for s in prediction.top_k), reverse=True)
        assert prediction.needs_review == (prediction.confidence < predictor.threshold(prediction.label))
        assert prediction.truncated is False
    rows = predictor.predict_proba(tickets)
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-5)


def test_a_bundle_trained_on_tickets_cleaned_otherwise_says_so_when_loaded(bundle_copy: Path, hand_edit,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    def cleaning_warnings() -> list[str]:
        caplog.clear()
        Predictor.load(bundle_copy)
        return [record.getMessage() for record in caplog.records if "cleaned by" in record.getMessage()]

    assert read_manifest(bundle_copy).versions["cleaning"] == CLEANING_VERSION and cleaning_warnings() == []
    hand_edit(bundle_copy, lambda manifest: manifest["versions"].pop("cleaning"))  # trained before it was recorded
    [before] = cleaning_warnings()
    assert before.startswith(f"{bundle_copy}: the model learnt from tickets cleaned by a release before the cleaning "
                             f"was versioned, and this release cleans them by version {CLEANING_VERSION}")
    assert before.endswith("train it again, so that it is served tickets as it learnt them")
    hand_edit(bundle_copy, lambda manifest: manifest["versions"].update(cleaning="1"))
    assert "cleaned by version 1 of the cleaning" in cleaning_warnings()[0]


def test_top_k_ranks_every_label_as_predict_proba_scores_it(exported_bundle: Path) -> None:
    predictor = Predictor.load(exported_bundle)
    texts, _ = read_examples(exported_bundle)
    # A top_k over the label count gives every label once, in the order of predict_proba's scores.
    predictions = predictor.predict(texts[:8], top_k=len(predictor.labels) + 5)
    for prediction, scores in zip(predictions, predictor.predict_proba(texts[:8])):
        order = np.argsort(-scores, kind="stable")
        assert [s["label"] for s in prediction.top_k] == [predictor.labels[i] for i in order]
        assert [s["score"] for s in prediction.top_k] == [round(float(scores[i]), 6) for i in order]


def test_the_bundles_temperature_scales_confidence_but_not_the_ranking(bundle_copy: Path, hand_edit) -> None:
    texts, _ = read_examples(bundle_copy)
    hand_edit(bundle_copy, lambda manifest: manifest.update(calibration={"temperature": 1.0, "tickets": 60}))
    hand_edit(bundle_copy, lambda manifest: manifest["baseline"].update(blend_weight=0.0))  # the model alone
    before = Predictor.load(bundle_copy).predict(texts[:6], top_k=3)
    hand_edit(bundle_copy, lambda manifest: manifest["calibration"].update(temperature=0.5))
    predictor = Predictor.load(bundle_copy)
    logits = predictor.logits(texts[:6])
    scaled = np.exp(logits / 0.5) / np.exp(logits / 0.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(predictor.predict_proba(texts[:6]), scaled, rtol=1e-5)
    after = predictor.predict(texts[:6], top_k=3)
    assert [[s["label"] for s in p.top_k] for p in after] == [[s["label"] for s in p.top_k] for p in before]
    assert all(a.confidence > b.confidence for a, b in zip(after, before))  # sharper, same order
    for bad in (0, -1, "nan", "warm"):
        hand_edit(bundle_copy, lambda manifest, bad=bad: manifest["calibration"].update(temperature=bad))
        with pytest.raises(UserError,
                           match=r"manifest does not fit this release \(calibration.temperature: a positive"):
            Predictor.load(bundle_copy)
    for none in ({"temperature": None}, None):  # written by hand: no calibration
        hand_edit(bundle_copy, lambda manifest, none=none: manifest.update(calibration=none))
        assert Predictor.load(bundle_copy).temperature == 1.0


def test_the_model_name_is_the_one_given_at_training_wherever_the_bundle_lives(exported_bundle: Path) -> None:
    # The fixture trains into bundles/tiny and copies that to bundles/exported (as a container mounts /model).
    assert exported_bundle.name == "exported"
    assert Predictor.load(exported_bundle).name == "tiny"


def test_a_bundle_from_before_names_were_recorded_is_named_by_its_directory(bundle_copy: Path, hand_edit) -> None:
    hand_edit(bundle_copy, lambda manifest: manifest.pop("name"))
    assert Predictor.load(bundle_copy).name == bundle_copy.name


def test_order_is_kept_when_batches_are_sorted_by_length(exported_bundle: Path) -> None:
    # fp32: dynamic int8 scales activations per batch, so its scores shift slightly with batch-mates.
    predictor = Predictor.load(exported_bundle, engine="fp32")
    texts, _ = read_examples(exported_bundle)
    one_by_one = np.vstack([predictor.predict_proba([t]) for t in texts[:12]])
    batched = predictor.predict_proba(texts[:12], batch_size=5)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_an_int8_ticket_gets_the_answer_it_gets_alone_whatever_its_batch(exported_bundle: Path) -> None:
    # Dynamic int8 scales activations by the whole batch's range: batched, a ticket's scores would
    # depend on its batch-mates and padding, and a report would not show what the service answers.
    # With two threads the tickets of a call run side by side, one per run: same answers, same order.
    predictor = Predictor.load(exported_bundle, engine="int8", threads=2)
    texts, _ = read_examples(exported_bundle)
    alone = np.vstack([predictor.predict_proba([text]) for text in texts[:12]])
    np.testing.assert_array_equal(predictor.predict_proba(texts[:12], batch_size=5), alone)
    np.testing.assert_array_equal(Predictor.load(exported_bundle, engine="int8", threads=1).predict_proba(texts[:12]),
                                  alone)


def test_no_tickets_give_no_predictions(exported_bundle: Path) -> None:
    predictor = Predictor.load(exported_bundle)
    assert predictor.predict([]) == []
    assert predictor.predict_proba([]).shape == (0, len(predictor.labels))
    scores = predictor.out_of_scope_scores([])  # the bundle has a detector: no scores, not None ("no detector")
    assert predictor.detector is not None and scores is not None and scores.shape == (0,)
    with pytest.raises(UserError, match="batch_size must be at least 1"):
        predictor.predict(["one ticket"], batch_size=0)


@pytest.mark.parametrize("text", [
    "refund " * 5_000,
    "refund " * 150,  # over the window in tokens, under the character cap: the tokenizer says truncated
    "😀🔥 my invoice 💸 is wrong 🙃",
    "我无法登录我的账户，密码重置邮件没有收到",
    "لا أستطيع تسجيل الدخول إلى حسابي",
    "bad\x00bytes\x07 in\x1b[31m the ticket\u200b",
    "unpaired \ud800 surrogates \udfff from a JSON escape",
    "<div><p>Export &amp; import</p></div>",
])
def test_hostile_inputs_get_a_valid_prediction(exported_bundle: Path, text: str) -> None:
    predictor = Predictor.load(exported_bundle)
    [prediction] = predictor.predict([text])
    assert prediction.label in predictor.labels
    assert 0.0 < prediction.confidence <= 1.0
    assert prediction.truncated == (len(text) > 1000)


def test_words_too_long_for_a_word_piece_do_not_hide_the_text_after_them(exported_bundle: Path) -> None:
    predictor = Predictor.load(exported_bundle)
    hashes = " ".join(["a1b2c3d4" * 19] * 60)  # 9,000 characters, 60 tokens: each word one unknown token
    asked, silent = predictor.predict([f"{hashes} I was charged twice, please refund my invoice", hashes])
    assert not asked.truncated and asked.top_k != silent.top_k
    [one_word] = predictor.predict(["x" * 100_000])  # one token: read whole
    assert not one_word.truncated


@pytest.mark.parametrize("text", ["", "   \n\t  ", "\x00\x01", "\ud800"])
def test_empty_tickets_are_a_clear_error(exported_bundle: Path, text: str) -> None:
    predictor = Predictor.load(exported_bundle)
    with pytest.raises(UserError, match="ticket 1 has no text"):
        predictor.predict(["fine ticket", text])


@pytest.mark.parametrize(("ticket", "message"), [
    (None, "ticket 1 has no text"), (float("nan"), "ticket 1 has no text"),  # gaps in a pandas column
    (123, "ticket 1: a ticket is a string or a record of fields, not int"),
])
def test_tickets_that_are_not_text_are_a_clear_error(exported_bundle: Path, ticket: object, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Predictor.load(exported_bundle).predict(["fine ticket", ticket])  # type: ignore[list-item]


def test_a_field_spelled_twice_is_refused_as_the_service_refuses_it(exported_bundle: Path) -> None:
    predictor = Predictor.load(exported_bundle)
    with pytest.raises(UserError, match="ticket 1: 'Text' and 'text' are one field in any case: give 'text' once"):
        predictor.predict(["fine ticket", {"text": "printer jams", "Text": "refund please"}])
    # One spelling holding a value is read, whichever its case; a null one is absent.
    assert predictor.predict_proba([{"TEXT": "refund please", "text": None}]).tolist() == \
        predictor.predict_proba(["refund please"]).tolist()


def test_bundle_without_onnx_falls_back_to_torch(tiny_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    predictor = Predictor.load(tiny_bundle)
    assert predictor.engine.name == "torch"
    assert f"{tiny_bundle} has no ONNX model: running it with PyTorch" in caplog.text  # slow: the user is told
    with pytest.raises(UserError, match="no int8 ONNX model"):
        Predictor.load(tiny_bundle, engine="int8")


def test_a_missing_model_file_the_manifest_marks_for_serving_is_an_error(bundle_copy: Path) -> None:
    export(bundle_copy, ExportOptions(optimize=False))
    (bundle_copy / "onnx" / "model_int8.onnx").unlink()
    with pytest.raises(UserError, match="the manifest says to serve the int8 model, but onnx/model_int8.onnx is"):
        Predictor.load(bundle_copy)  # not PyTorch in its place, silently
    assert Predictor.load(bundle_copy, engine="fp32").engine_kind == "fp32"


def test_needs_review_compares_the_confidence_the_client_sees_with_the_threshold(bundle_copy: Path) -> None:
    texts = [f"ticket {i}: my card payment failed" for i in range(40)]
    scores = Predictor.load(bundle_copy).predict_proba(texts).max(axis=1).astype(float)
    # A ticket whose shown confidence (6 decimals) was rounded up from its score.
    index = next(i for i, score in enumerate(scores) if round(score, 6) > score)
    shown = Predictor.load(bundle_copy).predict([texts[index]])[0]
    manifest = read_manifest(bundle_copy)
    manifest.thresholds.per_class = {shown.label: shown.confidence}
    write_manifest(bundle_copy, manifest)
    again = Predictor.load(bundle_copy).predict([texts[index]])[0]
    assert again.confidence == shown.confidence
    assert not again.needs_review  # at the threshold, as /labels shows it: not below it


def test_a_model_with_other_labels_than_the_manifest_is_refused_at_load(bundle_copy: Path) -> None:
    manifest = read_manifest(bundle_copy)
    manifest.labels = manifest.labels[:-1]  # e.g. onnx/ copied in from a bundle with one class less
    write_manifest(bundle_copy, manifest)
    with pytest.raises(UserError, match=rf"the int8 model gives {len(manifest.labels) + 1} scores per ticket, "
                                        rf"but the manifest lists {len(manifest.labels)} labels"):
        Predictor.load(bundle_copy)


def test_a_model_giving_nan_is_refused_at_load_or_named_at_prediction(bundle_copy: Path, poison_word) -> None:
    poison_word(bundle_copy, "please")
    predictor = Predictor.load(bundle_copy, engine="fp32")  # its check ticket has no "please"
    assert predictor.predict(["my card is blocked"])[0].label
    with pytest.raises(ModelError, match=r"not numbers \(NaN or infinity\) for ticket 1; export or train"):
        predictor.predict(["my card is blocked", "a refund please"])
    poison_word(bundle_copy, "ticket")  # a word of the check ticket: the broken model is caught before it serves
    with pytest.raises(UserError, match="scores that are not numbers"):
        Predictor.load(bundle_copy, engine="fp32")


def test_serving_path_imports_neither_torch_nor_transformers(exported_bundle: Path) -> None:
    # Through the package, as the README shows it: classifier.Predictor loads predict on first use.
    code = ("import sys; from classifier import Prediction, Predictor; "
            f"p = Predictor.load({str(exported_bundle)!r}); "
            "assert isinstance(p.predict(['my invoice'])[0], Prediction); "
            "heavy = [m for m in ('torch', 'transformers', 'optimum', 'sklearn') if m in sys.modules]; "
            "print(p.engine.name, heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    engine, heavy = result.stdout.strip().split(" ", 1)
    assert engine.endswith(".onnx") and heavy == "[]"


def test_the_torch_engine_without_torch_says_what_to_serve_instead(exported_bundle: Path, tiny_bundle: Path) -> None:
    code = ("import sys; sys.modules['torch'] = None  # as in the serving install, where import torch fails\n"
            "from classifier.errors import UserError; from classifier.predict import Predictor\n"
            "try: Predictor.load(sys.argv[1], 'torch')\n"
            "except UserError as error: print(error)")
    for bundle_dir, advice in ((exported_bundle, "serve the bundle's ONNX model instead (engine auto, int8 or fp32)"),
                               (tiny_bundle, "the bundle has no ONNX model: run 'ticketclf export'")):
        result = subprocess.run([sys.executable, "-c", code, str(bundle_dir)], capture_output=True, text=True,
                                check=True)
        assert "the PyTorch engine needs torch, which is not installed" in result.stdout and advice in result.stdout
