"""End to end: fine-tune the real packaged encoder briefly, save a bundle, reload it with plain transformers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer, EvalPrediction

from classifier.bundle import SCHEMA_VERSION, read_examples, read_manifest
from classifier.calibration import negative_log_likelihood
from classifier.data import prepare_data
from classifier.errors import UserError
from classifier.fields import single_metrics
from classifier.options import LORA_LEARNING_RATE, TrainingOptions
from classifier.train import (
    ATTENTION_BUDGET,
    EVAL_ATTENTION_BUDGET,
    _build_trainer,
    _compute_metrics,
    _length_batches,
    _load_model,
    _load_tokenizer,
    _ShapeBoundedPadding,
    choose_max_length,
    default_base_model,
    epoch_line,
    layer_depth,
    micro_batches,
    pad_multiple,
    train,
    weighted_loss,
)


def test_bundle_manifest_is_complete(tiny_bundle: Path, tiny_csv: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    assert manifest.schema_version == SCHEMA_VERSION
    assert manifest.labels == sorted(manifest.labels) and len(manifest.labels) >= 8
    assert manifest.text.fields == ("subject", "body")
    # What evaluation needs to read a test file as training read this one.
    assert manifest.data.merged_into_other == [] and manifest.data.other_label == "other"
    assert manifest.max_length == 96
    train_info = manifest.data.train
    assert train_info.path == str(tiny_csv) and len(train_info.sha256) == 64
    assert train_info.rows_used + manifest.data.validation.rows_used <= train_info.rows_read
    assert manifest.training.learning_rate == 3e-4
    assert {"accuracy", "macro_f1"} <= set(manifest.training.validation_metrics)
    assert {"torch", "transformers", "python"} <= set(manifest.versions)
    # The encoder's weights, not its path only: the packaged folder's file, as sha256sum gives it.
    weights = Path(default_base_model()) / "model.safetensors"
    assert manifest.versions["base-model model.safetensors sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest.bundle_version and manifest.created_at
    assert (tiny_bundle / "reports" / "data_report.json").is_file()
    assert not tiny_bundle.with_name(tiny_bundle.name + ".checkpoints").exists()


def test_plain_transformers_reproduces_the_validation_accuracy(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bundle).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bundle)
    assert [model.config.id2label[i] for i in range(len(manifest.labels))] == manifest.labels
    texts, labels = read_examples(tiny_bundle)
    with torch.inference_mode():
        batch = tokenizer(texts, truncation=True, max_length=manifest.max_length, padding=True,
                          return_tensors="pt")
        predicted = model(**batch).logits.argmax(-1).numpy()
    accuracy = float(np.mean([manifest.labels[i] == label for i, label in zip(predicted, labels)]))
    assert accuracy == pytest.approx(manifest.training.validation_metrics["accuracy"], abs=1e-6)
    assert accuracy > 2 / len(manifest.labels)  # it learned something beyond chance


def test_training_fits_a_temperature_that_improves_validation_likelihood(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    calibration = manifest.calibration
    assert calibration.tickets == manifest.data.validation.rows_used
    # Recomputed from the saved model: the fitted temperature is the best one, and better than none.
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bundle).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bundle)
    texts, labels = read_examples(tiny_bundle)
    with torch.inference_mode():
        logits = model(**tokenizer(texts, truncation=True, max_length=manifest.max_length, padding=True,
                                   return_tensors="pt")).logits.numpy()
    truth = np.array([manifest.labels.index(label) for label in labels])
    fitted = calibration.temperature
    nll = {t: negative_log_likelihood(logits, truth, t) for t in (1.0, fitted, fitted * 0.8, fitted * 1.25)}
    assert nll[fitted] < nll[1.0] and nll[fitted] <= min(nll[fitted * 0.8], nll[fitted * 1.25])
    assert calibration.validation_nll["calibrated"] == pytest.approx(nll[fitted], abs=1e-3)


def test_the_class_weighted_loss_of_micro_batches_adds_up_to_the_whole_batchs() -> None:
    # Trainer adds the micro-batches' gradients and leaves the scaling to a custom loss: what it computes on 4
    # micro-batches of 2 tickets must be what it computes on the batch of 8 at once, whatever the weights.
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 0, 1, 2, 2])
    loss = weighted_loss(torch.tensor([0.5, 1.0, 2.0]))
    whole = loss({"logits": logits}, labels)
    parts = sum(loss({"logits": logits[i:i + 2]}, labels[i:i + 2], num_items_in_batch=8) for i in range(0, 8, 2))
    assert float(parts) == pytest.approx(float(whole), rel=1e-6)
    # and with all weights 1 it is the plain cross-entropy
    plain = weighted_loss(torch.ones(3))({"logits": logits}, labels)
    assert float(plain) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-6)


def test_the_multi_field_loss_of_micro_batches_adds_up_to_the_whole_batchs() -> None:
    # The same for a model with fields: the class weights, and a field known on few tickets, must weigh the
    # same whether the batch of 8 runs at once or as 8 micro-batches of 1 (long tickets).
    from transformers import BertConfig, BertForSequenceClassification

    from classifier.fields import MISSING, FieldSpec
    from classifier.heads import MultiFieldModel

    torch.manual_seed(0)
    encoder = BertForSequenceClassification(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                                       num_attention_heads=1, intermediate_size=8, num_labels=3))
    specs = [FieldSpec("priority", "single", ("high", "low")), FieldSpec("tags", "tags", ("vip", "eu"))]
    model = MultiFieldModel(encoder, specs, [np.array([0.5, 0.5]), np.array([0.2, 0.3])], label_smoothing=0.1,
                            class_weights=torch.tensor([0.5, 1.0, 4.0]), coverage=[0.25, 0.5])
    result = {"logits": torch.randn(8, 3), "field_logits_0": torch.randn(8, 2), "field_logits_1": torch.randn(8, 2)}
    labels = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2])
    priority = torch.tensor([[0], [MISSING], [MISSING], [1], [MISSING], [MISSING], [MISSING], [MISSING]])
    tags = torch.tensor([[1, 0], [-1, -1], [0, 1], [-1, -1], [0, 0], [-1, -1], [1, 1], [-1, -1]])
    whole = model._loss(result, labels, priority, tags)
    parts = sum(model._loss({key: value[i:i + 1] for key, value in result.items()}, labels[i:i + 1],
                            priority[i:i + 1], tags[i:i + 1]) for i in range(8)) / 8  # Trainer's accumulation
    assert float(parts) == pytest.approx(float(whole), rel=1e-5)


@pytest.mark.parametrize(("width", "rate"), [(32, 2e-4), (384, 2e-4), (768, 5e-5), (1024, 2e-5)])
def test_the_default_learning_rate_follows_the_encoders_width(width: int, rate: float) -> None:
    from classifier.train import _with_encoder_learning_rate

    assert _with_encoder_learning_rate(TrainingOptions(), width).peak_learning_rate == rate
    given = TrainingOptions(learning_rate=1e-4)
    assert _with_encoder_learning_rate(given, width) is given  # a rate asked for is kept, as is LoRA's default
    assert _with_encoder_learning_rate(replace(given, learning_rate=None, lora=True), width).peak_learning_rate == \
        LORA_LEARNING_RATE


def test_the_encoder_check_reads_the_width_the_learning_rate_follows(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BertConfig

    from classifier.train import check_encoder, default_base_model

    encoder = check_encoder(TrainingOptions())  # the packaged MiniLM
    assert (encoder.width, encoder.token_limit) == (384, 512)
    AutoTokenizer.from_pretrained(default_base_model()).save_pretrained(tmp_path)  # a wider encoder: no weights read
    BertConfig(hidden_size=768, num_attention_heads=12, max_position_embeddings=256).save_pretrained(tmp_path)
    encoder = check_encoder(TrainingOptions(base_model=str(tmp_path)))
    assert (encoder.width, encoder.token_limit) == (768, 256)


def test_lora_with_class_weights_merges_into_a_plain_model(tiny_csv: Path, tmp_path: Path) -> None:
    options = TrainingOptions(epochs=1, batch_size=16, max_length=64, lora=True, lora_rank=4,
                              class_weighted_loss=True, seed=1)
    bundle = train(tiny_csv, tmp_path / "lora", options)
    with safe_open(str(bundle / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert names and not any("lora" in name or "base_model" in name for name in names)
    model = AutoModelForSequenceClassification.from_pretrained(bundle)
    assert model.config.num_labels == len(read_manifest(bundle).labels)
    assert read_manifest(bundle).training.options.lora is True
    assert read_manifest(bundle).training.learning_rate == LORA_LEARNING_RATE  # the LoRA default, recorded


def test_existing_output_is_not_overwritten(tiny_bundle: Path, tiny_csv: Path) -> None:
    before = (tiny_bundle / "manifest.json").read_text()
    with pytest.raises(UserError, match="already exists"):
        train(tiny_csv, tiny_bundle, TrainingOptions(epochs=1))
    assert (tiny_bundle / "manifest.json").read_text() == before


def test_overwrite_replaces_only_a_bundle(tiny_csv: Path, tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    data = folder / "tickets.csv"
    data.write_bytes(tiny_csv.read_bytes())
    with pytest.raises(UserError, match="holds the input .*tickets.csv"):
        train(data, folder, TrainingOptions(epochs=1), overwrite=True)
    with pytest.raises(UserError, match="is not a model bundle"):
        train(tiny_csv, folder, TrainingOptions(epochs=1), overwrite=True)
    with pytest.raises(UserError, match="is a file"):
        train(tiny_csv, folder / "notes.txt", TrainingOptions(epochs=1), overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "tickets.csv"]
    app = tmp_path / "web-app"  # a manifest.json of another kind: a web app's, a browser extension's
    app.mkdir()
    (app / "manifest.json").write_text('{"name": "my web app", "version": 2}')
    (app / "index.html").write_text("mine")
    with pytest.raises(UserError, match="its manifest.json is not a model bundle's"):
        train(tiny_csv, app, TrainingOptions(epochs=1), overwrite=True)
    assert sorted(p.name for p in app.iterdir()) == ["index.html", "manifest.json"]


def test_overwrite_never_replaces_a_repository_model_or_its_versions(tiny_bundle: Path, tiny_csv: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from classifier.repository import ModelRepository

    repository = ModelRepository(tmp_path / "models")
    repository.add_version("tickets", lambda target: shutil.copytree(tiny_bundle, target, copy_function=os.link))
    for target in (tmp_path / "models" / "tickets", tmp_path / "models" / "tickets" / "1"):
        with pytest.raises(UserError, match=f"{target}: is in the model repository {tmp_path / 'models'}, which "
                                            "--overwrite would break; train a new version with --repository"):
            train(tiny_csv, target, TrainingOptions(epochs=1), overwrite=True)
    with monkeypatch.context() as inside:  # typed inside the model's folder: the advice names it in full
        inside.chdir(tmp_path / "models" / "tickets")
        with pytest.raises(UserError, match=f"train a new version with --repository {tmp_path / 'models'} --name "
                                            "tickets"):
            train(tiny_csv, Path("1"), TrainingOptions(epochs=1), overwrite=True)
    assert [version.number for version in repository.versions("tickets")] == [1]
    assert repository.champion("tickets").manifest() == read_manifest(tiny_bundle)


def test_resume_without_a_checkpoint_fails_before_reading_the_data(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no checkpoint to resume from"):  # not "file not found"
        train(tmp_path / "not-read.csv", tmp_path / "model", TrainingOptions(resume=True))


def test_unknown_base_model_is_a_user_error(tiny_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot load base model"):
        train(tiny_csv, tmp_path / "x", TrainingOptions(base_model=str(tmp_path / "no-such-model")))


def test_max_length_follows_the_data() -> None:
    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    short = choose_max_length(tokenizer, ["hi there"] * 50)
    long = choose_max_length(tokenizer, ["word " * 200] * 50)
    assert short == 32 and long == 208
    assert choose_max_length(tokenizer, ["word " * 2000] * 5) == 512
    assert choose_max_length(tokenizer, ["word " * 2000] * 5, limit=4096) == 512  # a longer window only if asked
    assert choose_max_length(tokenizer, ["word " * 2000] * 5, limit=256) == 256  # within what the encoder reads


def test_data_report_is_stored(tiny_bundle: Path) -> None:
    report = json.loads((tiny_bundle / "reports" / "data_report.json").read_text())
    assert report["split"]["method"] == "stratified"
    assert set(report["class_counts"]) == {"train", "validation"}


@pytest.mark.parametrize("batch, length, expected", [(32, 64, (32, 1)), (32, 128, (16, 2)), (32, 256, (4, 8)),
                                                     (32, 512, (1, 32)), (24, 256, (4, 6)), (7, 512, (1, 7))])
def test_long_tickets_train_in_micro_batches_that_add_up_to_the_batch(batch: int, length: int,
                                                                      expected: tuple[int, int]) -> None:
    micro, steps = micro_batches(batch, length)
    assert (micro, steps) == expected and micro * steps == batch and micro * length**2 <= ATTENTION_BUDGET or \
        micro == 1


def test_detector_features_are_computed_in_batches_within_the_attention_budget() -> None:
    lengths = [512, 20, 300, 20, 512, 64, 512, 512, 512, 30]
    batches = _length_batches(lengths, most=3)
    assert sorted(index for batch in batches for index in batch) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 3 and (len(batch) == 1 or len(batch) * longest**2 <= EVAL_ATTENTION_BUDGET)
        assert [lengths[i] for i in batch] == sorted(lengths[i] for i in batch)
    assert batches == [[1, 3, 9], [5, 2, 0], [4, 6, 7], [8]]  # shortest first, three at most
    assert _length_batches([512] * 6, most=64) == [[0, 1, 2, 3], [4, 5]]  # 4 x 512^2 is the whole budget


def test_validation_macro_f1_averages_the_classes_with_validation_tickets() -> None:
    # As the evaluation report counts it: class 2 is predicted once, wrongly, and has no validation ticket.
    truth, predicted = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    expected = (2 / 3 + 1) / 2  # not (2/3 + 1 + 0) / 3
    assert _compute_metrics(EvalPrediction(np.eye(3)[predicted], truth))["macro_f1"] == pytest.approx(expected)
    assert single_metrics(predicted, truth)["macro_f1"] == pytest.approx(expected)  # a field's


@pytest.mark.parametrize(("longest", "padded"), [(5, 5), (17, 18), (20, 20), (33, 36), (100, 104), (129, 144),
                                                  (300, 304), (512, 512)])
def test_training_batches_are_padded_within_an_eighth_of_their_longest_ticket(longest: int, padded: int) -> None:
    tokenizer = _load_tokenizer(default_base_model())
    features = [{"input_ids": [101] + [2000] * (length - 2) + [102], "labels": 0} for length in (3, longest)]
    batch = _ShapeBoundedPadding(tokenizer)(features)
    assert tuple(batch["input_ids"].shape) == (2, padded)
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, longest] and batch["labels"].tolist() == [0, 0]


def test_padded_lengths_stay_few() -> None:
    # What bounds the memory PyTorch's CPU kernels keep per shape: 64 lengths up to 512 tokens, not 512.
    assert len({pad_multiple(n) * -(-n // pad_multiple(n)) for n in range(1, 513)}) == 64


@pytest.mark.parametrize(("name", "depth"), [
    ("bert.embeddings.LayerNorm.weight", 0),
    ("bert.encoder.layer.0.attention.self.query.weight", 1),
    ("bert.encoder.layer.5.output.dense.bias", 6),
    ("roberta.encoder.layer.11.output.LayerNorm.weight", 12),
    ("distilbert.transformer.layer.3.attention.q_lin.weight", 4),
    ("model.layers.21.attn.Wqkv.weight", 22),  # ModernBERT
    ("base_model.model.bert.encoder.layer.2.attention.self.query.lora_A.default.weight", 3),  # peft
    ("bert.pooler.dense.weight", None),
    ("classifier.weight", None),
    ("model.heads.0.weight", None),
])
def test_layer_depth_reads_the_common_encoders_names(name: str, depth: int | None) -> None:
    assert layer_depth(name) == depth


def test_layer_lr_decay_scales_each_layer_below_the_top(tiny_csv: Path, tmp_path: Path) -> None:
    data = prepare_data(tiny_csv)
    options = TrainingOptions(max_length=64, layer_lr_decay=0.5)
    model = _load_model(default_base_model(), data.labels, options)
    trainer, _ = _build_trainer(model, _load_tokenizer(default_base_model()), data, options, 64, tmp_path)
    optimizer = trainer.create_optimizer()
    assert trainer.create_optimizer() is optimizer  # asked again, not scaled twice
    rates = {id(parameter): group["lr"] for group in optimizer.param_groups for parameter in group["params"]}
    peak = options.peak_learning_rate
    parameters = dict(model.named_parameters())
    expected = {"classifier.weight": peak, "bert.pooler.dense.weight": peak,
                "bert.encoder.layer.5.attention.self.query.weight": peak / 2,
                "bert.encoder.layer.0.attention.self.query.weight": peak / 2**6,
                "bert.embeddings.LayerNorm.weight": peak / 2**7}
    assert {name: rates[id(parameters[name])] for name in expected} == pytest.approx(expected)
    assert id(parameters["bert.embeddings.word_embeddings.weight"]) not in rates  # frozen, as without decay
    assert sum(len(group["params"]) for group in optimizer.param_groups) == sum(
        parameter.requires_grad for parameter in model.parameters())


def test_training_says_its_plan_before_it_starts(tiny_csv: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    data = prepare_data(tiny_csv)
    model = _load_model(default_base_model(), data.labels, TrainingOptions())
    tokenizer = _load_tokenizer(default_base_model())
    with caplog.at_level(logging.INFO, logger="classifier.train"):
        _build_trainer(model, tokenizer, data, TrainingOptions(), 64, tmp_path)
        _build_trainer(model, tokenizer, data, TrainingOptions(epochs=2, batch_size=8), 64, tmp_path)
    sized, given = (re.search(r"training on (\d+) tickets, (\d+) for validation: up to (\d+) epochs \((\d+) steps "
                              r"of (\d+) tickets; ([a-z ]+)\), at most 64 tokens", record.getMessage()).groups()
                    for record in caplog.records if record.getMessage().startswith("training on"))
    assert (int(sized[0]), int(sized[1])) == (len(data.train), len(data.validation))
    # Few tickets: more epochs than the default 12, so that training still takes 600 steps.
    assert int(sized[2]) > 12 and int(sized[3]) >= 600 and sized[4:] == ("32", "sized to the data")
    assert given[2:] == ("2", str(2 * -(-len(data.train) // 8)), "8", "as given")


def test_trainer_logs_read_as_lines() -> None:
    assert epoch_line({"loss": 1.20521, "grad_norm": 1.37, "learning_rate": 1.89e-04, "epoch": 4.0}) == \
        "epoch 4 training: loss 1.205, grad norm 1.37, learning rate 0.000189"
    validation = {"eval_loss": 0.9573, "eval_accuracy": 0.875, "eval_runtime": 0.07, "eval_samples_per_second": 450.9,
                  "epoch": 4.0}
    assert epoch_line(validation) == "epoch 4 validation: loss 0.9573, accuracy 0.875"
    with_fields = {"eval_accuracy": 0.74, "eval_macro_f1": 0.4228, "eval_label_macro_f1": 0.6521, "epoch": 2.0}
    assert epoch_line(with_fields) == ("epoch 2 validation: accuracy 0.74, mean macro f1 of label and fields 0.4228, "
                                       "label macro f1 0.6521")
    assert epoch_line({"train_runtime": 1591.3, "train_samples_per_second": 12.4, "train_loss": 1.4211, "epoch": 23.0}
                      ) == "training done in 1591 s, mean training loss 1.421"
    # Resumed at step 10 of 40: Trainer summed 30 steps' losses and divided by 40.
    assert epoch_line({"train_runtime": 60.2, "train_loss": 0.75}, resumed_at=10, steps=40) == \
        "training done in 60 s after resuming at step 10, mean training loss 1 over steps 11 to 40"


def test_a_diverged_training_says_so(tiny_csv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A learning rate of 5 wrecks the encoder in one epoch; the bundle is still written, with a warning that
    # what it serves is far below its own TF-IDF model.
    with caplog.at_level(logging.WARNING, logger="classifier.train"):
        train(tiny_csv, tmp_path / "model", TrainingOptions(epochs=1, learning_rate=5.0, max_length=64, seed=0))
    [warning] = [record.getMessage() for record in caplog.records if "training diverged" in record.getMessage()]
    assert "points below its TF-IDF model alone" in warning and "(peak learning rate 5: too high?)" in warning


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_layer_lr_decay_out_of_range_is_a_user_error(tiny_csv: Path, tmp_path: Path, decay: float) -> None:
    with pytest.raises(UserError, match="--layer-lr-decay must be above 0 and at most 1"):
        train(tiny_csv, tmp_path / "model", TrainingOptions(layer_lr_decay=decay))


@pytest.mark.parametrize(("options", "message"), [
    (TrainingOptions(max_length=1024), r"--max-length 1024 is over what .* can read \(512 tokens\)"),
    (TrainingOptions(lora=True, lora_rank=1000), r"--lora-rank 1000 is over the encoder's hidden size \(384\)"),
    (TrainingOptions(base_model="/nonexistent/encoder"), "cannot load base model '/nonexistent/encoder'"),
])
def test_options_the_encoder_cannot_take_are_refused_before_the_data_is_read(
        tmp_path: Path, options: TrainingOptions, message: str) -> None:
    unreadable = tmp_path / "tickets.csv"  # no label column: reading it would fail with another error
    unreadable.write_text("text\nmy invoice is wrong\n", encoding="utf-8")
    with pytest.raises(UserError, match=message):
        train(unreadable, tmp_path / "model", options)
