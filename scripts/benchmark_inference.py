"""PyTorch eager vs ONNX fp32 vs ONNX int8 on one exported bundle, in one run.

    python scripts/benchmark_inference.py runs/banking77-default
    python scripts/benchmark_inference.py runs/banking77-default --markdown docs/benchmarks.md

Each engine is measured in its own subprocess (so its memory is its own) on the same
test texts: batch-1 latency on 1 thread through ``Predictor.predict`` (p50/p99), the same
with a bare ``InferenceSession`` and default options (what the predictor's tuning and
overhead cost or save), throughput at batch 32 on 2 threads, accuracy, model size and
peak RSS. Ratios are taken within the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmark_common import append_section, inference_arguments  # noqa: E402
from classifier import bundle  # noqa: E402
from classifier.data import load_tickets  # noqa: E402
from classifier.text import TextOptions  # noqa: E402
from classifier.predict import SLOWER_FUSIONS, Predictor  # noqa: E402

ENGINES = ("torch", "fp32", "int8")


def main() -> int:
    args = parse_args()
    if args.engine:
        print(json.dumps(measure(args)))
        return 0
    results = {engine: run_isolated(args, engine) for engine in ENGINES}
    body = render(results, args)
    print(body)
    if args.markdown:
        command = f"python scripts/benchmark_inference.py {args.bundle} --latency-samples {args.latency_samples}"
        append_section(args.markdown, "Inference: PyTorch vs ONNX fp32 vs ONNX int8", command, body)
    return 0


def parse_args() -> argparse.Namespace:
    parser = inference_arguments(__doc__.splitlines()[0], latency_samples=500)
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # internal: one engine
    return parser.parse_args()


def run_isolated(args: argparse.Namespace, engine: str) -> dict:
    command = [sys.executable, __file__, str(args.bundle), "--data", str(args.data),
               "--latency-samples", str(args.latency_samples), "--engine", engine]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> dict:
    single = Predictor.load(args.bundle, engine=args.engine, threads=1)
    tickets, _ = load_tickets(args.data, TextOptions.from_dict(single.manifest["text"]))  # as the bundle reads
    texts, labels = tickets.texts, tickets.labels
    sample = texts[: args.latency_samples]
    result = {"latency_ms": latency(lambda t: single.predict([t]), sample)}
    if args.engine != "torch":
        result["bare_session_latency_ms"] = bare_session_latency(single, sample)
        result["tokenize_ms"] = latency(lambda t: single._pad([single._encode(single.texts([t]))[0][0]]), sample)
    batched = Predictor.load(args.bundle, engine=args.engine, threads=2)
    batched.predict(texts[:64])  # warm-up
    started = time.perf_counter()
    probabilities = batched.predict_proba(texts, batch_size=32, cleaned=True)
    elapsed = time.perf_counter() - started
    predicted = [batched.labels[i] for i in probabilities.argmax(axis=1)]
    result.update(
        throughput=len(texts) / elapsed,
        accuracy=float(np.mean([p == t for p, t in zip(predicted, labels)])),
        size_mib=model_size(args.bundle, args.engine),
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return result


def latency(call, items: list) -> dict[str, float]:
    for item in items[:20]:  # warm-up: allocator, thread pool, lazy initialisation
        call(item)
    times = []
    for item in items:
        started = time.perf_counter()
        call(item)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)),
            "mean": float(np.mean(times))}


def bare_session_latency(predictor: Predictor, texts: list[str]) -> dict[str, float]:
    """An InferenceSession with default options (but the predictor's fusions off) on pre-tokenised input."""
    import onnxruntime as ort

    path = bundle.onnx_path(predictor.bundle_dir, quantized=predictor.engine_kind == "int8")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # The fusions the predictor turns off stay off here too: the same graph, without the predictor around it.
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(SLOWER_FUSIONS))
    names = [i.name for i in session.get_inputs()]
    feeds = [{n: b[n] for n in names} for b in (predictor._pad([e]) for e, _ in predictor._encode(texts))]
    return latency(lambda feed: session.run(None, feed), feeds)


def model_size(bundle_dir: Path, engine: str) -> float:
    if engine == "torch":
        return (bundle_dir / "model.safetensors").stat().st_size / 2**20
    return bundle.onnx_path(bundle_dir, quantized=engine == "int8").stat().st_size / 2**20


def render(results: dict[str, dict], args: argparse.Namespace) -> str:
    torch_p50 = results["torch"]["latency_ms"]["p50"]
    lines = [
        "| engine | batch-1 p50 (1 thread) | p99 | speed-up vs PyTorch (p50) | bare session p50 | "
        "clean+tokenize p50 | batch-32 throughput (2 threads) | accuracy | model size | peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {"torch": "PyTorch eager", "fp32": "ONNX fp32 (O2 fused)", "int8": "ONNX int8 (dynamic)"}
    for engine, r in results.items():
        bare = r.get("bare_session_latency_ms", {}).get("p50")
        tokenize = r.get("tokenize_ms", {}).get("p50")
        lines.append(
            f"| {names[engine]} | {r['latency_ms']['p50']:.2f} ms | {r['latency_ms']['p99']:.2f} ms | "
            f"{torch_p50 / r['latency_ms']['p50']:.1f}x | {f'{bare:.2f} ms' if bare else '-'} | "
            f"{f'{tokenize:.3f} ms' if tokenize else '-'} | {r['throughput']:.0f} tickets/s | "
            f"{100 * r['accuracy']:.2f} % | {r['size_mib']:.1f} MiB | {r['peak_rss_mib']:.0f} MiB |")
    delta = 100 * (results["int8"]["accuracy"] - results["fp32"]["accuracy"])
    lines.append(f"\nint8 accuracy minus fp32: {delta:+.2f} points. Latency over the first "
                 f"{args.latency_samples} texts of {args.data.name}, one at a time through "
                 "`Predictor.predict`; throughput and accuracy over the whole file.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
