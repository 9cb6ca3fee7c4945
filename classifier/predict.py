"""Fast inference from a bundle: onnxruntime + the fast tokenizer, no torch.

``Predictor.load(bundle_dir).predict(["I was charged twice"])`` cleans each ticket
exactly as training did (:func:`classifier.text.ticket_text`), tokenises with
``tokenizers``, pads each batch to its longest text, runs the ONNX model the bundle
marks for serving and returns one :class:`Prediction` per ticket. PyTorch is used
only for a bundle that has not been exported yet.

Loading reads each file the model needs once, checked against the sizes and sha256 the
manifest seals, and checks that labels, tokenizer, config and model agree
(:mod:`classifier.integrity`): a bundle that fails is one line naming the file or field.
"""

from __future__ import annotations

import heapq
import inspect
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from classifier import bundle, integrity
from classifier.blend import TfidfModel, blend
from classifier.cpus import count_setting, usable_cpus
from classifier.errors import ModelError, UserError, one_line
from classifier.fields import Head, apply_heads
from classifier.manifest import Manifest
from classifier.numerics import shown_score, sigmoid, softmax
from classifier.oos import FEATURES_OUTPUT, OutOfScopeDetector
from classifier.options import ENGINES
from classifier.text import canonical_keys, ticket_text, window_chars

log = logging.getLogger(__name__)

Ticket = str | Mapping[str, Any]


@dataclass
class Prediction:
    """The model's answer for one ticket."""

    label: str
    confidence: float
    top_k: list[dict[str, Any]]  # [{"label": ..., "score": ...}], best first
    needs_review: bool  # low confidence, or out of scope
    truncated: bool  # only the ticket's start was read: longer than the model's window, or a cell cut when read
    review_reason: str | None = None  # REVIEW_REASONS entry when needs_review, else None
    out_of_scope_score: float | None = None  # None: the bundle has no detector
    # The bundle's other fields (classifier.fields), by column: label, confidence, needs_review, top_k.
    fields: dict[str, dict[str, Any]] | None = None  # None: the bundle predicts its label alone
    tags: list[dict[str, Any]] | None = None  # [{"tag": ..., "score": ...}] given, best first; None: no tags field

    def to_dict(self) -> dict[str, Any]:
        answer = {"label": self.label, "confidence": self.confidence, "needs_review": self.needs_review,
                  "review_reason": self.review_reason, "out_of_scope_score": self.out_of_scope_score,
                  "truncated": self.truncated, "top_k": self.top_k}
        if self.fields is not None:  # a bundle of the label alone answers as it always has
            answer["fields"] = self.fields
        if self.tags is not None:
            answer["tags"] = self.tags
        return answer


# Why a prediction needs review, most telling first: out of scope (the ticket belongs to no known queue,
# so its label means little) over low confidence (a known kind of ticket, between queues).
REVIEW_REASONS = ("out_of_scope", "low_confidence")
LOAD_ATTEMPTS = 3  # loads of a bundle whose manifest changed as its seal failed: being written (Predictor.load)
SETTLE_SECONDS = 0.5  # how long after a failed seal the manifest is looked at again


@dataclass
class Outputs:
    """What the model gives for a batch of tickets, in input order."""

    logits: np.ndarray  # (tickets, labels)
    features: np.ndarray | None  # (tickets, hidden) for the out-of-scope detector; None: not asked for
    truncated: list[bool]
    fields: list[np.ndarray] = field(default_factory=list)  # each field's logits (manifest.fields order)
    tfidf: np.ndarray | None = None  # the TF-IDF model's logits, where the bundle blends it in (classifier.blend)


Run = tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]  # logits, features, the fields' logits


class Engine(Protocol):
    name: str
    max_batch: int | None  # tickets per model run at most; None: any number
    parallel_runs: int  # model runs that may go at once, on threads of their own
    has_features: bool  # whether run() can give the out-of-scope detector's features

    def run(self, batch: dict[str, np.ndarray], features: bool) -> Run:
        """The logits, with ``features`` the detector's features (:data:`classifier.oos.FEATURE`), and the
        logits of each of the bundle's other fields."""
        ...


