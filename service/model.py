"""The model an app serves, and how it changes while serving.

A :class:`ModelSource` says what should serve: a bundle directory (a symbolic link is followed
afresh each time, so flipping it deploys), or a model in a repository (``REPO/NAME``: its champion
version). :class:`ServedModel` holds the loaded, warmed-up model the requests use. A watcher thread
asks the source every ``interval`` seconds (and at once when :func:`check_all_now` is called, which
the gunicorn worker does on SIGHUP) whether that changed; if so it loads and warms the new model
*beside* the old one, checks it, and only then replaces the reference the views read. Requests keep
being answered by the old model meanwhile, and each request reads the reference once, so it is
answered by one model from start to end.

A model that fails to load or check is refused: the old one keeps serving, and ``/ready``,
``/metrics`` and the log say why. Under gunicorn every accepted model is also copied, as the *last
good* one, into the server's state directory, so a worker that restarts while the model on disk is
broken serves that copy instead of stopping the server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier import bundle
from classifier.errors import UserError, one_line
from classifier.predict import Predictor, default_threads
from classifier.repository import ModelRepository, is_model_dir, open_model
from service import metrics
from service.schemas import ModelInfo, Schemas

log = logging.getLogger("ticketclf.service")

# The first runs of a new input shape are slow (onnxruntime allocates); pay that before traffic.
_WARM_UP = ("warm up " * 4, "warm up " * 512)
STATE_DIR_VARIABLE = "TICKETCLF_STATE_DIR"  # set by gunicorn_conf.py: where workers share the last good model
_LAST_GOOD = "last-good.json"


@dataclass(frozen=True)
class Candidate:
    """What should serve now, as the source reads it."""

    key: str  # differs whenever what should serve differs
    path: Path  # the bundle directory to load
    version: str | None  # the repository's version number; None: a plain bundle (its manifest names it)

    def describe(self) -> str:
        return f"version {self.version} ({self.path})" if self.version else str(self.path)


class BundleSource:
    """A bundle directory. Its key covers the directory the path resolves to now and every file's
    identity, size and time, so a replaced file, an edited manifest or a flipped link is noticed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(os.path.abspath(path))  # not resolved: a link is followed at each look

    def current(self) -> Candidate:
        real = self.path.resolve()
        return Candidate(f"{real}:{_files_digest(real)}", real, None)


def _files_digest(directory: Path) -> str:
    """Changes when any file of the bundle is replaced, rewritten or touched (a stat per file, no reading)."""
    files = (p for p in (*directory.glob("*"), *directory.glob("onnx/*")) if p.is_file())
    # Hidden files aside: an edit's temporary file (".manifest.json.tmp") is not a change of model.
    stats = sorted((str(p.relative_to(directory)), p.stat()) for p in files if not p.name.startswith("."))
    return hashlib.sha256(repr([(name, s.st_ino, s.st_mtime_ns, s.st_size) for name, s in stats]).encode()
                          ).hexdigest()[:16]


class RepositorySource:
    """The champion of a model in a repository: one small file read per look, plus the version
    directory's file identities (an export rewrites a version in place)."""

    def __init__(self, path: Path) -> None:
        self.repository: ModelRepository
        self.repository, self.name = open_model(path)

    def current(self) -> Candidate:
        state = self.repository.serving_state(self.name)
        return Candidate(f"{self.name}/{state.version}:{_files_digest(state.path)}", state.path, str(state.version))


def model_source(path: str | Path) -> BundleSource | RepositorySource:
    """The source for what ``ticketclf serve PATH`` was given: ``REPO/NAME`` or a bundle directory."""
    return RepositorySource(Path(path)) if is_model_dir(path) else BundleSource(Path(path))


@dataclass(frozen=True)
class LoadedModel:
    """One loaded, warmed-up, checked model with what the views build from it. Never changed: a swap
    replaces the whole object."""

    key: str
    path: Path
    predictor: Predictor
    info: ModelInfo  # name, and the repository's version number or else the bundle's own version
    schemas: Schemas  # the requests this model reads (its ticket fields, its label count)
    openapi: dict[str, Any]

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> str:
        return self.info.version


# What the app builds for each model: its request schemas and its OpenAPI document.
Describe = Callable[[Predictor, ModelInfo], tuple[Schemas, dict[str, Any]]]


