"""Training hyper-parameters, in a module of their own so the CLI can show defaults without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainingOptions:
    """Hyper-parameters of one training run; stored in the manifest as given."""

    base_model: str | None = None  # hub id or local path; None: the packaged MiniLM
    epochs: float = 12.0
    learning_rate: float = 2e-4
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
