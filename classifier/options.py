"""The options of the stages, in a module of their own so the CLI can show their choices and
defaults without importing torch (or pydantic). Each default is set here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from classifier.text import TextOptions

FULL_LEARNING_RATE = 2e-4  # measured on MiniLM, 384 wide (the packaged encoder)
# Wider encoders take smaller steps: published full fine-tuning of 768-wide encoders (BERT-base, RoBERTa-base,
# XLM-R base) uses 2e-5 to 5e-5, of 1,024-wide ones 1e-5 to 3e-5, and at 2e-4 they often end up answering one
# class. Not measured here (no other encoder's weights offline): the top of each range, by hidden size.
LEARNING_RATE_BY_WIDTH = ((384, FULL_LEARNING_RATE), (768, 5e-5), (None, 2e-5))
# LoRA adapters start from zero and train few weights: they need larger steps. On the bundled sample,
# 3 epochs: 68.6 % validation accuracy at 1e-3 against 42.4 % at 2e-4 (docs/benchmarks.md, "Decisions").
LORA_LEARNING_RATE = 1e-3
# Epochs when none are given, or more where they would make fewer than MIN_STEPS optimisation steps: on
# BANKING77 subsets of 500 and 1,000 tickets, 600 steps gave 78.5 and 85.6 % served against 71.6 and 84.8 %
# for 12 epochs (docs/benchmarks.md, "Accuracy on every export").
DEFAULT_EPOCHS = 12.0
MIN_STEPS = 600
# The validation split training holds out when given no file: a tenth of the tickets, raised to the
# MIN_FITTED_TICKETS that calibration and the blend with TF-IDF need to be fitted at all, up to a quarter.
# On 8 BANKING77 intents x 40 tickets, 32 validation tickets left both unfitted (docs/benchmarks.md).
VALIDATION_SHARE, MAX_VALIDATION_SHARE = 0.1, 0.25
MIN_FITTED_TICKETS = 50
ServingEngine = Literal["int8", "fp32", "torch"]  # the models a bundle can serve (the export picks int8 or fp32)
SERVING_ENGINES: tuple[str, ...] = get_args(ServingEngine)
ENGINES = ("auto", *SERVING_ENGINES)  # what predict, evaluate and serve accept; auto: the bundle's choice
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # auto: bf16 where the GPU or CPU supports it, else fp32


@dataclass(frozen=True)
class DataOptions:
    """How a ticket export becomes training and validation tickets; stored in the manifest as given."""

    text: TextOptions = field(default_factory=TextOptions)  # fields empty: detect them
    label_column: str | None = None  # None: detect it
    # More fields to predict besides the label (classifier.fields): single-label columns, and a tags column
    # (a JSON list, or text split on tags_delimiter; None: detected).
    field_columns: tuple[str, ...] = ()
    tags_column: str | None = None
    tags_delimiter: str | None = None
    validation_path: str | None = None  # a validation file; None: hold out a stratified split
    validation_fraction: float | None = None  # None: sized to the data (classifier.data.validation_share)
    min_class_count: int = 5
    merge_rare_classes: bool = False  # else classes under min_class_count are an error
    drop_rare_classes: bool = False  # train without them instead (one-off queues); not with merge_rare_classes


@dataclass
class TrainingOptions:
    """Hyper-parameters of one training run; stored in the manifest as given."""

    base_model: str | None = None  # hub id or local path; None: the packaged MiniLM
    epochs: float | None = None  # None: sized to the data (classifier.schedule.planned_epochs)
    # None: LORA_LEARNING_RATE with lora, else by the encoder's width (default_learning_rate), FULL_LEARNING_RATE
    # for the packaged encoder
    learning_rate: float | None = None
    batch_size: int = 32
    max_length: int | None = None  # None: from the training data's token lengths
    seed: int = 42
    warmup_ratio: float = 0.06
    label_smoothing: float = 0.1  # ignored with class_weighted_loss
    weight_decay: float = 0.01
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    class_weighted_loss: bool = False
    freeze_word_embeddings: bool = True
    group_by_length: bool = True
    early_stopping_patience: int = 3
    # Each encoder layer learns this many times the rate of the layer above it (the embeddings below the
    # first); what sits on top (pooler, heads) learns at the full rate. 1: one rate for all.
    layer_lr_decay: float = 1.0
    precision: str = "auto"  # one of PRECISIONS
    resume: bool = False
    # Share of in-scope validation tickets the out-of-scope detector's threshold flags (classifier.oos).
    oos_abstention: float = 0.01
    # Loss weight of each field by column name (DataOptions.field_columns, tags_column, the label column);
    # a field not named weighs 1.
    field_weights: dict[str, float] = field(default_factory=dict)

    def for_encoder_width(self, hidden_size: int | None) -> TrainingOptions:
        """These options with the learning rate for an encoder ``hidden_size`` wide, where none was given and
        the width's differs from :data:`FULL_LEARNING_RATE` (the options stay as they were for MiniLM)."""
        rate = default_learning_rate(hidden_size)
        if self.learning_rate is not None or self.lora or rate == FULL_LEARNING_RATE:
            return self
        return replace(self, learning_rate=rate)

    @property
    def peak_learning_rate(self) -> float:
        """The learning rate training uses: the one given, or the default for full or LoRA training (train()
        first sets the one for a wider encoder than MiniLM, :meth:`for_encoder_width`)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return LORA_LEARNING_RATE if self.lora else FULL_LEARNING_RATE


def default_learning_rate(hidden_size: int | None) -> float:
    """Full fine-tuning's learning rate for an encoder ``hidden_size`` wide (:data:`LEARNING_RATE_BY_WIDTH`)."""
    return next(rate for width, rate in LEARNING_RATE_BY_WIDTH
                if width is None or hidden_size is None or hidden_size <= width)
