"""What the views share: the served model, swapped live (see :mod:`service.model`)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g, has_request_context

from service.model import LoadedModel, ServedModel

EXTENSION = "ticketclf"


@dataclass
class Context:
    served: ServedModel

    def model(self) -> LoadedModel:
        """The model to answer this request with. Read it once per request, so that a swap in the middle
        of a request does not mix two models in one answer. The access log names its version."""
        model = self.served.current
        if has_request_context():
            g.model_version = model.info.version
        return model


def context() -> Context:
    return current_app.extensions[EXTENSION]
