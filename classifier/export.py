"""Export a bundle's model to ONNX with Optimum, fuse it, quantize it to int8, check drift.

Steps, all in a staging directory so a failure leaves the bundle as it was:

1. ``optimum.exporters.onnx.main_export``: the standard text-classification export;
2. ``ORTOptimizer`` (O2 fusions: attention, GELU, layer norm) on the fp32 graph, then our
   own pass (``classifier.onnx_graph``): past the last attention, only the token the
   classifier reads is computed;
3. ``ORTQuantizer``: dynamic int8 of the fused graph (attention becomes ``QAttention``) with a
   config for this CPU (AVX512-VNNI, AVX512, AVX2, ARM64);
4. drift check: PyTorch vs ONNX fp32 vs int8 on the bundle's validation split, and int8 vs fp32 on
   more of the tickets the bundle was trained on, where their file is still there; int8 serves unless
   the evidence says it loses more accuracy than the limit (:func:`decide_int8`).

The result goes to ``BUNDLE/onnx/`` and the manifest records opset, sizes, the drift
figures, which model to serve, and the ONNX files' sha256 in its seal. The files the export
reads are checked against the seal first; an unsealed bundle is sealed as it is.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import shutil
import signal
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from classifier import bundle, integrity
from classifier.data import training_file_texts
from classifier.errors import UserError
from classifier.fields import Head, read_heads
from classifier.manifest import (
    Drift,
    ExportSection,
    FieldHead,
    Int8Decision,
    Integrity,
    Manifest,
    OnnxFile,
    OutOfScope,
    Quantization,
    Serving,
)
from classifier.numerics import sigmoid
from classifier.onnx_graph import add_features_output, add_field_heads, keep_first_token_after_last_attention
from classifier.oos import FEATURES_OUTPUT, OutOfScopeDetector, choose_threshold
from classifier.options import ServingEngine
from classifier.predict import (
    INT8_MAX_BATCH,
    OnnxEngine,
    Outputs,
    Predictor,
    TorchEngine,
    default_threads,
    load_tokenizer,
)

log = logging.getLogger(__name__)

QUANTIZATION_TARGETS = ("auto", "avx512_vnni", "avx512", "avx2", "arm64")
WORK_PREFIX = ".export-"  # the staging directory inside the bundle
WORK_OWNER = "owner"  # in it: the host and process exporting, so a later export can tell abandoned ones
UNOWNED_WORK_AGE_S = 3600  # a staging directory without an owner this old was left by a killed export
MIN_FP32_AGREEMENT = 0.999
# fp32 ONNX computes what PyTorch computes; a larger logit difference means a broken graph, not rounding.
MAX_FP32_LOGIT_DIFF = 1e-3
# Optimum's O2 fusions without SkipLayerNormalization, slower here than the Add + LayerNormalization it
# replaces (docs/benchmarks.md, "Inference graph"; predict.SLOWER_FUSIONS keeps onnxruntime from fusing it
# again at load time).
FUSION_OVERRIDES = {"disable_skip_layer_norm_fusion": True, "disable_bias_skip_layer_norm_fusion": True}
# int8 is compared with fp32 on up to this many tickets: the validation split, then tickets of the training
# file. With none disagreeing, 2,000 bound the accuracy int8 can lose to 0.19 points (Wilson, 95 %).
MAX_AGREEMENT_TICKETS = 2000
DRIFT_CONFIDENCE = 0.95
PAIRED_TEST = ("exact binomial test (McNemar's, with the limit as margin) on the validation tickets only one "
               "of int8 and fp32 answers right")


@dataclass
class ExportOptions:
    opset: int | None = None  # None: Optimum's default for the architecture
    quantization: str = "auto"  # a QUANTIZATION_TARGETS entry
    per_channel: bool = True
    optimize: bool = True  # ORTOptimizer O2 fusions before quantizing
    max_accuracy_drop: float = 1.0  # accuracy points int8 may lose: fp32 serves when it is shown to lose more
    batch_size: int = 32


def export(bundle_dir: str | Path, options: ExportOptions | None = None) -> ExportSection:
    """Export, quantize and drift-check a bundle; returns the manifest's new ``export`` section."""
    options = options or ExportOptions()
    bundle_dir = Path(bundle_dir)
    manifest = bundle.read_manifest(bundle_dir)
    if manifest.integrity:  # the model, tokenizer and validation split it reads are as trained
        problems = integrity.file_problems(bundle_dir, manifest, [name for name in manifest.integrity.files
                                                                  if not name.startswith(f"{bundle.ONNX_DIR}/")])
        if problems:
            raise UserError(next(iter(problems.values())))
    target = choose_quantization_target(options.quantization)
    _import_exporters()
    _remove_abandoned_work(bundle_dir)
    work = Path(tempfile.mkdtemp(dir=bundle_dir, prefix=WORK_PREFIX))
    (work / WORK_OWNER).write_text(f"{socket.gethostname()} {os.getpid()}")
    try:
        exported, opset = export_onnx(bundle_dir, work / "exported", options.opset)
        wants_features = manifest.out_of_scope is not None or bool(manifest.fields)
        with_features = wants_features and add_features_output(exported, FEATURES_OUTPUT)
        if manifest.fields:
            _add_heads(bundle_dir, manifest, exported, with_features)
        fp32_path = fuse(exported) if options.optimize else exported
        first_token_only = options.optimize and keep_first_token_after_last_attention(fp32_path)
        # Quantizing the fused graph gives int8 attention (QAttention) and no per-run shape arithmetic.
        int8_path = quantize(fp32_path, work / "quantized", target, options.per_channel)
        drift = check_drift(bundle_dir, manifest, fp32_path, int8_path, options.batch_size)
        out_of_scope = out_of_scope_thresholds(bundle_dir, manifest, {"fp32": fp32_path, "int8": int8_path},
                                               with_features, options.batch_size)
        staged = work / bundle.ONNX_DIR
        staged.mkdir()
        shutil.move(fp32_path, staged / bundle.ONNX_FP32)
        shutil.move(int8_path, staged / bundle.ONNX_INT8)
        section = _manifest_section(staged, opset, target, options, first_token_only, drift)
        _commit(bundle_dir, staged, section, out_of_scope)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return section


