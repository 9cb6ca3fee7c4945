"""Where a training step's time goes on this CPU: forward, backward and optimiser, and the operators that take most
of it, at the batch size and padded lengths ``ticketclf train`` uses on short tickets.

    python scripts/benchmarks/training_step.py                    # the packaged MiniLM, batch 32, 16/32/48 tokens
    python scripts/benchmarks/training_step.py --lengths 64,128 --no-record

The model is built as ``ticketclf train`` builds it (word embeddings frozen; the precision ``--precision auto``
chooses: bf16 autocast where the CPU has native bf16), fed random token ids (a step's time does not depend on
which tokens), with fused AdamW, the Trainer's default. The lengths are taken in interleaved rounds, so that
machine noise hits each alike; each figure is the median over rounds. Appends to docs/benchmarks/runs.jsonl
(area "training-step").
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from common import publish, record_arguments  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from classifier.options import TrainingOptions  # noqa: E402
from classifier.train import _load_model, _precision, default_base_model  # noqa: E402

# Operators by what they do (self CPU time in the profile): the share of a step each group takes.
GROUPS = {"matrix products": ("aten::mm", "aten::addmm", "aten::bmm"), "dropout masks": ("aten::bernoulli_",),
          "precision casts": ("aten::copy_",), "optimiser": ("aten::_fused_adamw_",)}
PHASES = ("forward", "backward", "optimiser")


def training_step(base_model: str, classes: int) -> Callable[[torch.Tensor, torch.Tensor], dict[str, float]]:
    """A function that takes one training step of ``ticketclf train``'s model on a batch (token ids, attention
    mask) and returns the seconds of each of :data:`PHASES`."""
    torch.manual_seed(0)
    model = _load_model(base_model, [str(k) for k in range(classes)], TrainingOptions())
    model.train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    bf16 = _precision("auto") == "bf16"

    def step(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        labels = torch.randint(0, classes, (len(ids),))
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        optimiser.step()
        optimiser.zero_grad()
        return dict(zip(PHASES, (forward - started, backward - forward, time.perf_counter() - backward)))

    return step


def main() -> int:
    args = parse_args()
    timed_step = training_step(args.base_model, args.classes)
    bf16 = _precision("auto") == "bf16"

    def step(length: int) -> dict[str, float]:
        ids = torch.randint(1000, 20000, (args.batch_size, length))
        return timed_step(ids, torch.ones_like(ids))

    for length in args.lengths:  # warm-up: the first step of each shape builds its kernels
        step(length)
    rounds: dict[int, list[dict[str, float]]] = defaultdict(list)
    for _ in range(args.rounds):
        for length in args.lengths:
            timed = [step(length) for _ in range(args.steps)]
            rounds[length].append({phase: sum(t[phase] for t in timed) / args.steps for phase in PHASES})
    profiled = args.lengths[len(args.lengths) // 2]
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(args.steps):
            step(profiled)
    own = {event.key: event.self_cpu_time_total for event in profiler.key_averages()}
    total = sum(own.values())
    shares = {group: 100 * sum(own.get(name, 0.0) for name in names) / total for group, names in GROUPS.items()}

    figures: dict[str, object] = {"precision": "bf16 autocast" if bf16 else "fp32", "batch size": args.batch_size}
    lines = [f"batch {args.batch_size}, {'bf16 autocast' if bf16 else 'fp32'}, median of {args.rounds} rounds of "
             f"{args.steps} steps", "", "| tokens | step [ms] | forward | backward | optimiser | steps a second |",
             "| --- | --- | --- | --- | --- | --- |"]
    for length in args.lengths:
        ms = {phase: 1000 * statistics.median(r[phase] for r in rounds[length]) for phase in PHASES}
        step_ms = sum(ms.values())
        figures[f"{length} tokens: step [ms]"] = round(step_ms, 1)
        figures[f"{length} tokens: forward, backward, optimiser [ms]"] = [round(ms[p], 1) for p in PHASES]
        lines.append(f"| {length} | {step_ms:.0f} | {ms['forward']:.0f} | {ms['backward']:.0f} | "
                     f"{ms['optimiser']:.0f} | {1000 / step_ms:.2f} |")
    lines += ["", f"share of a step's CPU time at {profiled} tokens:"]
    for group, share in shares.items():
        figures[f"{profiled} tokens: share of step, {group} [%]"] = round(share, 1)
        lines.append(f"  {group}: {share:.1f} %")
    publish(args, "training-step", "\n".join(lines), figures)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default=default_base_model(), help="encoder (default: the packaged MiniLM)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lengths", type=lambda text: [int(x) for x in text.split(",")], default=[16, 32, 48],
                        help="padded lengths in tokens, comma-separated (classifier.train.pad_multiple)")
    parser.add_argument("--classes", type=int, default=77, help="classes of the head (BANKING77's 77)")
    parser.add_argument("--steps", type=int, default=5, help="steps per length and round")
    parser.add_argument("--rounds", type=int, default=4)
    return record_arguments(parser).parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