def load_model(candidate: Candidate, engine: str, threads: int | None, describe: Describe) -> LoadedModel:
    """Load, check (labels against the model's outputs, finite scores: Predictor.load does it) and warm up."""
    predictor = Predictor.load(candidate.path, engine=engine, threads=threads or default_threads())
    predictor.predict(list(_WARM_UP))
    for text in _WARM_UP:
        predictor.predict([text])
    info = ModelInfo(name=predictor.name, version=candidate.version or predictor.version)
    schemas, openapi = describe(predictor, info)
    return LoadedModel(candidate.key, candidate.path, predictor, info, schemas, openapi)


class ServedModel:
    """The model requests are answered with (:attr:`current`), swapped live when the source changes."""

    def __init__(self, source: BundleSource | RepositorySource, load: Callable[[Candidate], LoadedModel],
                 interval: float, state_dir: Path | None = None) -> None:
        self.source = source
        self._load = load
        self.interval = interval  # seconds between looks at the source; 0: only when asked
        self.state_dir = state_dir
        self.swap_error: str | None = None  # why the last model tried was refused; None once one is accepted
        self._refused_key: str | None = None  # not tried again until the source changes or a check is forced
        self._lock = threading.Lock()  # one check at a time (the watcher, a forced check)
        self._wake = threading.Event()
        self.current = self._first_model()
        _ALL.add(self)
        threading.Thread(target=self._watch, name="ticketclf-model-watcher", daemon=True).start()

    def check(self, force: bool = False) -> bool:
        """Swap if the source changed (or ``force``: load it again even if it did not); whether it swapped."""
        with self._lock:
            try:
                candidate = self.source.current()
            except (OSError, UserError) as error:
                self._refuse(None, f"cannot read what should serve: {error}")
                return False
            if candidate.key == self.current.key and self.swap_error and not force:
                self._settle()  # the source is back to what serves (a rollback): nothing is wrong any more
            if not force and candidate.key in (self.current.key, self._refused_key):
                return False
            started = time.perf_counter()
            try:
                loaded = self._load(candidate)
            except Exception as error:  # noqa: BLE001  any failure of a new model must leave the old one serving
                self._refuse(candidate, one_line(error))
                return False
            before, self.current = self.current, loaded
            self.swap_error = self._refused_key = None
            metrics.record_swap(ok=True, served=(loaded.name, loaded.version, loaded.predictor.engine_kind),
                                replaced=(before.name, before.version, before.predictor.engine_kind))
            log.info("model swapped: %s %s now serves (%s, loaded and checked in %.1f s), replacing %s",
                     loaded.name, loaded.version, candidate.describe(), time.perf_counter() - started,
                     before.version)
            self._remember_good(loaded)
            return True

    def _settle(self) -> None:
        self.swap_error = self._refused_key = None
        metrics.record_swap_settled()
        log.info("the model source names %s %s again, which serves", self.current.name, self.current.version)

    def check_soon(self) -> None:
        """Ask the watcher to look now, forcing a reload (SIGHUP): safe from a signal handler."""
        self._wake.set()

    def _watch(self) -> None:
        while True:
            asked = self._wake.wait(self.interval if self.interval > 0 else None)
            self._wake.clear()
            try:
                self.check(force=asked)
            except Exception:  # noqa: BLE001  the watcher must outlive any surprise; the model keeps serving
                log.exception("model check failed")

    def _refuse(self, candidate: Candidate | None, reason: str) -> None:
        self.swap_error = f"{candidate.describe() if candidate else 'model source'}: {reason}"
        self._refused_key = candidate.key if candidate else None
        metrics.record_swap(ok=False)
        log.error("model refused, %s %s keeps serving: %s", self.current.name, self.current.version,
                  self.swap_error)

    # ------------------------------------------------------------ first model and last good model

    def _first_model(self) -> LoadedModel:
        candidate = self.source.current()
        try:
            loaded = self._load(candidate)
        except Exception as error:
            good = self._last_good()
            if good is None:  # nothing ever served here: the server stops with this line
                raise error if isinstance(error, UserError) else UserError(one_line(error)) from None
            self.swap_error = f"{candidate.describe()}: {one_line(error)}"
            self._refused_key = candidate.key
            log.error("model refused: %s; serving the last good model (%s)", self.swap_error, good.describe())
            loaded = self._load(good)
            metrics.record_swap(ok=False)
        else:
            self._remember_good(loaded)
            log.info("model %s %s serving (%s: %s)", loaded.name, loaded.version, loaded.predictor.engine_kind,
                     loaded.path)
        metrics.record_model(loaded.name, loaded.version, loaded.predictor.engine_kind)
        return loaded

    def _last_good(self) -> Candidate | None:
        if self.state_dir is None:
            return None
        try:
            record = json.loads((self.state_dir / _LAST_GOOD).read_text(encoding="utf-8"))
            return Candidate(record["key"], Path(record["path"]), record["version"])
        except (OSError, ValueError, KeyError):
            return None

    def _remember_good(self, loaded: LoadedModel) -> None:
        """Record ``loaded`` as the model a restarting worker falls back to (under gunicorn only)."""
        if self.state_dir is None:
            return
        try:
            # A copy: the directory can be changed in place (an edit, an export of the serving version).
            path = _snapshot(loaded, self.state_dir / "snapshots", self.source)
            if path is None:
                return
            version = loaded.version if isinstance(self.source, RepositorySource) else None
            record = {"key": loaded.key, "path": str(path), "version": version}
            bundle.replace_atomically(self.state_dir / _LAST_GOOD,
                                      lambda temporary: temporary.write_text(json.dumps(record), encoding="utf-8"))
            _prune_snapshots(path.parent, keep=path)
        except OSError as error:
            log.warning("could not keep a copy of the serving model for restarting workers: %s", error)