def _add_heads(bundle_dir: Path, manifest: Manifest, exported: Path, with_features: bool) -> None:
    """The fields' heads into the exported graph, on the first-token state (classifier.heads)."""
    if not with_features:
        raise UserError(f"{bundle_dir}: the ONNX graph has no first-token state for the heads of the fields "
                        f"besides the label ({', '.join(spec.name for spec in manifest.fields or [])}) to read: "
                        "fields need a BERT-style encoder")
    fields = manifest.fields or []
    heads = _bundle_heads(bundle_dir, manifest)
    add_field_heads(exported, FEATURES_OUTPUT, [(spec.output, weight, bias)
                                                for spec, (weight, bias) in zip(fields, heads)])


def _bundle_heads(bundle_dir: Path, manifest: Manifest) -> list[Head]:
    """The bundle's field heads, checked against its manifest (classifier.heads saved them)."""
    path = bundle_dir / bundle.FIELD_HEADS_FILE
    return read_heads(path.read_bytes(), manifest.fields or [], path)


def _remove_abandoned_work(bundle_dir: Path) -> None:
    """Delete what exports killed outright (SIGKILL, out of memory) left in the bundle: a hundred
    MB or more each, which would otherwise travel with every copy of the bundle."""
    for work in bundle_dir.glob(f"{WORK_PREFIX}*"):
        if _abandoned(work):
            shutil.rmtree(work, ignore_errors=True)


def _abandoned(work: Path) -> bool:
    try:
        host, pid = (work / WORK_OWNER).read_text().split()
        owner = int(pid)
    except (OSError, ValueError):  # killed before it wrote its owner, or one starting right now
        return time.time() - work.stat().st_mtime > UNOWNED_WORK_AGE_S
    if host != socket.gethostname():
        return False  # another machine's export, on a shared volume: its processes are not visible here
    try:
        os.kill(owner, 0)  # raises if no such process: the export that made it is gone
    except PermissionError:
        return False  # alive, another user's
    except OSError:
        return True
    return False


