"""One encoder, one head per field: the model training fits when a bundle predicts more than its label.

The label keeps the encoder's own classification head (the bundle's model stays a plain
``AutoModelForSequenceClassification``); each other field (:class:`classifier.fields.FieldSpec`) is a
linear head on the last layer's first-token state, the state the out-of-scope detector reads and the
ONNX export already outputs. The heads are saved apart, as plain arrays (``bundle.FIELD_HEADS_FILE``:
``<i>.weight`` and ``<i>.bias`` per field): PyTorch
applies them after the encoder, the export adds them to the ONNX graph, so one run yields every field.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from classifier.fields import MISSING, FieldSpec


class MultiFieldModel(torch.nn.Module):
    """``model`` (a sequence classifier, its head for the label) and a head per field, trained jointly:
    the loss is the label's cross-entropy plus each field's, weighted; a ticket without a field's value
    (-100, or a tags row of -1) adds nothing to that field's loss.

    Every term is a sum over the tickets of a micro-batch divided by a count fixed before training, not a mean
    over the micro-batch: long tickets train in micro-batches of 1 to 16 (``train.micro_batches``), whose
    gradients Trainer adds, and a mean per micro-batch would cancel the class weights (a weighted mean over one
    ticket is its plain loss) and give a field known on few tickets a weight that depends on the ticket length.
    A field's sum is divided by the tickets times its ``coverage`` (the training split's share of tickets with
    its value): on average, the mean over the tickets that have one."""

    def __init__(self, model: torch.nn.Module, fields: Sequence[FieldSpec], priors: Sequence[np.ndarray],
                 label_weight: float = 1.0, label_smoothing: float = 0.0,
                 class_weights: torch.Tensor | None = None, coverage: Sequence[float] | None = None) -> None:
        super().__init__()
        config: Any = model.config
        self.model = model
        self.fields = list(fields)
        heads = [torch.nn.Linear(config.hidden_size, len(spec.labels)) for spec in fields]
        for head, spec, prior in zip(heads, fields, priors):
            head.weight.data.normal_(0.0, getattr(config, "initializer_range", 0.02))
            # Biases start at the training split's log-odds (tags) or log-frequencies (classes): a tag on 5 % of
            # tickets would otherwise start at 0.5 for every ticket, and at the learning rate that suits the
            # encoder its bias needs thousands of steps to get down to -3.
            rate = np.clip(np.asarray(prior, dtype=np.float64), 1e-4, 1 - 1e-4)
            start = np.log(rate / (1 - rate)) if spec.kind == "tags" else np.log(rate)
            head.bias.data.copy_(torch.from_numpy(start.astype(np.float32)))
        self.heads = torch.nn.ModuleList(heads)
        self.dropout = torch.nn.Dropout(getattr(config, "hidden_dropout_prob", 0.1) or 0.1)
        self.label_weight = label_weight
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self.coverage = list(coverage) if coverage is not None else [1.0] * len(self.fields)
        self._accepted = set(inspect.signature(model.forward).parameters) | {"input_ids", "attention_mask"}

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                field_labels: torch.Tensor | None = None, tag_labels: torch.Tensor | None = None) -> dict[str, Any]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        outputs = self.model(**{k: v for k, v in inputs.items() if v is not None and k in self._accepted},
                             output_hidden_states=True)
        features = self.dropout(outputs.hidden_states[-1][:, 0])
        result: dict[str, Any] = {"logits": outputs.logits}
        for index, head in enumerate(self.heads):
            result[f"field_logits_{index}"] = head(features)
        if labels is not None:
            result = {"loss": self._loss(result, labels, field_labels, tag_labels), **result}
        return result

    def _loss(self, result: dict[str, Any], labels: torch.Tensor, field_labels: torch.Tensor | None,
              tag_labels: torch.Tensor | None) -> torch.Tensor:
        logits = result["logits"].float()
        tickets = len(labels)
        weights = self.class_weights.to(logits.device) if self.class_weights is not None else None
        loss = self.label_weight * torch.nn.functional.cross_entropy(
            logits, labels, weight=weights, label_smoothing=self.label_smoothing, ignore_index=MISSING,
            reduction="sum") / tickets
        single = 0
        for index, (spec, coverage) in enumerate(zip(self.fields, self.coverage)):
            field_logits = result[f"field_logits_{index}"].float()
            if spec.kind == "tags":
                assert tag_labels is not None
                known = tag_labels[:, 0] >= 0
                summed = torch.nn.functional.binary_cross_entropy_with_logits(  # each ticket's mean over its tags
                    field_logits[known], tag_labels[known].float(), reduction="none").mean(dim=1).sum()
            else:
                assert field_labels is not None
                summed = torch.nn.functional.cross_entropy(
                    field_logits, field_labels[:, single], label_smoothing=self.label_smoothing,
                    ignore_index=MISSING, reduction="sum")
                single += 1
            loss = loss + spec.loss_weight * summed / (tickets * max(coverage, 1e-6))
        return loss


def save_heads(model: MultiFieldModel, path: Path) -> None:
    """The field heads as plain float32 arrays (no pickle): ``<i>.weight`` and ``<i>.bias``."""
    from safetensors.numpy import save_file

    arrays = {}
    for index, head in enumerate(cast(list[torch.nn.Linear], list(model.heads))):
        arrays[f"{index}.weight"] = head.weight.detach().float().cpu().numpy()
        arrays[f"{index}.bias"] = head.bias.detach().float().cpu().numpy()
    save_file(arrays, str(path))
