"""Measure the serving install: its size on disk, cold-start time and memory, without torch.

    python scripts/benchmarks/serving_install.py runs/banking77-default

Builds a fresh virtual environment with ``pip install .`` (the serving install: onnxruntime,
tokenizers, Flask, gunicorn), checks torch and transformers are absent, then times a cold
process that loads the bundle and classifies one ticket, and records its peak RSS. The run
is appended to docs/benchmarks/runs.jsonl (area "serving-install").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository

from common import publish, record_arguments, table_figures  # noqa: E402

COLD_START = """
import resource, sys, time
started = time.perf_counter()
from classifier.predict import Predictor
predictor = Predictor.load(sys.argv[1])
predictor.predict(["I was charged twice for my card"])
import json
print(json.dumps({"seconds": time.perf_counter() - started,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "engine": predictor.engine.name,
                  "heavy": [m for m in ("torch", "transformers", "optimum", "sklearn") if m in sys.modules]}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="an exported bundle")
    parser.add_argument("--runs", type=int, default=5, help="cold starts to time")
    args = record_arguments(parser).parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-venv-") as venv:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        python = str(Path(venv) / "bin" / "python")
        subprocess.run([python, "-m", "pip", "install", "--quiet", str(ROOT)], check=True)
        install_seconds = time.perf_counter() - started
        size_mib = directory_mib(Path(venv))
        freeze = subprocess.run([python, "-m", "pip", "freeze"], check=True, capture_output=True, text=True).stdout
        assert "torch" not in freeze.lower() and "transformers" not in freeze.lower(), freeze
        starts = [json.loads(subprocess.run([python, "-c", COLD_START, str(args.bundle.resolve())], check=True,
                                            capture_output=True, text=True, cwd=venv).stdout) for _ in range(args.runs)]
    seconds = sorted(s["seconds"] for s in starts)
    body = (f"| measure | value |\n| --- | --- |\n"
            f"| virtual environment size (`pip install .`) | {size_mib:.0f} MiB |\n"
            f"| packages | {len(freeze.splitlines())} (no torch, no transformers) |\n"
            f"| install time | {install_seconds:.0f} s |\n"
            f"| cold start: import + load bundle + first prediction (median of {args.runs}) | "
            f"{seconds[len(seconds) // 2]:.2f} s |\n"
            f"| peak RSS of that process | {max(s['peak_rss_mib'] for s in starts):.0f} MiB |\n"
            f"| model served | {starts[0]['engine']}; heavy modules imported: {starts[0]['heavy'] or 'none'} |")
    publish(args, "serving-install", body, table_figures(body),
            f"python scripts/benchmarks/serving_install.py {args.bundle} --runs {args.runs}")
    return 0


def directory_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


if __name__ == "__main__":
    sys.exit(main())