def choose_quantization_target(requested: str) -> str:
    """The requested int8 target, or for ``auto`` the best this CPU supports."""
    if requested not in QUANTIZATION_TARGETS:
        raise UserError(f"unknown quantization target {requested!r}; choose one of {', '.join(QUANTIZATION_TARGETS)}")
    if requested != "auto":
        return requested
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = _cpu_flags()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags or "avx512bw" in flags:
        return "avx512"
    return "avx2"


def check_drift(bundle_dir: Path, manifest: Manifest, fp32_path: Path, int8_path: Path,
                batch_size: int = 32) -> Drift:
    """Compare PyTorch, ONNX fp32 and ONNX int8 on the bundle's validation split, and int8 with fp32 on
    tickets of the training file too (up to MAX_AGREEMENT_TICKETS): the evidence :func:`decide_int8` reads."""
    texts, labels = bundle.read_examples(bundle_dir, manifest.labels)
    more = _training_texts(manifest, bundle_dir, set(texts), MAX_AGREEMENT_TICKETS - len(texts))
    tokenizer = load_tokenizer(bundle_dir, manifest.max_length)
    threads = default_threads()
    fields = manifest.fields or []
    heads = _bundle_heads(bundle_dir, manifest) if fields else None
    outputs = [spec.output for spec in fields]

    def run(engine: TorchEngine | OnnxEngine, tickets: list[str]) -> Outputs:
        return Predictor(bundle_dir, manifest, engine, tokenizer).outputs(tickets, batch_size, cleaned=True,
                                                                          features=False)

    # PyTorch only on the validation split: fp32 against it checks the graph, which needs no more tickets.
    runs = {"torch": run(TorchEngine(bundle_dir, threads, heads), texts),
            "fp32": run(OnnxEngine(fp32_path, threads, field_outputs=outputs), texts + more),
            "int8": run(OnnxEngine(int8_path, threads, max_batch=INT8_MAX_BATCH, field_outputs=outputs), texts + more)}
    torch, fp32, int8 = (runs[name].logits for name in ("torch", "fp32", "int8"))
    n = len(texts)
    truth = np.array([manifest.labels.index(label) for label in labels])
    predicted = {"torch": torch.argmax(axis=1), "fp32": fp32[:n].argmax(axis=1), "int8": int8[:n].argmax(axis=1)}
    right = {name: p == truth for name, p in predicted.items()}
    accuracy = {name: float(r.mean()) for name, r in right.items()}
    return Drift(
        examples=n,
        fp32_max_abs_logit_diff=float(np.abs(fp32[:n] - torch).max()),
        fp32_argmax_agreement=float((predicted["fp32"] == predicted["torch"]).mean()),
        int8_max_abs_logit_diff=float(np.abs(int8[:n] - torch).max()),
        int8_argmax_agreement=float((predicted["int8"] == predicted["torch"]).mean()),
        accuracy=accuracy,
        int8_accuracy_drop_points=round(100 * (accuracy["fp32"] - accuracy["int8"]), 3),
        agreement_tickets={"validation": n, **({"training file": len(more)} if more else {})},
        int8_fp32_agreeing=int((fp32.argmax(axis=1) == int8.argmax(axis=1)).sum()),
        only_fp32_right=int((right["fp32"] & ~right["int8"]).sum()),
        only_int8_right=int((right["int8"] & ~right["fp32"]).sum()),
        fields={spec.name: _field_drift(spec, *(runs[name].fields[index] for name in ("torch", "fp32", "int8")))
                for index, spec in enumerate(fields)},
    )


