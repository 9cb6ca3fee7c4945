"""What the views share: the model, the request schemas for its fields, the OpenAPI document."""

from __future__ import annotations

from dataclasses import dataclass
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

    @property
    def model_info(self) -> ModelInfo:
        predictor = self.model.predictor
        return ModelInfo(name=predictor.name, version=predictor.version)


def context() -> Context:
    return current_app.extensions[EXTENSION]
