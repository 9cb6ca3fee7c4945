"""Training time of one epoch under two padding rules, side by side: a flat multiple of 16 tokens (training's
rule before f24d5e3) and ``classifier.train.pad_multiple`` (within an eighth of the batch's longest ticket).

    python scripts/benchmarks/padding.py                              # BANKING77's train.csv
    python scripts/benchmarks/padding.py --data data/tickets.csv --text-fields subject,body --label category

The export's tickets are cleaned and tokenised as training reads them, ordered as the Trainer's length grouping
orders them (seeded) and cut into batches; each rule pads every batch, and the padded tokens of the whole epoch
are counted. Then ``--batches`` of those batches, spread over the epoch, each take one training step of
``ticketclf train``'s model under both rules in turn (scripts/benchmarks/training_step.py); the time ratio is
of their sums, which machine noise hits alike. Appends to docs/benchmarks/runs.jsonl (area "training-padding").
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from banking77 import DATA  # noqa: E402
from common import publish, record_arguments  # noqa: E402
from training_step import training_step  # noqa: E402
from transformers.trainer_pt_utils import LengthGroupedSampler  # noqa: E402

from classifier.data import load_tickets  # noqa: E402
from classifier.text import TextOptions  # noqa: E402
from classifier.train import MAX_CHOSEN_LENGTH, _load_tokenizer, default_base_model, pad_multiple  # noqa: E402

RULES: dict[str, Callable[[int], int]] = {"multiple of 16": lambda longest: 16, "within an eighth": pad_multiple}


def main() -> int:
    args = parse_args()
    tickets, _ = load_tickets(args.data, TextOptions(fields=tuple(args.text_fields.split(","))), args.label)
    tokenizer = _load_tokenizer(args.base_model)
    encoded = tokenizer(tickets.texts, truncation=True, max_length=MAX_CHOSEN_LENGTH)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    order = list(LengthGroupedSampler(args.batch_size, lengths=lengths, generator=torch.Generator().manual_seed(0)))
    batches = [order[start:start + args.batch_size] for start in range(0, len(order), args.batch_size)]

    def padded(batch: list[int], rule: Callable[[int], int]) -> dict[str, torch.Tensor]:
        longest = max(lengths[i] for i in batch)
        return tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, pad_to_multiple_of=rule(longest),
                             return_tensors="pt")

    tokens = {name: sum(padded(batch, rule)["input_ids"].numel() for batch in batches) for name, rule in RULES.items()}
    step = training_step(args.base_model, len(set(tickets.labels)))
    chosen = batches[::max(1, len(batches) // args.batches)][:args.batches]
    seconds = dict.fromkeys(RULES, 0.0)
    for batch in chosen[:3]:  # warm-up: the first step of a shape builds its kernels
        for rule in RULES.values():
            step(**_inputs(padded(batch, rule)))
    for batch in chosen:
        for name, rule in RULES.items():
            seconds[name] += sum(step(**_inputs(padded(batch, rule))).values())

    old, new = RULES
    unpadded = sum(lengths)
    lines = [f"{args.data.name}: {len(lengths):,} tickets, {unpadded / len(lengths):.1f} tokens a ticket on average, "
             f"{len(batches)} batches of {args.batch_size}; {len(chosen)} of them timed under each rule in turn", "",
             "| padding | padded tokens of an epoch | over the tickets' own | time of the timed steps [s] |",
             "| --- | --- | --- | --- |"]
    figures: dict[str, object] = {"tickets": len(lengths), "batches timed": len(chosen)}
    for name in RULES:
        lines.append(f"| {name} | {tokens[name]:,} | {tokens[name] / unpadded - 1:+.1%} | {seconds[name]:.1f} |")
        figures[f"{name}: padded tokens"] = tokens[name]
        figures[f"{name}: seconds"] = round(seconds[name], 2)
    figures["tokens ratio"] = round(tokens[new] / tokens[old], 3)
    figures["time ratio"] = round(seconds[new] / seconds[old], 3)
    lines += ["", f"{new} against {old}: {figures['tokens ratio']} of the tokens, {figures['time ratio']} of the time"]
    publish(args, "training-padding", "\n".join(lines), figures)
    return 0


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"ids": batch["input_ids"], "mask": batch["attention_mask"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "train.csv", help="a ticket export (default: BANKING77)")
    parser.add_argument("--text-fields", default="text", help="its text columns, comma-separated")
    parser.add_argument("--label", default="category", help="its label column")
    parser.add_argument("--base-model", default=default_base_model(), help="encoder (default: the packaged MiniLM)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=80, help="batches timed under each rule")
    return record_arguments(parser).parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