def _field_drift(spec: FieldHead, torch: np.ndarray, fp32: np.ndarray, int8: np.ndarray) -> dict[str, float]:
    """A field's drift, as for the label: fp32 and int8 against PyTorch on the validation split (largest logit
    difference, share of tickets with the same answer), and int8 against fp32 on every compared ticket. The
    answer of a tags field is the set of tags given (at each tag's threshold)."""
    def answers(logits: np.ndarray) -> np.ndarray:
        if spec.kind == "single":
            return logits.argmax(axis=1)[:, None]
        thresholds = np.array([spec.threshold_of(tag) for tag in spec.labels])
        return sigmoid(logits) >= thresholds

    n = len(torch)
    same = {name: (answers(logits[:n]) == answers(torch)).all(axis=1) for name, logits in (("fp32", fp32),
                                                                                          ("int8", int8))}
    return {"fp32_max_abs_logit_diff": float(np.abs(fp32[:n] - torch).max()),
            "fp32_agreement": float(same["fp32"].mean()),
            "int8_max_abs_logit_diff": float(np.abs(int8[:n] - torch).max()),
            "int8_agreement": float(same["int8"].mean()),
            "int8_fp32_agreement": float((answers(int8) == answers(fp32)).all(axis=1).mean())}


def _training_texts(manifest: Manifest, bundle_dir: Path, exclude: set[str], limit: int) -> list[str]:
    """Up to ``limit`` distinct tickets of the file the bundle was trained on, none of ``exclude`` (the
    validation split), a seeded sample; none when the file is not where training read it or has changed.

    Their labels are not used: the model has learnt them, but int8 and fp32 agree or not on them as on
    any ticket, and agreement bounds what int8 can lose (docs/benchmarks.md, "int8 accuracy vs fp32")."""
    if limit <= 0:
        return []
    trained_on = training_file_texts(manifest, bundle_dir)
    if trained_on is None:
        log.info("the training file is gone or changed since training: int8 is compared with fp32 on the "
                 "validation split only")
        return []
    texts = [text for text in dict.fromkeys(trained_on) if text not in exclude]
    random.Random(manifest.data.seed).shuffle(texts)
    return texts[:limit]


def decide_int8(agreeing: int, compared: int, only_fp32_right: int, only_int8_right: int, labelled: int,
                limit_points: float, confidence: float = DRIFT_CONFIDENCE) -> Int8Decision:
    """Serve int8 or fp32, on evidence rather than one ticket's answer.

    int8 can lose no more accuracy than it disagrees with fp32, so where the Wilson interval of the
    agreement (``agreeing`` of ``compared`` tickets) bounds that within ``limit_points``, int8 serves.
    Otherwise the paired test on the ``labelled`` validation tickets decides: fp32 serves only when it
    shows int8 losing more than the limit (p below 1 - ``confidence``).
    """
    from scipy.stats import binomtest

    interval = binomtest(agreeing, compared).proportion_ci(confidence, method="wilson")
    agreement, max_drop = agreeing / compared, 100 * (1 - interval.low)
    p_value = drop_within_limit_p(only_fp32_right, only_int8_right, labelled, limit_points)
    limit = f"{limit_points:g} point{'' if limit_points == 1 else 's'}"
    scored = f"{labelled:,} validation and {compared - labelled:,} training tickets; " if compared > labelled else ""
    stated = (f"int8 gives fp32's label on {agreeing:,} of {compared:,} tickets ({scored}{100 * agreement:.2f} %, "
              f"{100 * confidence:g} % CI {100 * interval.low:.2f} to {100 * interval.high:.2f} %)")
    paired = (f"only fp32 is right on {only_fp32_right}, only int8 on {only_int8_right} of {labelled:,} validation "
              f"tickets (int8 {100 * (only_int8_right - only_fp32_right) / labelled:+.2f} points, p = {p_value:.2g})")
    engine: ServingEngine
    if max_drop <= limit_points:
        engine, basis = "int8", f"{stated}: it can lose at most {max_drop:.2f} points, within the limit of {limit}"
    elif p_value < 1 - confidence:
        engine, basis = "fp32", f"int8 loses more than the limit of {limit}: {paired}"
    else:
        engine, basis = "int8", f"int8 not shown to lose more than the limit of {limit}: {paired}"
    return Int8Decision(engine=engine, basis=basis, limit_points=limit_points, confidence=confidence,
                        agreement=agreement, agreement_low=interval.low, agreement_high=interval.high,
                        max_drop_points=round(max_drop, 3), test=PAIRED_TEST, p_value=p_value)


