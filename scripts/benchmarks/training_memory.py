"""Peak memory of ``ticketclf train`` on a large export of long tickets (issue 21, point 5).

    python scripts/benchmarks/training_memory.py                     # 10,000 tickets, up to 512 tokens
    python scripts/benchmarks/training_memory.py --epochs 1          # a whole epoch (hours on 2 cores)

A synthetic export is written (seeded): ``--tickets`` tickets in 20 queues, their lengths spread evenly
up to about ``--max-tokens`` word pieces, words drawn from the bundled sample's vocabulary. Then
``ticketclf train`` runs on it in a child process with ``--max-length`` at that size and the other
defaults; its peak resident memory is the child's ``ru_maxrss`` (the largest the process reached, read
when it ends). ``--epochs`` below 1 trains part of an epoch: memory is bounded by the largest batch, the
evaluation and the detector's pass over the training tickets, each of which a part of an epoch reaches
(batches are grouped by length, so the longest come early); the whole run still does every step after
training (evaluation, calibration, the out-of-scope detector on up to 20,000 tickets, the baseline).
Target: at most 3 GB.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, publish, record_arguments  # noqa: E402

TARGET_GB = 3.0
QUEUES = 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=10_000)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--epochs", type=float, default=0.1, help="training epochs (default: a tenth)")
    parser.add_argument("--seed", type=int, default=0)
    args = record_arguments(parser).parse_args()
    with tempfile.TemporaryDirectory(prefix="training-memory-") as work:
        data = write_export(Path(work) / "export.csv", args.tickets, args.max_tokens, args.seed)
        command = [sys.executable, "-m", "classifier.cli", "train", str(data), "--output", str(Path(work) / "bundle"),
                   "--max-length", str(args.max_tokens), "--epochs", str(args.epochs)]
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1",
                                                               TRANSFORMERS_OFFLINE="1"))
        seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # Linux: kilobytes
    figures = {"peak_rss_gb": round(peak_gb, 3), "tickets": args.tickets, "max_tokens": args.max_tokens,
               "epochs": args.epochs, "seconds": round(seconds, 1)}
    body = (f"ticketclf train on {args.tickets:,} synthetic tickets of up to {args.max_tokens} tokens, "
            f"{args.epochs:g} epochs: peak RSS {peak_gb:.2f} GB (target at most {TARGET_GB:g} GB), {seconds:.0f} s")
    publish(args, "training memory", body, figures)
    return 0 if peak_gb <= TARGET_GB else 1


def write_export(path: Path, tickets: int, max_tokens: int, seed: int) -> Path:
    """A CSV export of ``tickets`` tickets (subject, body, category), lengths spread up to ``max_tokens``."""
    rng = random.Random(seed)
    sample = (ROOT / "data" / "tickets.csv").read_text(encoding="utf-8").lower()
    words = sorted(set(re.findall(r"[a-z]{3,12}", sample)))
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["subject", "body", "category"])
        for index in range(tickets):
            queue = index % QUEUES
            # Words of 3 to 12 letters take one to three word pieces: 0.6 words per token keeps most under the cap.
            length = rng.randint(8, int(0.6 * max_tokens))
            cue = [f"queue{queue}word{k}" for k in range(3)]  # something to learn, so training is not degenerate
            body = " ".join(rng.choice(words) if rng.random() > 0.05 else rng.choice(cue) for _ in range(length))
            writer.writerow([" ".join(rng.sample(words, 4)), body, f"queue_{queue:02d}"])
    return path


if __name__ == "__main__":
    raise SystemExit(main())
