"""The one model an app serves: loaded and warmed up once, then shared by all request threads."""

from __future__ import annotations

import logging
from pathlib import Path

from classifier.predict import Predictor, default_threads

log = logging.getLogger("ticketclf.service")

# The first runs of a new input shape are slow (onnxruntime allocates); pay that before traffic.
_WARM_UP = ("warm up " * 4, "warm up " * 512)


class ModelState:
    """A :class:`Predictor`, loaded and warmed up: an app exists only once its model is ready."""

    def __init__(self, bundle: Path, engine: str = "auto", threads: int | None = None) -> None:
        self.threads = threads or default_threads()
        self.predictor = Predictor.load(bundle, engine=engine, threads=self.threads)
        self.predictor.predict(list(_WARM_UP))
        for text in _WARM_UP:
            self.predictor.predict([text])
        log.info("model %s %s ready (%s: %s, %d thread(s))", self.predictor.name, self.predictor.version,
                 self.predictor.engine_kind, self.predictor.engine.name, self.threads)