def drop_within_limit_p(only_fp32_right: int, only_int8_right: int, tickets: int, limit_points: float) -> float:
    """The p-value of int8 losing no more than ``limit_points`` of accuracy against fp32 on ``tickets``
    labelled tickets, of which only fp32 answers ``only_fp32_right`` right and only int8 ``only_int8_right``.

    The drop is (b - c) / n for b, c those counts: given m = b + c, it passes the limit when b's share of
    m passes (1 + limit x n / m) / 2; b is tested against that share (one-sided exact binomial; with a
    limit of 0, McNemar's exact test).
    """
    from scipy.stats import binomtest

    discordant = only_fp32_right + only_int8_right
    if discordant == 0:  # the same accuracy: over the limit only if the limit is below 0
        return 0.0 if limit_points < 0 else 1.0
    share = (1 + limit_points / 100 * tickets / discordant) / 2
    if share <= 0:  # even every such ticket int8's would leave it further behind than the limit allows
        return 0.0
    if share >= 1:  # even every such ticket fp32's would keep the drop within the limit
        return 1.0
    return float(binomtest(only_fp32_right, discordant, share, alternative="greater").pvalue)


def _import_exporters() -> None:
    """Import the exporters' native modules with SIGTERM held back until they are loaded: the CLI's
    handler raises, and an exception raised inside a C extension's initialisation aborts the process
    (seen with onnx's), where anywhere later it unwinds and the work folder is removed."""
    with _signals_held(signal.SIGTERM):
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import optimum.exporters.onnx  # noqa: F401
        import optimum.onnxruntime  # noqa: F401


@contextmanager
def _signals_held(*signals: signal.Signals) -> Iterator[None]:
    """Hold ``signals`` back until the block ends (they are delivered then); a no-op on Windows."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def export_onnx(bundle_dir: Path, out_dir: Path, opset: int | None = None) -> tuple[Path, int]:
    """Optimum's standard text-classification export of a bundle; returns the model and its opset."""
    import onnx
    from optimum.exporters.onnx import main_export
    from torch.jit import TracerWarning

    # Our own drift check replaces Optimum's validation (it runs on real tickets).
    if opset is not None and not 1 <= opset <= onnx.defs.onnx_opset_version():
        raise UserError(f"--opset {opset}: this onnx package knows opsets 1 to {onnx.defs.onnx_opset_version()}")
    try:
        with warnings.catch_warnings():
            # The tracer warns about every value it folds into the graph ("safely ignore" for these models);
            # the drift check on real tickets is what tells whether the graph computes what PyTorch does.
            warnings.simplefilter("ignore", TracerWarning)
            main_export(str(bundle_dir), output=out_dir, task="text-classification", opset=opset,
                        do_validation=False, local_files_only=True)
    except Exception as error:  # a user-chosen opset too old for an operator is the user's to change
        if opset is None:
            raise
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UserError(f"the ONNX export failed at opset {opset} ({reason}); "
                        "leave out --opset for Optimum's choice") from error
    model_path = out_dir / bundle.ONNX_FP32
    opset = next(o.version for o in onnx.load(str(model_path), load_external_data=False).opset_import
                 if o.domain in ("", "ai.onnx"))
    return model_path, opset


