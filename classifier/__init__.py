"""Ticket classification: fine-tune, export, predict, evaluate.

Importing the package is cheap: ``Predictor`` and friends load onnxruntime, tokenizers,
scipy's BLAS and safetensors only; torch, transformers and optimum are imported by the training,
export and evaluation modules that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from classifier.errors import UserError
from classifier.text import TextOptions, ticket_text

if TYPE_CHECKING:
    from classifier.predict import Prediction, Predictor

__all__ = ["Prediction", "Predictor", "TextOptions", "UserError", "ticket_text"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``classifier.Predictor`` on first use: ``import classifier`` stays instant for the CLI's --help."""
    if name in ("Predictor", "Prediction"):
        from classifier import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'classifier' has no attribute {name!r}")
