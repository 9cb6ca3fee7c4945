"""What the views share: the model, the request schemas for its fields, the OpenAPI document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app

from service.model import ModelState
from service.schemas import ModelInfo, Schemas

EXTENSION = "ticketclf"


@dataclass
class Context:
    model: ModelState
    schemas: Schemas
    openapi: dict[str, Any]
    model_info: ModelInfo = field(init=False)  # in every answer; the model does not change while serving
    stopping: bool = False  # set on SIGTERM (service.worker): /ready answers 503 while waiting requests drain

    def __post_init__(self) -> None:
        predictor = self.model.predictor
        self.model_info = ModelInfo(name=predictor.name, version=predictor.version)


def context() -> Context:
    return current_app.extensions[EXTENSION]


def mark_stopping(app: Flask) -> None:
    """Make ``/ready`` answer 503 from now on, so load balancers stop routing here."""
    app.extensions[EXTENSION].stopping = True
