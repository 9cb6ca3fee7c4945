"""Training variants measured against ``ticketclf train``'s defaults (issue 21), one change each.

None of them is part of the product: each is applied here, in the benchmark's process, so that a variant
that loses leaves no option behind. ``small_data.py --variant NAME`` trains with one of them.

- ``lp-ft``: linear probe, then fine-tune. A logistic regression on the frozen encoder's pooled features of
  the training split becomes the classification head the fine-tuning starts from (Kumar et al. 2022).
- ``contrastive``: a SetFit-style warm-up. The encoder is first trained for ``CONTRASTIVE_EPOCHS`` with a
  supervised contrastive loss on its mean-pooled sentence embeddings (tickets of one label pulled
  together, the others pushed apart; Khosla et al. 2020), then fine-tuned as usual.
- ``llrd``: layer-wise learning-rate decay: each layer below the top learns ``LLRD_DECAY`` times the rate
  of the one above it (the head and the pooler at the full rate): the product's ``--layer-lr-decay``, which
  this variant sets.
- ``rdrop``: R-Drop: every batch goes through the model twice (two dropout masks), and the loss adds
  ``RDROP_ALPHA`` times the symmetric KL divergence of the two predictions (Liang et al. 2021).
- ``mean-pooling``: the head reads the mean of the last layer over the ticket's tokens (how the encoder was
  pre-trained for sentence embeddings) instead of the first token through BERT's pooler. Optimum's export
  knows only the pooler, so this variant is not exported: its bundle is scored by PyTorch (the same patch
  applied to the loaded model), blended with the TF-IDF model as the export would serve it.
- ``averaging``: tail weight averaging (SWA on the product's decaying schedule; Izmailov et al. 2018): the
  model kept is the mean of the weights at the end of each epoch from the middle of the planned epochs on,
  instead of the last epoch's weights alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainerCallback

from classifier import predict
from classifier import train as training
from classifier.data import prepare_data
from classifier.options import DataOptions, TrainingOptions
from classifier.schedule import AnnealingTrainer

CONTRASTIVE_EPOCHS = 4
CONTRASTIVE_LEARNING_RATE = 2e-5  # SetFit's rate for the encoder's contrastive phase
CONTRASTIVE_TEMPERATURE = 0.1
LLRD_DECAY = 0.85
RDROP_ALPHA = 1.0
BATCH = 32


def apply(variant: str | None, train_file: Path, options: TrainingOptions, data_options: DataOptions,
          work: Path) -> TrainingOptions:
    """The options to train with under ``variant`` (a warm-started base model where the variant makes one);
    trainer variants are switched on in this process until :func:`reset`."""
    reset()
    if variant is None:
        return options
    if variant in SETTINGS:
        return dataclasses.replace(options, **SETTINGS[variant])
    if variant in WARM_STARTS:
        base = WARM_STARTS[variant](train_file, options, data_options, work / f"base-{variant}")
        return dataclasses.replace(options, base_model=str(base))
    if variant in PATCHES:
        for owner, name, replacement in PATCHES[variant]:
            _originals.append((owner, name, owner.__dict__.get(name)))
            setattr(owner, name, replacement)
        return options
    raise SystemExit(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")


def exported(variant: str | None) -> bool:
    """Whether the variant's bundle can go through ``ticketclf export``."""
    return variant != "mean-pooling"


_originals: list[tuple[Any, str, Any]] = []


def reset() -> None:
    """Back to the product's code."""
    while _originals:
        owner, name, original = _originals.pop()
        if original is None:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


def _training_split(train_file: Path, options: TrainingOptions, data_options: DataOptions
                    ) -> tuple[list[str], list[int], list[str], str]:
    """The training split ``train`` will use (same seed), its label ids, the labels, and the base model."""
    data = prepare_data(train_file, data_options, seed=options.seed)
    index = {label: i for i, label in enumerate(data.labels)}
    return data.train.texts, [index[label] for label in data.train.labels], data.labels, \
        options.base_model or training.default_base_model()


