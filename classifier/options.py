"""Training hyper-parameters, in a module of their own so the CLI can show defaults without torch."""

from __future__ import annotations

from dataclasses import dataclass

FULL_LEARNING_RATE = 2e-4
# LoRA adapters start from zero and train few weights: they need larger steps. On the bundled
# sample, 3 epochs: 68.6 % validation accuracy at 1e-3 against 42.4 % at 2e-4 (docs/benchmarks.md).
LORA_LEARNING_RATE = 1e-3


@dataclass
class TrainingOptions:
    """Hyper-parameters of one training run; stored in the manifest as given."""

    base_model: str | None = None  # hub id or local path; None: the packaged MiniLM
    epochs: float = 12.0
    learning_rate: float | None = None  # None: FULL_LEARNING_RATE, or LORA_LEARNING_RATE with lora
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
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    resume: bool = False

    @property
    def peak_learning_rate(self) -> float:
        """The learning rate training uses: the one given, or the default for full or LoRA training."""
        if self.learning_rate is not None:
            return self.learning_rate
        return LORA_LEARNING_RATE if self.lora else FULL_LEARNING_RATE