def fuse(model_path: Path, fusion_options: Mapping[str, bool] = FUSION_OVERRIDES, name: str = "fused") -> Path:
    """ORTOptimizer's O2 fusions, with ``fusion_options`` over O2's (by default: no SkipLayerNormalization)."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    optimizer = ORTOptimizer.from_pretrained(model_path.parent, file_names=[model_path.name])
    save_dir = model_path.parent / name
    optimizer.optimize(AutoOptimizationConfig.O2(**fusion_options), save_dir=save_dir)
    return save_dir / "model_optimized.onnx"


def _with_inferred_types(model_path: Path) -> Path:
    """A copy whose every tensor has a type: the quantizer needs them, and ONNX's own inference
    cannot type the outputs of onnxruntime's fused operators (Attention, BiasGelu)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    typed = SymbolicShapeInference.infer_shapes(onnx.load(str(model_path)), auto_merge=True)
    typed_path = model_path.with_name(f"{model_path.stem}_typed.onnx")
    onnx.save(typed, str(typed_path))
    return typed_path


def quantize(fp32_path: Path, out_dir: Path, target: str, per_channel: bool = True,
             operators: Sequence[str] | None = None) -> Path:
    """ORTQuantizer's dynamic int8 of an fp32 model (plain or fused) for a QUANTIZATION_TARGETS entry.

    ``operators``: the operator types to quantize (None: the config's default, MatMul and Attention among them).
    """
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    make_config = getattr(AutoQuantizationConfig, target)
    kwargs: dict[str, Any] = {"is_static": False}
    if target != "arm64" or per_channel:
        kwargs["per_channel"] = per_channel
    if operators is not None:
        kwargs["operators_to_quantize"] = list(operators)
    typed_path = _with_inferred_types(fp32_path)
    quantizer = ORTQuantizer.from_pretrained(typed_path.parent, file_name=typed_path.name)
    save_dir = quantizer.quantize(make_config(**kwargs), save_dir=out_dir)
    return Path(save_dir) / f"{typed_path.stem}_quantized.onnx"


def _manifest_section(staged: Path, opset: int, target: str, options: ExportOptions, first_token_only: bool,
                      drift: Drift) -> ExportSection:
    return ExportSection(
        opset=opset,
        optimized=options.optimize,
        last_layer_first_token_only=first_token_only,
        quantization=Quantization(target=target, mode="dynamic", per_channel=options.per_channel),
        files={name: OnnxFile(path=f"{bundle.ONNX_DIR}/{name}", bytes=(staged / name).stat().st_size)
               for name in (bundle.ONNX_FP32, bundle.ONNX_INT8)},
        drift=drift,
        max_accuracy_drop_points=float(options.max_accuracy_drop),
    )


def out_of_scope_thresholds(bundle_dir: Path, manifest: Manifest, models: Mapping[str, Path], with_features: bool,
                            batch_size: int = 32) -> OutOfScope | None:
    """The manifest's ``out_of_scope`` section with a threshold for each exported model, chosen as training
    chose PyTorch's: on the in-scope validation tickets, for the same abstention. int8 moves the features a
    little; a threshold of its own keeps its share of flagged in-scope tickets where training set it."""
    section = manifest.out_of_scope
    if section is None:
        return None
    if not with_features:
        log.warning("the ONNX graph has no first-token state to output for the out-of-scope detector (not a "
                    "BERT-style head?): the exported models do not check tickets for being out of scope")
        return section
    detector = OutOfScopeDetector.load(bundle_dir / section.file)
    texts = [text for text, label in zip(*bundle.read_examples(bundle_dir, manifest.labels))
             if label != section.route_to]
    tokenizer = load_tokenizer(bundle_dir, manifest.max_length)
    thresholds = dict(section.thresholds)
    for engine, path in models.items():
        runner = OnnxEngine(path, default_threads(), max_batch=INT8_MAX_BATCH if engine == "int8" else None)
        predictor = Predictor(bundle_dir, manifest, runner, tokenizer, engine, detector=detector)
        thresholds[engine] = choose_threshold(cast(np.ndarray, predictor.out_of_scope_scores(
            texts, batch_size, cleaned=True)), section.target_abstention)
    log.info("out-of-scope thresholds on %d validation tickets: %s", len(texts),
             ", ".join(f"{engine} {value:.4f}" for engine, value in thresholds.items()))
    return section.model_copy(update={"thresholds": thresholds})


