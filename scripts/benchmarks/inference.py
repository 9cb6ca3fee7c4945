"""PyTorch eager vs ONNX fp32 vs ONNX int8 on one exported bundle, in one run.

    python scripts/benchmarks/inference.py runs/banking77-default
    python scripts/benchmarks/inference.py runs/banking77-default --no-record   # print only

Batch-1 latency on 1 thread is timed in this process, the engines in alternating blocks of
the same test texts for several rounds (the shared machine's speed drifts from minute to
minute; ratios are taken within each round): through ``Predictor.predict``, and for the
ONNX models also a bare ``InferenceSession`` on pre-tokenised input (what the predictor's
own Python work costs). Throughput at batch 32 on 2 threads, accuracy, model size and peak
RSS are measured for each engine in its own subprocess, so that its memory is its own.
The run is appended to docs/benchmarks/runs.jsonl (area "inference").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]  # the repository

import numpy as np  # noqa: E402
from common import Timings, inference_arguments, publish_inference, table_figures, time_interleaved  # noqa: E402

from classifier import bundle  # noqa: E402
from classifier.data import load_tickets  # noqa: E402
from classifier.predict import SLOWER_FUSIONS, Predictor  # noqa: E402

ENGINES = ("torch", "fp32", "int8")


def main() -> int:
    args = parse_args()
    if args.engine:
        print(json.dumps(measure(args)))
        return 0
    results = {engine: run_isolated(args, engine) for engine in ENGINES}
    timings = time_latency(args)
    body = render(results, timings, args)
    delta = 100 * (results["int8"]["accuracy"] - results["fp32"]["accuracy"])
    figures = table_figures(body) | {
        "int8 accuracy minus fp32 [points]": round(delta, 2),
        "clean+tokenize+pad p50 (int8 predictor) [ms]": round(timings.p50("clean+tokenize"), 3)}
    publish_inference(args, "inference", body, figures)
    return 0


def parse_args() -> argparse.Namespace:
    parser = inference_arguments(__doc__.splitlines()[0], latency_samples=300, rounds=5)
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # internal: one engine
    return parser.parse_args()


def run_isolated(args: argparse.Namespace, engine: str) -> dict:
    command = [sys.executable, __file__, str(args.bundle), "--data", str(args.data), "--engine", engine]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> dict:
    """Throughput at batch 32 on 2 threads, accuracy, size and peak memory of one engine."""
    batched = Predictor.load(args.bundle, engine=args.engine, threads=2)
    texts, labels = test_tickets(args, batched)
    batched.predict(texts[:64])  # warm-up
    started = time.perf_counter()
    probabilities = batched.predict_proba(texts, batch_size=32, cleaned=True)
    elapsed = time.perf_counter() - started
    predicted = [batched.labels[i] for i in probabilities.argmax(axis=1)]
    return dict(
        throughput=len(texts) / elapsed,
        accuracy=float(np.mean([p == t for p, t in zip(predicted, labels)])),
        size_mib=model_size(args.bundle, args.engine),
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def test_tickets(args: argparse.Namespace, predictor: Predictor) -> tuple[list[str], list[str]]:
    tickets, _ = load_tickets(args.data, predictor.manifest.text)  # as the bundle reads
    return tickets.texts, tickets.labels


def time_latency(args: argparse.Namespace) -> Timings:
    """Batch-1, 1-thread latency of every engine, and of bare sessions, in alternating blocks."""
    predictors = {engine: Predictor.load(args.bundle, engine=engine, threads=1) for engine in ENGINES}
    texts = test_tickets(args, predictors["int8"])[0][: args.latency_samples]
    calls: dict[str, Callable[[str], Any]] = {
        engine: (lambda text, p=predictor: p.predict([text])) for engine, predictor in predictors.items()}
    for engine in ("fp32", "int8"):
        calls[f"bare {engine}"] = bare_session(predictors[engine], texts)
    calls["clean+tokenize"] = lambda text, p=predictors["int8"]: p._pad([p._encode(p.texts([text]))[0][0]])
    return time_interleaved(calls, texts, args.rounds)


def bare_session(predictor: Predictor, texts: list[str]) -> Callable[[str], Any]:
    """A call running an InferenceSession with default options (but the predictor's fusions off) on
    pre-tokenised input: the same graph, without the predictor around it."""
    import onnxruntime as ort

    path = bundle.onnx_path(predictor.bundle_dir, quantized=predictor.engine_kind == "int8")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(SLOWER_FUSIONS))
    names = [i.name for i in session.get_inputs()]
    encoded = predictor._encode(texts)
    feeds = {text: {n: batch[n] for n in names} for text, batch in
             zip(texts, (predictor._pad([ids]) for ids, _ in encoded))}
    return lambda text: session.run(None, feeds[text])


def model_size(bundle_dir: Path, engine: str) -> float:
    if engine == "torch":
        return (bundle_dir / "model.safetensors").stat().st_size / 2**20
    return bundle.onnx_path(bundle_dir, quantized=engine == "int8").stat().st_size / 2**20


def render(results: dict[str, dict], timings: Timings, args: argparse.Namespace) -> str:
    lines = [
        "| engine | batch-1 p50 (1 thread) | p99 | speed-up vs PyTorch (p50) | bare session p50 | "
        "batch-32 throughput (2 threads) | accuracy | model size | peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {"torch": "PyTorch eager", "fp32": "ONNX fp32 (O2 fused)", "int8": "ONNX int8 (dynamic)"}
    for engine, r in results.items():
        bare = f"{timings.p50(f'bare {engine}'):.2f} ms" if f"bare {engine}" in timings.times else "-"
        lines.append(
            f"| {names[engine]} | {timings.p50(engine):.2f} ms | {timings.p99(engine):.2f} ms | "
            f"{1 / timings.relative(engine, 'torch'):.1f}x | {bare} | {r['throughput']:.0f} tickets/s | "
            f"{100 * r['accuracy']:.2f} % | {r['size_mib']:.1f} MiB | {r['peak_rss_mib']:.0f} MiB |")
    delta = 100 * (results["int8"]["accuracy"] - results["fp32"]["accuracy"])
    lines.append(
        f"\nint8 accuracy minus fp32: {delta:+.2f} points. Latency: the first {args.latency_samples} texts of "
        f"{args.data.name}, one at a time, each engine in turn for {args.rounds} rounds; p50 is the median of the "
        "rounds' medians, the speed-up the median of the rounds' ratios, p99 over all calls. Clean, tokenize and "
        f"pad alone (int8 predictor): {timings.p50('clean+tokenize'):.3f} ms. Throughput and accuracy over the "
        "whole file; the int8 predictor runs one ticket per run whatever the batch size (INT8_MAX_BATCH in "
        "classifier/predict.py), two runs side by side on one thread each.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
