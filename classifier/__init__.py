"""Ticket classification: fine-tune, export, predict, evaluate.

Importing the package is cheap: ``Predictor`` and friends load onnxruntime and
tokenizers only; torch, transformers and optimum are imported by the training,
export and evaluation modules that need them.
"""

from classifier.errors import UserError
from classifier.text import TextOptions, ticket_text

__all__ = ["UserError", "TextOptions", "ticket_text"]
__version__ = "0.1.0"
