"""The predictor of another git revision against this checkout's, batch 1, side by side in one run.

    python scripts/benchmarks/predictor_ab.py runs/banking77 --base ab49ee0
    python scripts/benchmarks/predictor_ab.py runs/banking77 --base ab49ee0 --no-record   # print only

For work on the predictor's own Python (cleaning, tokenizing, padding, softmax, top-k), whose
effect is a few percent and drowns in the shared machine's drift between separate runs: loads
``classifier/predict.py`` as it was at ``--base`` next to the current one, both on the bundle's
served ONNX model with 1 thread, and times ``predict([text])`` of each, and a bare session on
pre-tokenized input, in alternating blocks (``time_interleaved``). The run is appended to
docs/benchmarks/runs.jsonl (area "predictor-ab").
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]  # the repository

from common import inference_arguments, publish_inference, table_figures, time_interleaved  # noqa: E402

from classifier.data import load_tickets  # noqa: E402
from classifier.predict import Predictor  # noqa: E402


def main() -> int:
    args = parse_args()
    base = load_predict_module(args.base)
    current = Predictor.load(args.bundle, threads=1)
    previous = base.Predictor.load(args.bundle, threads=1)
    tickets, _ = load_tickets(args.data, current.manifest.text)
    texts = tickets.texts[: args.latency_samples]
    feeds = {text: current._pad([ids]) for text, (ids, _) in zip(texts, current._encode(texts))}
    session = current.engine.session
    calls = {
        "bare session": lambda text: session.run(None, feeds[text]),
        f"predictor at {args.base}": lambda text: previous.predict([text]),
        "predictor now": lambda text: current.predict([text]),
    }
    timings = time_interleaved(calls, texts, args.rounds)
    lines = ["| call | batch-1 p50 (1 thread) | time vs bare session | time vs the base predictor |",
             "| --- | --- | --- | --- |"]
    for name in calls:
        lines.append(f"| {name} | {timings.p50(name):.3f} ms | {timings.relative(name, 'bare session'):.3f} | "
                     f"{timings.relative(name, f'predictor at {args.base}'):.3f} |")
    lines.append(f"\nModel: the bundle's {current.engine_kind} ONNX file; the first {len(texts)} texts of "
                 f"{args.data.name}, {args.rounds} alternating rounds; ratios are medians of per-round ratios.")
    body = "\n".join(lines)
    publish_inference(args, "predictor-ab", body, table_figures(body), f"--base {args.base}",
                      notes=f"predictor of {args.base} against the checkout's")
    return 0


def parse_args() -> argparse.Namespace:
    parser = inference_arguments(__doc__.splitlines()[0], latency_samples=300, rounds=7)
    parser.add_argument("--base", required=True, help="the git revision whose predictor to compare against")
    return parser.parse_args()


def load_predict_module(revision: str) -> ModuleType:
    """``classifier/predict.py`` as it was at ``revision``, imported under its own name."""
    source = subprocess.run(["git", "show", f"{revision}:classifier/predict.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="predict-base-")) / "predict_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("predict_base", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(main())
