"""ONNX export, drift check, and the Predictor on ordinary and hostile inputs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classifier.bundle import read_examples, read_manifest, write_manifest
from classifier.errors import ModelError, UserError
from classifier.export import ExportOptions, decided_by_one_ticket, export
from classifier.predict import Predictor


def test_export_writes_both_models_and_drift_figures(exported_bundle: Path) -> None:
    manifest = read_manifest(exported_bundle)
    section = manifest["onnx"]
    for name in ("model.onnx", "model_int8.onnx"):
        assert (exported_bundle / "onnx" / name).stat().st_size == section["files"][name]["bytes"]
    assert section["files"]["model_int8.onnx"]["bytes"] < section["files"]["model.onnx"]["bytes"] / 2
    drift = section["drift"]
    assert drift["examples"] == manifest["data"]["validation"]["rows_used"]
    assert drift["fp32_max_abs_logit_diff"] < 1e-3
    assert drift["fp32_argmax_agreement"] >= 0.999
    assert 0.8 <= drift["int8_argmax_agreement"] <= 1.0
    assert manifest["serving"]["engine"] in ("int8", "fp32")
    assert section["opset"] >= 14
    assert json.loads((exported_bundle / "reports" / "drift.json").read_text()) == drift


def test_exported_graphs_are_fused_and_int8_attention_is_quantized(exported_bundle: Path) -> None:
    import onnx

    def op_types(name: str) -> set[str]:
        graph = onnx.load(str(exported_bundle / "onnx" / name), load_external_data=False).graph
        return {node.op_type for node in graph.node}

    fp32, int8 = op_types("model.onnx"), op_types("model_int8.onnx")
    assert "Attention" in fp32 and "QAttention" in int8  # fused attention, in int8 for the int8 model
    # SkipLayerNormalization is left out on purpose (slower here; see FUSION_OVERRIDES in classifier/predict.py).
    assert "SkipLayerNormalization" not in fp32 | int8
    assert "LayerNormalization" in int8
    # The pooler reads the first token only, so the last layer computes only that one past attention.
    assert read_manifest(exported_bundle)["onnx"]["last_layer_first_token_only"] is True


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


def test_top_k_ranks_every_label_as_predict_proba_scores_it(exported_bundle: Path) -> None:
    predictor = Predictor.load(exported_bundle)
    texts, _ = read_examples(exported_bundle)
    # A top_k over the label count gives every label once, in the order of predict_proba's scores.
    predictions = predictor.predict(texts[:8], top_k=len(predictor.labels) + 5)
    for prediction, scores in zip(predictions, predictor.predict_proba(texts[:8])):
        order = np.argsort(-scores, kind="stable")
        assert [s["label"] for s in prediction.top_k] == [predictor.labels[i] for i in order]
        assert [s["score"] for s in prediction.top_k] == [round(float(scores[i]), 6) for i in order]


def test_the_bundles_temperature_scales_confidence_but_not_the_ranking(bundle_copy: Path) -> None:
    texts, _ = read_examples(bundle_copy)
    manifest = read_manifest(bundle_copy)
    manifest["calibration"] = {"temperature": 1.0, "tickets": 60}
    write_manifest(bundle_copy, manifest)
    before = Predictor.load(bundle_copy).predict(texts[:6], top_k=3)
    manifest["calibration"]["temperature"] = 0.5
    write_manifest(bundle_copy, manifest)
    predictor = Predictor.load(bundle_copy)
    logits, _ = predictor.logits(texts[:6])
    scaled = np.exp(logits / 0.5) / np.exp(logits / 0.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(predictor.predict_proba(texts[:6]), scaled, rtol=1e-5)
    after = predictor.predict(texts[:6], top_k=3)
    assert [[s["label"] for s in p.top_k] for p in after] == [[s["label"] for s in p.top_k] for p in before]
    assert all(a.confidence > b.confidence for a, b in zip(after, before))  # sharper, same order
    for bad in (0, -1, "nan", "warm"):
        manifest["calibration"]["temperature"] = bad
        write_manifest(bundle_copy, manifest)
        with pytest.raises(UserError, match=r"manifest does not fit this release \(calibration.temperature: a positive"):
            Predictor.load(bundle_copy)
    for none in ({"temperature": None}, None):  # written by hand: no calibration
        manifest["calibration"] = none
        write_manifest(bundle_copy, manifest)
        assert Predictor.load(bundle_copy).temperature == 1.0


def test_the_model_name_is_the_one_given_at_training_wherever_the_bundle_lives(exported_bundle: Path) -> None:
    # The fixture trains into bundles/tiny and copies that to bundles/exported (as a container mounts /model).
    assert exported_bundle.name == "exported"
    assert Predictor.load(exported_bundle).name == "tiny"


def test_a_bundle_from_before_names_were_recorded_is_named_by_its_directory(bundle_copy: Path) -> None:
    manifest = read_manifest(bundle_copy)
    del manifest["name"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
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
    with pytest.raises(UserError, match="batch_size must be at least 1"):
        predictor.predict(["one ticket"], batch_size=0)


@pytest.mark.parametrize("text", [
    "x" * 100_000,
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
    manifest["thresholds"]["per_class"] = {shown.label: shown.confidence}
    write_manifest(bundle_copy, manifest)
    again = Predictor.load(bundle_copy).predict([texts[index]])[0]
    assert again.confidence == shown.confidence
    assert not again.needs_review  # at the threshold, as /labels shows it: not below it


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("max_length"), r"\(max_length: a whole number >= 2 expected, found null\)"),
    (lambda m: m.update(labels="billing"), r"labels: a list of label names expected, found \"billing\""),
    (lambda m: m.update(labels=[]), r"labels: a list of label names expected, found \[\]"),
    (lambda m: m.update(labels=["a", "b", "a"]), r"labels: 'a' listed more than once"),
    (lambda m: m.update(thresholds=None), r"thresholds: an object expected, found null"),
    (lambda m: m["thresholds"].update({"global": "NaN"}), r"thresholds.global: a number expected, found \"NaN\""),
    (lambda m: m.update(text=None), r"text: an object expected, found null"),
    (lambda m: m.update(serving={"engine": "fp16"}), r"serving.engine: int8 or fp32 or torch expected, found \"fp16\""),
    (lambda m: m.pop("bundle_version"), r"bundle_version: a string expected, found null"),
])
def test_a_manifest_edited_out_of_shape_is_a_clear_error(bundle_copy: Path, edit, message: str) -> None:
    manifest = read_manifest(bundle_copy)
    edit(manifest)
    write_manifest(bundle_copy, manifest)
    with pytest.raises(UserError, match="manifest does not fit this release .*" + message):
        Predictor.load(bundle_copy)


def test_a_model_with_other_labels_than_the_manifest_is_refused_at_load(bundle_copy: Path) -> None:
    manifest = read_manifest(bundle_copy)
    manifest["labels"] = manifest["labels"][:-1]  # e.g. onnx/ copied in from a bundle with one class less
    write_manifest(bundle_copy, manifest)
    with pytest.raises(UserError, match=rf"the int8 model gives {len(manifest['labels']) + 1} scores per ticket, "
                                        rf"but the manifest lists {len(manifest['labels'])} labels"):
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


def test_export_warns_that_per_class_thresholds_belong_to_the_model_before(bundle_copy: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    manifest = read_manifest(bundle_copy)
    manifest["thresholds"]["per_class"] = {manifest["labels"][0]: 0.8}
    write_manifest(bundle_copy, manifest)
    with caplog.at_level(logging.WARNING, logger="classifier.export"):
        export(bundle_copy, ExportOptions(optimize=False))
    assert "thresholds in the manifest were measured on the model exported before" in caplog.text


@pytest.mark.parametrize(("drop", "limit", "examples", "one_ticket"), [
    (1.67, 1.0, 60, True),  # 1 ticket of 60 is 1.67 points: that one ticket decided
    (3.33, 1.0, 60, False),  # 2 tickets: clearly over
    (1.5, 1.0, 1000, False),  # 15 tickets
    (0.0, 1.0, 60, False),  # not refused at all
    (0.0, -100.0, 60, False),  # refused by a limit no ticket could meet
])
def test_a_refusal_decided_by_one_validation_ticket_is_recognised(drop: float, limit: float, examples: int,
                                                                  one_ticket: bool) -> None:
    assert decided_by_one_ticket(drop, limit, examples) is one_ticket


def test_serving_path_imports_neither_torch_nor_transformers(exported_bundle: Path) -> None:
    code = ("import sys; from classifier.predict import Predictor; "
            f"p = Predictor.load({str(exported_bundle)!r}); p.predict(['my invoice is wrong']); "
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
        result = subprocess.run([sys.executable, "-c", code, str(bundle_dir)], capture_output=True, text=True, check=True)
        assert "the PyTorch engine needs torch, which is not installed" in result.stdout and advice in result.stdout


@pytest.mark.parametrize(("opset", "message"), [
    (1, "the ONNX export failed at opset 1 .*leave out --opset"),  # too old: the exporter fails midway
    (99, "--opset 99: this onnx package knows opsets 1 to"),
])
def test_failed_export_leaves_the_bundle_as_it_was(bundle_copy: Path, opset: int, message: str) -> None:
    before = {p.relative_to(bundle_copy): p.stat().st_mtime_ns for p in bundle_copy.rglob("*")}
    manifest = (bundle_copy / "manifest.json").read_text()
    with pytest.raises(UserError, match=message):
        export(bundle_copy, ExportOptions(opset=opset))
    assert (bundle_copy / "manifest.json").read_text() == manifest
    assert {p.relative_to(bundle_copy): p.stat().st_mtime_ns for p in bundle_copy.rglob("*")} == before


def test_an_export_failing_as_it_swaps_models_in_keeps_the_old_ones(bundle_copy: Path, monkeypatch) -> None:
    from classifier import bundle

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    before = {p.relative_to(bundle_copy): p.read_bytes() for p in bundle_copy.rglob("*") if p.is_file()}
    monkeypatch.setattr(bundle, "write_manifest", disk_full)  # the last step before the export is in place
    with pytest.raises(OSError, match="No space left"):
        export(bundle_copy, ExportOptions(optimize=False))
    after = {p.relative_to(bundle_copy): p.read_bytes() for p in bundle_copy.rglob("*") if p.is_file()}
    assert after == before  # the old models and manifest, and nothing staged or retired left behind


def test_int8_over_the_accuracy_limit_serves_fp32(bundle_copy: Path) -> None:
    export(bundle_copy, ExportOptions(max_accuracy_drop=-100.0, optimize=False))
    manifest = read_manifest(bundle_copy)
    assert manifest["serving"]["engine"] == "fp32"
    assert Predictor.load(bundle_copy).engine.name == "model.onnx"


def test_an_encoder_of_another_family_trains_exports_and_serves(tiny_csv: Path, tmp_path: Path) -> None:
    """A RoBERTa-style encoder (byte-level BPE, <pad> = 1, no token_type_ids), built here with random
    weights, goes through the same stages; padding uses its own pad token, not BERT's [PAD]."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    from classifier.data import load_tickets
    from classifier.options import TrainingOptions
    from classifier.train import train

    tickets, _ = load_tickets(tiny_csv)
    encoder = tmp_path / "roberta"
    encoder.mkdir()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(tickets.texts, vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(encoder))
    tokenizer = RobertaTokenizerFast(vocab_file=str(encoder / "vocab.json"), merges_file=str(encoder / "merges.txt"))
    tokenizer.save_pretrained(encoder)
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, pad_token_id=tokenizer.pad_token_id, type_vocab_size=1)
    RobertaModel(config).save_pretrained(encoder)

    options = TrainingOptions(base_model=str(encoder), epochs=1, batch_size=16, max_length=48)
    bundle_dir = train(tiny_csv, tmp_path / "bundle", options)
    export(bundle_dir)
    drift = read_manifest(bundle_dir)["onnx"]["drift"]
    assert drift["fp32_max_abs_logit_diff"] < 1e-3 and drift["fp32_argmax_agreement"] >= 0.999

    predictor = Predictor.load(bundle_dir, engine="fp32")
    assert "token_type_ids" not in predictor.engine.input_names
    short, long = "refund", "my invoice shows the wrong amount and I was charged twice this month"
    padded = predictor._pad([ids for ids, _ in predictor._encode([short, long])])
    assert tokenizer.pad_token_id == 1 and padded["input_ids"][0, -1] == 1
    batched = predictor.predict_proba([short, long])
    alone = np.vstack([predictor.predict_proba([text]) for text in (short, long)])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    served = Predictor.load(bundle_dir)  # the model the export marked for serving
    assert served.engine_kind in ("int8", "fp32")
    assert all(prediction.label in predictor.labels for prediction in served.predict([short, long]))