def _commit(bundle_dir: Path, staged: Path, section: ExportSection, out_of_scope: OutOfScope | None = None) -> None:
    drift = section.drift
    if drift.fp32_argmax_agreement < MIN_FP32_AGREEMENT:
        raise UserError(f"ONNX fp32 disagrees with PyTorch on {1 - drift.fp32_argmax_agreement:.2%} of the "
                        "validation tickets (limit 0.1 %); export not written")
    if drift.fp32_max_abs_logit_diff > MAX_FP32_LOGIT_DIFF:
        raise UserError(f"ONNX fp32 logits differ from PyTorch's by up to {drift.fp32_max_abs_logit_diff:.2g} "
                        f"(limit {MAX_FP32_LOGIT_DIFF:g}); export not written")
    for name, field in drift.fields.items():
        if field["fp32_max_abs_logit_diff"] > MAX_FP32_LOGIT_DIFF or field["fp32_agreement"] < MIN_FP32_AGREEMENT:
            raise UserError(f"ONNX fp32 disagrees with PyTorch on field {name!r} (logits up to "
                            f"{field['fp32_max_abs_logit_diff']:.2g} apart, same answer on "
                            f"{field['fp32_agreement']:.2%} of the validation tickets); export not written")
    assert drift.int8_fp32_agreeing is not None and drift.only_fp32_right is not None \
        and drift.only_int8_right is not None  # check_drift counts them
    # Recorded in the section the export returns, so that its caller prints the same basis.
    drift.decision = decision = decide_int8(
        drift.int8_fp32_agreeing, sum(drift.agreement_tickets.values()), drift.only_fp32_right,
        drift.only_int8_right, drift.examples, section.max_accuracy_drop_points)
    if decision.engine != "int8":
        log.warning("%s: serving the fp32 model (--max-accuracy-drop sets the limit)", decision.basis)
    manifest = bundle.read_manifest(bundle_dir)  # re-read: thresholds may have been applied meanwhile
    if manifest.thresholds.per_class:
        log.warning("the per-class thresholds in the manifest were measured on the model exported before; "
                    "run 'ticketclf evaluate %s --data TEST --output DIR --apply-threshold-for-precision P' "
                    "again to set them for this one", bundle_dir)
    updated = manifest.model_copy(update={
        "export": section,
        "integrity": _sealed_with(bundle_dir, manifest, staged),
        "serving": Serving(engine=decision.engine, reason=decision.basis),
        "out_of_scope": out_of_scope or manifest.out_of_scope})
    # Ctrl-C or SIGTERM (the CLI turns it into an exception) wait until the models and the manifest
    # agree; only a hard kill between the renames inside could still part them.
    with _signals_held(signal.SIGINT, signal.SIGTERM):
        bundle.swap_into_place(staged, bundle_dir / bundle.ONNX_DIR,
                               before_commit=lambda: bundle.write_manifest(bundle_dir, updated))
    try:
        bundle.write_report(bundle_dir, "drift", drift.model_dump(mode="json"))  # the manifest holds them too
    except OSError as error:
        log.warning("the export is in place, but reports/drift.json could not be written: %s", error)


def _sealed_with(bundle_dir: Path, manifest: Manifest, staged: Path) -> Integrity:
    """The bundle's seal with the new ONNX models in place of the old (an unsealed bundle's other files
    sealed as they are now)."""
    def kept(name: str) -> bool:
        return not name.startswith(f"{bundle.ONNX_DIR}/")

    if manifest.integrity is None:
        log.info("%s was unsealed: the export seals its files as they are now", bundle_dir)
        others = {name: integrity.file_digest(bundle_dir / name) for name in bundle.sealed_files(bundle_dir)
                  if kept(name)}
    else:
        others = {name: digest for name, digest in manifest.integrity.files.items() if kept(name)}
    models = {f"{bundle.ONNX_DIR}/{path.name}": integrity.file_digest(path) for path in staged.iterdir()}
    return integrity.seal_of(integrity.SEALED_BY_EXPORT, {**others, **models})


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