def _snapshot(loaded: LoadedModel, snapshots: Path, source: BundleSource | RepositorySource) -> Path | None:
    """A private copy of the files ``loaded`` serves from (manifest, tokenizer, config, its ONNX model);
    None if the directory changed while it was copied (the copy might mix two models)."""
    target = snapshots / hashlib.sha256(loaded.key.encode()).hexdigest()[:16]
    if target.is_dir():
        return target
    served = bundle.onnx_path(loaded.path, quantized=loaded.predictor.engine_kind == "int8") \
        if loaded.predictor.engine_kind != "torch" else None

    def skip(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        return {name for name in names if (here / name).is_file() and _heavy(here / name, served, loaded.path)}

    work = snapshots / f".{target.name}.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(loaded.path, work, ignore=skip, symlinks=False)
    if source.current().key != loaded.key:
        shutil.rmtree(work, ignore_errors=True)
        return None
    try:
        work.rename(target)
    except OSError:  # another worker made the same copy first
        shutil.rmtree(work, ignore_errors=True)
    return target


# Copies kept besides the last good one: another worker may have just made one it is about to record.
OTHER_SNAPSHOTS_KEPT = 2


def _prune_snapshots(snapshots: Path, keep: Path) -> None:
    """Remove the copies of models that served before, but ``keep`` (the last good) and the newest others:
    each accepted swap makes one (up to a model's size), in a temporary directory often held in memory."""
    others = [path for path in snapshots.iterdir() if path.is_dir() and path != keep and not path.name.startswith(".")]
    others.sort(key=lambda path: path.stat().st_mtime_ns, reverse=True)
    for old in others[OTHER_SNAPSHOTS_KEPT:]:
        shutil.rmtree(old, ignore_errors=True)


def _heavy(path: Path, served: Path | None, root: Path) -> bool:
    """Files a copy of the serving model leaves out: the weights and models it does not serve from, and
    reports (the out-of-scope detector, the other fields' heads and the TF-IDF model blended in are kept:
    loading reads and checks them whatever the engine)."""
    if served is None:  # PyTorch serves: it needs the weights
        return False
    if path.name in (bundle.OUT_OF_SCOPE_FILE, bundle.FIELD_HEADS_FILE):
        return False
    return (path.suffix in (".safetensors", ".bin", ".pt", ".onnx") and path != served) or \
        path.relative_to(root).parts[0] in ("reports",)


_ALL: weakref.WeakSet[ServedModel] = weakref.WeakSet()  # the models of this process, for SIGHUP


def check_all_now() -> None:
    """Make every served model in this process look at its source now, forcing a reload (SIGHUP)."""
    for served in list(_ALL):
        served.check_soon()