class Predictor:
    """A loaded bundle that turns tickets into labels; safe to share between threads."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, engine: Engine, tokenizer: Any,
                 engine_kind: str = "", pad_id: int | None = None, detector: OutOfScopeDetector | None = None
                 ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.engine = engine
        self.engine_kind = engine_kind  # what load() chose: int8, fp32 or torch
        self.labels: list[str] = list(manifest.labels)
        self.text_options = manifest.text
        self.max_length = manifest.max_length
        self.temperature = manifest.temperature
        # The TF-IDF model blended into the served scores, and its weight (classifier.blend): see blend_with.
        self.tfidf: TfidfModel | None = None
        self.blend_weight = 0.0
        self.blend_scale = 1.0
        self._tokenizer = tokenizer
        self._pad_id = pad_token_id(bundle_dir, tokenizer) if pad_id is None else pad_id
        self.fields = manifest.fields or []
        self.detector = detector if manifest.out_of_scope is not None else None
        if self.detector is not None and not engine.has_features:
            log.warning("%s: the %s model does not output the out-of-scope detector's features (exported by an "
                        "older release?): tickets are not checked for being out of scope; export it again",
                        bundle_dir, engine_kind or engine.name)
            self.detector = None
        section = manifest.out_of_scope if self.detector is not None else None
        self.out_of_scope_threshold = section.threshold_for(engine_kind) if section else None
        self._route_to = section.route_to if section else None  # the data's "Other" class, if any
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()  # request threads may need the pool at the same moment

    @classmethod
    def load(cls, bundle_dir: str | Path, engine: str = "auto", threads: int | None = None) -> Predictor:
        """Load a bundle. ``engine``: auto (what the bundle says to serve), int8, fp32 or torch.

        An export puts its models in place, then its manifest: a load between the two sees models the manifest
        does not seal. Where the manifest changes within :data:`SETTLE_SECONDS` of such a failure, the bundle
        was being written, and is loaded again."""
        bundle_dir = Path(bundle_dir)
        for _ in range(LOAD_ATTEMPTS - 1):
            written = bundle.manifest_bytes(bundle_dir)
            try:
                return cls._load(bundle_dir, engine, threads)
            except integrity.SealBroken:
                time.sleep(SETTLE_SECONDS)
                if bundle.manifest_bytes(bundle_dir) == written:
                    raise
        return cls._load(bundle_dir, engine, threads)

    @classmethod
    def _load(cls, bundle_dir: Path, engine: str, threads: int | None) -> Predictor:
        manifest = bundle.read_manifest(bundle_dir)
        if engine not in ENGINES:
            raise UserError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        chosen = resolve_engine(bundle_dir, manifest, engine)
        if chosen == "torch" and engine == "auto":
            log.warning("%s has no ONNX model: running it with PyTorch, several times slower; "
                        "'ticketclf export %s' makes the fast one", bundle_dir, bundle_dir)
        if manifest.cleaning_note:
            log.warning("%s: %s", bundle_dir, manifest.cleaning_note)
        files = integrity.BundleFiles(bundle_dir, manifest)
        parts = integrity.read_model_parts(files, manifest)
        integrity.require_agreement(bundle_dir, manifest, parts)
        return cls.assemble(files, manifest, parts, chosen, threads)

    @classmethod
    def assemble(cls, files: integrity.BundleFiles, manifest: Manifest, parts: integrity.ModelParts, engine: str,
                 threads: int | None = None) -> Predictor:
        """The predictor running ``engine`` (int8, fp32 or torch), from a bundle's parts as read and checked
        by :meth:`load`: its model read through ``files``, and checked with one ticket."""
        bundle_dir = files.bundle_dir
        threads = threads or default_threads()
        runner: Engine
        with ExitStack() as checked:  # each model file checked, and unchanged until the engine has read it
            if engine == "torch":
                for name in bundle.weights_files(bundle_dir):
                    checked.enter_context(files.loading(name))
                runner = TorchEngine(bundle_dir, threads, parts.heads)
            else:
                path = checked.enter_context(files.loading(bundle.onnx_name(engine == "int8")))
                runner = OnnxEngine(path, threads, max_batch=INT8_MAX_BATCH if engine == "int8" else None,
                                    field_outputs=[spec.output for spec in manifest.fields or []])
        tokenizer = truncating(parts.tokenizer, manifest.max_length)
        predictor = cls(bundle_dir, manifest, runner, tokenizer, engine,
                        pad_id=pad_token_id(bundle_dir, tokenizer, parts.tokenizer_config), detector=parts.detector)
        predictor._check_model()
        if parts.tfidf is not None and parts.tfidf_path is not None:
            predictor.blend_with(parts.tfidf.aligned(manifest.labels, parts.tfidf_path))
        return predictor

    def blend_with(self, tfidf: TfidfModel) -> None:
        """Serve scores blended with ``tfidf`` (its columns in label order) at the manifest's weight."""
        self.tfidf, self.blend_weight = tfidf, self.manifest.blend_weight
        self.blend_scale = self.manifest.baseline.blend_scale if self.manifest.baseline else 1.0
        self._check_model()

    def _check_model(self) -> None:
        """One ticket through the model: a score per label (an onnx/ folder copied from another bundle
        has other labels), numbers (a broken model gives NaN), and an out-of-scope score (a detector fitted
        to another model's features would fail every request instead)."""
        try:
            outputs = self.outputs(["a ticket to check the model"], cleaned=True)
            scores = self.probabilities(outputs.logits, outputs.tfidf)
        except ModelError as error:
            raise UserError(f"{self.bundle_dir}: {error}") from None
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001  onnxruntime's and torch's errors have no common type
            raise UserError(f"{self.bundle_dir}: the {self.engine_kind} model fails on a check ticket "
                            f"({one_line(error)}); export or train it again") from None
        if scores.shape != (1, len(self.labels)):
            raise UserError(f"{self.bundle_dir}: the {self.engine_kind} model gives {scores.shape[-1]} scores per "
                            f"ticket, but the manifest lists {len(self.labels)} labels; was the model copied from "
                            "another bundle? Export or train it again")
        try:
            self.out_of_scope_scores_of(outputs)
        except UserError as error:
            raise UserError(f"{self.bundle_dir}: {error}") from None

    @property
    def name(self) -> str:
        return self.manifest.name or self.bundle_dir.name

    @property
    def version(self) -> str:
        return self.manifest.bundle_version

    def threshold(self, label: str) -> float:
        return self.manifest.thresholds.threshold_of(label)

    def predict(self, tickets: Sequence[Ticket], top_k: int = 3, batch_size: int = 32, *,
                cleaned: bool = False) -> list[Prediction]:
        """Classify tickets (strings, or records with the bundle's text fields).

        ``cleaned=True``: the tickets are model texts already (see :meth:`logits`).
        """
        if not 1 <= top_k:
            raise UserError(f"top_k must be at least 1, got {top_k}")
        outputs = self.outputs(tickets, batch_size, cleaned=cleaned)
        # The same calibrated float32 softmax as predict_proba, so thresholds chosen on its scores split
        # the same way here. Top-k in plain Python: right after a model run the CPU caches hold the
        # weights, and there a few Python calls cost less than numpy's argsort and take_along_axis
        # (docs/benchmarks.md, "Decisions", "Inference: the predictor").
        probabilities = self.probabilities(outputs.logits, outputs.tfidf).tolist()
        scores = self.out_of_scope_scores_of(outputs)
        held = self.held_out_of_scope(scores)
        shown = scores.tolist() if scores is not None else [None] * len(probabilities)
        out_of_scope = held.tolist() if held is not None else [False] * len(probabilities)
        predictions = [self._prediction(row, top_k, cut, score, is_held)
                       for row, cut, score, is_held in zip(probabilities, outputs.truncated, shown, out_of_scope)]
        if self.fields:
            self._add_fields(predictions, outputs.fields, top_k)
        return predictions

    def _add_fields(self, predictions: list[Prediction], outputs: list[np.ndarray], top_k: int) -> None:
        """Each prediction's other fields: per single-label field its label, confidence, top-k and review
        flag by that field's thresholds (and always for a ticket out of scope: a priority read from a text the
        model was not trained on is no answer either); the tags whose score reaches their threshold, best first."""
        for prediction in predictions:
            prediction.fields = {spec.name: {} for spec in self.fields if spec.kind == "single"}
        for logits in outputs:
            if not np.isfinite(logits).all():
                raise ModelError(np.flatnonzero(~np.isfinite(logits).all(axis=1)).tolist())
        for spec, logits in zip(self.fields, outputs):
            if spec.kind == "tags":
                scores = sigmoid(logits).tolist()
                thresholds = [spec.threshold_of(tag) for tag in spec.labels]
                for prediction, row in zip(predictions, scores):
                    given = sorted((shown_score(score), tag) for tag, score, threshold in
                                   zip(spec.labels, row, thresholds) if score >= threshold)
                    prediction.tags = [{"tag": tag, "score": score} for score, tag in reversed(given)]
                continue
            for prediction, row in zip(predictions, softmax(logits).tolist()):
                best = heapq.nlargest(top_k, range(len(row)), key=row.__getitem__)
                label, confidence = spec.labels[best[0]], shown_score(row[best[0]])
                review = prediction.review_reason == "out_of_scope" or confidence < spec.threshold_of(label)
                cast(dict, prediction.fields)[spec.name] = {
                    "label": label, "confidence": confidence, "needs_review": review,
                    "top_k": [{"label": spec.labels[i], "score": shown_score(row[i])} for i in best]}

    def predict_proba(self, tickets: Sequence[Ticket], batch_size: int = 32, *, cleaned: bool = False) -> np.ndarray:
        """Softmax probabilities, one row per ticket, columns in ``self.labels`` order.

        ``cleaned=True``: the tickets are model texts already (e.g. a bundle's validation split).
        """
        outputs = self.outputs(tickets, batch_size, cleaned=cleaned, features=False)
        return self.probabilities(outputs.logits, outputs.tfidf)

    def out_of_scope_scores(self, tickets: Sequence[Ticket], batch_size: int = 32, *,
                            cleaned: bool = False) -> np.ndarray | None:
        """The out-of-scope score of each ticket (above :attr:`out_of_scope_threshold`: out of scope), or
        None when the bundle has no detector."""
        if self.detector is None:
            return None
        return self.out_of_scope_scores_of(self.outputs(tickets, batch_size, cleaned=cleaned, blended=False))

    def out_of_scope_scores_of(self, outputs: Outputs) -> np.ndarray | None:
        """The out-of-scope scores of model outputs (None: no detector), rounded as predictions show them
        (and compare them with the threshold)."""
        if self.detector is None:
            return None
        if not len(outputs.logits):  # no tickets: no scores, not "no detector"
            return np.empty(0)
        if outputs.features is None:
            return None
        scores = self.detector.score(outputs.features, outputs.logits)
        if not np.isfinite(scores).all():
            raise ModelError(np.flatnonzero(~np.isfinite(scores)).tolist())
        return np.array([shown_score(score) for score in scores.tolist()])

    def held_out_of_scope(self, scores: np.ndarray | None) -> np.ndarray | None:
        """Which tickets, by their out-of-scope ``scores``, go to review as out of scope whatever their
        confidence (their label and every field); None where the bundle has no detector. The one rule both
        :meth:`predict` and the evaluation report apply."""
        if scores is None or self.out_of_scope_threshold is None:
            return None
        return np.asarray(scores) > self.out_of_scope_threshold

    def probabilities(self, logits: np.ndarray, tfidf: np.ndarray | None = None) -> np.ndarray:
        """Calibrated softmax: the logits divided by the bundle's temperature, blended with the TF-IDF
        model's logits ``tfidf`` where the bundle blends (:attr:`Outputs.tfidf`)."""
        if self.tfidf is not None and tfidf is None:  # the served scores of a blending bundle need both
            raise ValueError("this bundle blends its TF-IDF model in: pass its logits (Outputs.tfidf)")
        probabilities = softmax(blend(logits, tfidf, self.blend_weight, self.temperature, self.blend_scale))
        if not np.isfinite(probabilities).all():
            raise ModelError(np.flatnonzero(~np.isfinite(probabilities).all(axis=1)).tolist())
        return probabilities

    def texts(self, tickets: Sequence[Ticket]) -> list[str]:
        """The cleaned model text of each ticket; an empty one is a user error."""
        return self._check_not_empty([self._text(index, ticket) for index, ticket in enumerate(tickets)])

    def _text(self, index: int, ticket: Ticket) -> str:
        try:
            if isinstance(ticket, Mapping):  # {"text": .., "Text": ..}: refused, as the service refuses it
                ticket = canonical_keys(ticket, (*self.text_options.record_fields, "text"))
            return ticket_text(ticket, self.text_options)
        except UserError as error:
            raise UserError(f"ticket {index}: {error}") from None

    def _check_not_empty(self, texts: list[str]) -> list[str]:
        for index, text in enumerate(texts):
            if not text:
                raise UserError(f"ticket {index} has no text after cleaning (fields: "
                                f"{', '.join(self.text_options.record_fields)})")
        return texts

    def logits(self, tickets: Sequence[Ticket], batch_size: int = 32, *, cleaned: bool = False) -> np.ndarray:
        """Raw model scores per ticket: the fine-tuned model's alone, unblended and uncalibrated.

        ``cleaned=True`` skips cleaning: for texts that went through :func:`ticket_text`
        already, which is not idempotent for every input (an unescaped ``&lt;b&gt;`` is HTML).
        """
        return self.outputs(tickets, batch_size, cleaned=cleaned, features=False, blended=False).logits

    def outputs(self, tickets: Sequence[Ticket], batch_size: int = 32, *, cleaned: bool = False,
                features: bool | None = None, blended: bool = True) -> Outputs:
        """The model's logits (and features: by default when the bundle has a detector) for each ticket,
        whether each was truncated, and with ``blended`` the TF-IDF model's logits where the bundle blends.
        ``cleaned`` as for :meth:`logits`."""
        features = self.detector is not None if features is None else features
        if isinstance(tickets, (str, Mapping)):
            raise TypeError("predict() takes a list of tickets; wrap a single ticket in a list")
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        batch_size = min(batch_size, getattr(self.engine, "max_batch", None) or batch_size)
        texts = self._check_not_empty(cast(list[str], list(tickets))) if cleaned else self.texts(tickets)
        encodings = self._encode(texts)
        truncated = [cut for _, cut in encodings]
        tfidf = self.tfidf.logits(texts) if self.tfidf is not None and blended else None
        if 0 < len(encodings) <= batch_size:  # one batch: it is padded to its longest text whatever the order
            run_logits, run_features, run_fields = self.engine.run(self._pad([ids for ids, _ in encodings]), features)
            return Outputs(run_logits, run_features, truncated, run_fields, tfidf)
        # Sorting by length makes each padded batch tight; results go back in input order.
        order = np.argsort([len(ids) for ids, _ in encodings], kind="stable")
        batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        logits = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        hidden: np.ndarray | None = None
        fields: list[np.ndarray] = []

        def run(chosen: np.ndarray) -> Run:
            return self.engine.run(self._pad([encodings[i][0] for i in chosen]), features)

        for chosen, (scores, batch_features, batch_fields) in zip(batches, self._map(run, batches)):
            logits[chosen] = scores
            if batch_features is not None:
                if hidden is None:
                    hidden = np.empty((len(texts), batch_features.shape[1]), dtype=np.float32)
                hidden[chosen] = batch_features
            if batch_fields and not fields:
                fields = [np.empty((len(texts), part.shape[1]), dtype=np.float32) for part in batch_fields]
            for whole, part in zip(fields, batch_fields):
                whole[chosen] = part
        return Outputs(logits, hidden, truncated, fields, tfidf)

    def _map(self, function: Any, batches: list[np.ndarray]) -> Iterator[np.ndarray]:
        """``function`` over the batches in order: one after another, or side by side when the engine
        allows parallel runs (onnxruntime releases the GIL). The pool is made on first use, and
        again in a forked child, whose copy has no threads."""
        runs = getattr(self.engine, "parallel_runs", 1)
        if runs <= 1:
            return map(function, batches)
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool, self._pool_pid = ThreadPoolExecutor(runs, thread_name_prefix="predict"), os.getpid()
            pool = self._pool
        return pool.map(function, batches)

    def _encode(self, texts: list[str]) -> list[tuple[list[int], bool]]:
        """Token ids of each text, and whether it was truncated. Only the ids are kept: an Encoding of a long
        text holds its overflowing pieces too (about 200 KB for 8,000 characters at max_length 128)."""
        char_cap = window_chars(self.max_length)  # past this, text rarely reaches the window: cut before tokenising
        encodings = self._tokenizer.encode_batch_fast([text[:char_cap] for text in texts])  # no offsets: unread
        # A cut text that did not fill the window held words of over 100 characters (hashes, log lines), each one
        # token: cut 4 times longer until it fills the window or is whole, as training reads it, so the words
        # after them are read too, and no text is tokenised much beyond what fills the window (memory, time).
        unfilled = [i for i, enc in enumerate(encodings) if len(texts[i]) > char_cap and not enc.overflowing]
        while unfilled:
            char_cap *= 4
            for i, enc in zip(unfilled, self._tokenizer.encode_batch_fast([texts[i][:char_cap] for i in unfilled])):
                encodings[i] = enc
            unfilled = [i for i in unfilled if len(texts[i]) > char_cap and not encodings[i].overflowing]
        return [(enc.ids, bool(enc.overflowing)) for enc in encodings]

    def _pad(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
        """Model inputs for one batch of token ids, padded to its longest (padded in lists: three numpy calls)."""
        width = max(len(row) for row in rows)
        ids = np.array([row + [self._pad_id] * (width - len(row)) for row in rows], dtype=np.int64)
        mask = np.array([[1] * len(row) + [0] * (width - len(row)) for row in rows], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

    def _prediction(self, probabilities: list[float], top_k: int, truncated: bool,
                    out_of_scope_score: float | None, out_of_scope: bool) -> Prediction:
        """One ticket's answer from its label probabilities (the ``top_k`` best labels, best first), its
        out-of-scope score and whether that holds it (:meth:`held_out_of_scope`). A ticket out of scope goes
        to the data's "Other" class where it has one."""
        best = heapq.nlargest(top_k, range(len(probabilities)), key=probabilities.__getitem__)  # ties: lower index
        scores = [probabilities[i] for i in best]
        label = self.labels[best[0]]
        confidence = shown_score(scores[0])
        reason = None
        if out_of_scope:
            reason = "out_of_scope"
            if self._route_to is not None and self._route_to != label:
                label, confidence = self._route_to, shown_score(probabilities[self.labels.index(self._route_to)])
        elif confidence < self.threshold(label):
            reason = "low_confidence"
        return Prediction(
            label=label,
            confidence=confidence,
            top_k=[{"label": self.labels[i], "score": shown_score(score)} for i, score in zip(best, scores)],
            needs_review=reason is not None,
            truncated=truncated,
            review_reason=reason,
            out_of_scope_score=out_of_scope_score,
        )


def resolve_engine(bundle_dir: Path, manifest: Manifest, requested: str) -> str:
    """Pick the model to run: for ``auto`` the one the export marked for serving, or PyTorch for a
    bundle never exported. A marked model file that is missing is an error, not a silent fallback."""
    engine = manifest.engine if requested == "auto" else requested
    if engine in ("int8", "fp32") and not bundle.onnx_path(bundle_dir, engine == "int8").is_file():
        missing = bundle.onnx_path(bundle_dir, engine == "int8").relative_to(bundle_dir)
        if requested == "auto":
            raise UserError(f"{bundle_dir}: the manifest says to serve the {engine} model, but {missing} is missing; "
                            f"run 'ticketclf export {bundle_dir}' again, or choose another with --engine "
                            "(TICKETCLF_ENGINE for the service)")
        raise UserError(f"{bundle_dir}: no {engine} ONNX model; run 'ticketclf export {bundle_dir}' first")
    return engine


def default_threads() -> int:
    """Intra-op threads per model: ``TICKETCLF_THREADS`` or the CPUs this process may use."""
    return count_setting("TICKETCLF_THREADS", usable_cpus())


def load_tokenizer(bundle_dir: Path, max_length: int) -> Any:
    """The bundle's fast tokenizer, truncating at its max length and not padding."""
    path = bundle_dir / bundle.TOKENIZER_FILE
    if not path.is_file():
        raise UserError(f"{bundle_dir}: bundle has no {bundle.TOKENIZER_FILE} (a fast tokenizer is required)")
    return truncating(integrity.parse_tokenizer(path, path.read_bytes()), max_length)


def truncating(tokenizer: Any, max_length: int) -> Any:
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()  # each batch is padded to its own longest text in Predictor._pad
    return tokenizer


def pad_token_id(bundle_dir: Path, tokenizer: Any, config: dict[str, Any] | None = None) -> int:
    """The id training padded with: the pad token the bundle's tokenizer config (``config``, else read from
    the file) names (RoBERTa's ``<pad>`` is 1, BERT's ``[PAD]`` 0), else ``[PAD]``, else 0."""
    if config is None:
        config_path = bundle_dir / bundle.TOKENIZER_CONFIG_FILE
        config = bundle.read_json_object(config_path) if config_path.is_file() else {}
    pad = config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad  # older configs store an AddedToken dict
    for token in (pad, "[PAD]"):
        if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
            return int(tokenizer.token_to_id(token))
    return 0


# onnxruntime's SkipLayerNormalization kernel took longer here than the Add + LayerNormalization it
# replaces, in fp32 and int8 graphs (docs/benchmarks.md, "Inference graph"). So the export leaves it
# out of Optimum's O2 fusions (export.FUSION_OVERRIDES), and OnnxEngine keeps onnxruntime from fusing
# it again at load time (SLOWER_FUSIONS).
SLOWER_FUSIONS = ("SkipLayerNormFusion",)
# Dynamic int8 scales each activation by the range of the whole batch (padding included), so in a
# batch a ticket's scores, and sometimes its label, depend on the others. One ticket per run gives
# every ticket the answer it gets alone, as from the service. Bulk work keeps its speed by running
# tickets side by side, one onnxruntime thread each: at a ticket's size a second intra-op thread
# gains next to nothing.
INT8_MAX_BATCH = 1


class OnnxEngine:
    """An onnxruntime session tuned for low-latency CPU inference."""

    def __init__(self, model_path: Path, threads: int, disabled_fusions: Sequence[str] = SLOWER_FUSIONS,
                 max_batch: int | None = None, field_outputs: Sequence[str] = ()) -> None:
        import onnxruntime as ort

        self.max_batch = max_batch
        # One ticket per run: ``threads`` runs side by side on one thread each, rather than one run on all.
        self.parallel_runs = threads if max_batch == 1 else 1
        threads = 1 if max_batch == 1 else threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # A pool's threads spinning between runs burn CPU that other workers and processes need (with one
        # thread there is no pool, and nothing to spin).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=list(disabled_fusions))
        except Exception as error:  # noqa: BLE001  onnxruntime's errors (InvalidProtobuf, Fail, ...) share no type
            raise UserError(f"{model_path}: not a model onnxruntime can load ({one_line(error)}); export the "
                            "bundle again") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.has_features = FEATURES_OUTPUT in outputs
        self.name = model_path.name
        missing = [name for name in field_outputs if name not in outputs]
        if missing:
            raise UserError(f"{model_path}: the model has no output {missing[0]!r} for a field the manifest lists "
                            "(exported before the fields were trained?); export the bundle again")
        self.field_outputs = list(field_outputs)

    def run(self, batch: dict[str, np.ndarray], features: bool) -> Run:
        inputs = {name: batch[name] for name in self.input_names}
        wanted = ["logits", *([FEATURES_OUTPUT] if features and self.has_features else []), *self.field_outputs]
        logits, *rest = self.session.run(wanted, inputs)
        hidden = rest.pop(0) if len(wanted) > 1 + len(self.field_outputs) else None
        return logits, hidden, rest


class TorchEngine:
    """PyTorch fallback for a bundle with no ONNX model (needs the training extra)."""

    name = "torch"
    max_batch: int | None = None
    parallel_runs = 1
    has_features = True

    def __init__(self, bundle_dir: Path, threads: int, heads: Sequence[Head] | None = None) -> None:
        self.heads = list(heads or [])  # the fields' heads, applied to the features (classifier.fields)
        try:
            import torch
            from transformers import AutoModelForSequenceClassification
        except ImportError:
            exported = any(bundle.onnx_path(bundle_dir, quantized).is_file() for quantized in (True, False))
            raise UserError(f"{bundle_dir}: the PyTorch engine needs torch, which is not installed; "
                            + ("serve the bundle's ONNX model instead (engine auto, int8 or fp32)" if exported else
                               "the bundle has no ONNX model: run 'ticketclf export' on a machine with the "
                               "training extra")) from None
        torch.set_num_threads(threads)
        self._torch = torch
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(bundle_dir).eval()
        except Exception as error:  # noqa: BLE001  whatever transformers raises for files it cannot read
            raise UserError(f"{bundle_dir}: transformers cannot load the PyTorch model ({one_line(error)}); "
                            "train it again") from None
        self._accepted = set(inspect.signature(self.model.forward).parameters)

    def run(self, batch: dict[str, np.ndarray], features: bool) -> Run:
        from classifier.oos import torch_features

        with self._torch.inference_mode():
            inputs = {k: self._torch.from_numpy(v) for k, v in batch.items() if k in self._accepted}
            outputs = self.model(**inputs, output_hidden_states=features or bool(self.heads))
            hidden = torch_features(outputs).float().numpy() if features or self.heads else None
            fields = apply_heads(hidden, self.heads) if hidden is not None and self.heads else []
            return outputs.logits.float().numpy(), hidden if features else None, fields
