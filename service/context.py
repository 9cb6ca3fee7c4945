"""What the views share: the model, the request schemas for its fields, the OpenAPI document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from service.model import ModelState
from service.schemas import ModelInfo, Schemas

EXTENSION = "ticketclf"


@dataclass
class Context:
    model: ModelState
    schemas: Schemas
    openapi: dict[str, Any]
    model_info: ModelInfo = field(init=False)  # in every answer; the model does not change while serving

    def __post_init__(self) -> None:
        predictor = self.model.predictor
        self.model_info = ModelInfo(name=predictor.name, version=predictor.version)


def context() -> Context:
    return current_app.extensions[EXTENSION]