def _batches(count: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    return [order[start:start + BATCH] for start in range(0, count, BATCH)]


def linear_probe(train_file: Path, options: TrainingOptions, data_options: DataOptions, target: Path) -> Path:
    texts, label_ids, labels, base = _training_split(train_file, options, data_options)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    model.eval()
    max_length = options.max_length or training.choose_max_length(tokenizer, texts)
    features = []
    with torch.inference_mode():
        for rows in _batches(len(texts), 0):
            encoded = tokenizer([texts[i] for i in rows], truncation=True, max_length=max_length, padding=True,
                                return_tensors="pt")
            features.append((rows, model.base_model(**encoded).pooler_output.numpy()))
    ordered = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for rows, values in features:
        ordered[rows] = values
    probe = LogisticRegression(max_iter=2000).fit(ordered, label_ids)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(probe.coef_.astype(np.float32)))
        model.classifier.bias.copy_(torch.from_numpy(probe.intercept_.astype(np.float32)))
    print(f"linear probe: training accuracy {probe.score(ordered, label_ids):.4f}", flush=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def contrastive(train_file: Path, options: TrainingOptions, data_options: DataOptions, target: Path) -> Path:
    texts, label_ids, _, base = _training_split(train_file, options, data_options)
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base)
    encoder.train()
    max_length = options.max_length or training.choose_max_length(tokenizer, texts)
    labels = torch.tensor(label_ids)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=CONTRASTIVE_LEARNING_RATE)
    torch.manual_seed(options.seed)
    for epoch in range(CONTRASTIVE_EPOCHS):
        losses = []
        for rows in _batches(len(texts), options.seed + epoch):
            encoded = tokenizer([texts[i] for i in rows], truncation=True, max_length=max_length, padding=True,
                                return_tensors="pt")
            hidden = encoder(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            loss = supervised_contrastive_loss(embeddings, labels[torch.from_numpy(rows)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        print(f"contrastive warm-up: epoch {epoch + 1}, loss {np.mean(losses):.4f}", flush=True)
    encoder.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Khosla et al.'s loss on unit-length ``embeddings``: for each ticket with a same-label partner in the
    batch, the mean log-probability of its partners among all the other tickets (0 with no such ticket)."""
    similarity = embeddings @ embeddings.T / CONTRASTIVE_TEMPERATURE
    self_mask = torch.eye(len(labels), dtype=torch.bool)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    log_probability = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    partners = (labels[:, None] == labels[None, :]) & ~self_mask
    has_partner = partners.any(dim=1)
    if not has_partner.any():  # with many labels, a batch may hold none twice: nothing to pull together
        return embeddings.sum() * 0.0
    per_ticket = log_probability.masked_fill(~partners, 0).sum(1) / partners.sum(1).clamp(min=1)
    return -per_ticket[has_partner].mean()


def _rdrop_loss(self: AnnealingTrainer, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                num_items_in_batch: Any = None) -> Any:
    if not model.training:
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
    first_loss, first = Trainer.compute_loss(self, model, dict(inputs), True, num_items_in_batch)
    second_loss, second = Trainer.compute_loss(self, model, dict(inputs), True, num_items_in_batch)
    p, q = (torch.log_softmax(outputs["logits"].float(), dim=-1) for outputs in (first, second))
    divergence = 0.5 * (torch.nn.functional.kl_div(p, q, log_target=True, reduction="batchmean")
                        + torch.nn.functional.kl_div(q, p, log_target=True, reduction="batchmean"))
    loss = (first_loss + second_loss) / 2 + RDROP_ALPHA * divergence
    return (loss, first) if return_outputs else loss


class MeanPooler(torch.nn.Module):
    """Stands in for BERT's pooler: the mean of the last layer over the tokens the attention mask keeps (the
    mask is handed over by a hook on the encoder, since BERT calls its pooler with the hidden states only)."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return hidden.mean(dim=1)
        mask = self.mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def with_mean_pooling(model: torch.nn.Module) -> torch.nn.Module:
    encoder = model.base_model
    pooler = MeanPooler()
    encoder.pooler = pooler

    def remember_mask(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        pooler.mask = kwargs.get("attention_mask")

    encoder.register_forward_pre_hook(remember_mask, with_kwargs=True)
    return model


class WeightAveraging(TrainerCallback):
    """Keeps the running mean of the model's floating-point weights at the end of each epoch from
    ``start`` of the planned epochs on, and puts it into the model when training ends."""

    def __init__(self, start: float = 0.5) -> None:
        self.start = start
        self.mean: dict[str, torch.Tensor] = {}
        self.count = 0

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: torch.nn.Module | None = None,
                     **kwargs: Any) -> None:
        if model is None or state.epoch < self.start * args.num_train_epochs:
            return
        self.count += 1
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value = value.detach().float()
                if name in self.mean:
                    self.mean[name] += (value - self.mean[name]) / self.count
                else:
                    self.mean[name] = value.clone()

    def on_train_end(self, args: Any, state: Any, control: Any, model: torch.nn.Module | None = None,
                     **kwargs: Any) -> None:
        if model is not None and self.mean:
            print(f"weight averaging: the mean of {self.count} epochs' weights", flush=True)
            state = model.state_dict()
            model.load_state_dict({name: mean.to(state[name].dtype) for name, mean in self.mean.items()}, strict=False)


_annealing_trainer_init = AnnealingTrainer.__init__


def _averaging_trainer_init(self: AnnealingTrainer, *args: Any, **kwargs: Any) -> None:
    _annealing_trainer_init(self, *args, **kwargs)
    self.add_callback(WeightAveraging())


_load_model = training._load_model
_torch_engine_init = predict.TorchEngine.__init__


def _load_mean_pooling_model(*args: Any, **kwargs: Any) -> torch.nn.Module:
    return with_mean_pooling(_load_model(*args, **kwargs))


def _mean_pooling_engine(self: predict.TorchEngine, *args: Any, **kwargs: Any) -> None:
    _torch_engine_init(self, *args, **kwargs)
    with_mean_pooling(self.model)


WARM_STARTS: dict[str, Callable[..., Path]] = {"lp-ft": linear_probe, "contrastive": contrastive}
PATCHES: dict[str, list[tuple[Any, str, Callable[..., Any]]]] = {
    "rdrop": [(AnnealingTrainer, "compute_loss", _rdrop_loss)],
    "averaging": [(AnnealingTrainer, "__init__", _averaging_trainer_init)],
    "mean-pooling": [(training, "_load_model", _load_mean_pooling_model),
                     (predict.TorchEngine, "__init__", _mean_pooling_engine)]}
SETTINGS: dict[str, dict[str, Any]] = {"llrd": {"layer_lr_decay": LLRD_DECAY}}
VARIANTS = (*WARM_STARTS, *SETTINGS, *PATCHES)
