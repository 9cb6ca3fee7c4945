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
    (-100, or a tags row of -1) adds nothing to that field's loss."""

    def __init__(self, model: torch.nn.Module, fields: Sequence[FieldSpec], priors: Sequence[np.ndarray],
                 label_weight: float = 1.0, label_smoothing: float = 0.0,
                 class_weights: torch.Tensor | None = None) -> None:
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
        weights = self.class_weights.to(logits.device) if self.class_weights is not None else None
        loss = self.label_weight * torch.nn.functional.cross_entropy(
            logits, labels, weight=weights, label_smoothing=self.label_smoothing, ignore_index=MISSING)
        single = 0
        for index, spec in enumerate(self.fields):
            field_logits = result[f"field_logits_{index}"].float()
            if spec.kind == "tags":
                assert tag_labels is not None
                known = tag_labels[:, 0] >= 0
                if known.any():
                    loss = loss + spec.loss_weight * torch.nn.functional.binary_cross_entropy_with_logits(
                        field_logits[known], tag_labels[known].float())
                continue
            assert field_labels is not None
            target = field_labels[:, single]
            single += 1
            if (target != MISSING).any():  # a batch with no value would make the mean NaN
                loss = loss + spec.loss_weight * torch.nn.functional.cross_entropy(
                    field_logits, target, label_smoothing=self.label_smoothing, ignore_index=MISSING)
        return loss


def save_heads(model: MultiFieldModel, path: Path) -> None:
    """The field heads as plain float32 arrays (no pickle): ``<i>.weight`` and ``<i>.bias``."""
    from safetensors.numpy import save_file

    arrays = {}
    for index, head in enumerate(cast(list[torch.nn.Linear], list(model.heads))):
        arrays[f"{index}.weight"] = head.weight.detach().float().cpu().numpy()
        arrays[f"{index}.bias"] = head.bias.detach().float().cpu().numpy()
    save_file(arrays, str(path))
