"""What each graph choice of ``ticketclf export`` gives: batch-1 latency of ONNX variants, side by side.

    python scripts/benchmarks/graph.py runs/banking77
    python scripts/benchmarks/graph.py runs/banking77 --no-record   # print only

Exports the bundle once with Optimum, builds the variants below from that one export, and
times them on the same pre-tokenised test texts (1 thread, batch 1, a bare
``InferenceSession``), in interleaved rounds so that machine noise hits every variant alike.
Each round's median is divided by the first variant's in the same round; the table gives the
median of those ratios. Accuracy is over the whole test file, one ticket at a time.
The run is appended to docs/benchmarks/runs.jsonl (area "inference-graph").
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import inference_arguments, publish_inference, table_figures, time_interleaved  # noqa: E402

from classifier.data import load_tickets  # noqa: E402
from classifier.export import FUSION_OVERRIDES, choose_quantization_target, export_onnx, fuse, quantize  # noqa: E402
from classifier.onnx_graph import keep_first_token_after_last_attention  # noqa: E402
from classifier.predict import SLOWER_FUSIONS, OnnxEngine, Predictor  # noqa: E402


@dataclass
class Variant:
    name: str
    model: Path
    disabled_fusions: tuple[str, ...]  # onnxruntime load-time fusions turned off


def main() -> int:
    args = parse_args()
    predictor = Predictor.load(args.bundle, threads=1)  # for its tokenizer and labels
    tickets, _ = load_tickets(args.data, predictor.manifest.text)  # as the bundle reads
    truth = np.array([predictor.labels.index(label) for label in tickets.labels])
    batches = [predictor._pad([ids]) for ids, _ in predictor._encode(tickets.texts)]
    with tempfile.TemporaryDirectory(prefix="graph-variants-") as work:
        variants = build_variants(args.bundle, Path(work), choose_quantization_target("auto"))
        engines = {v.name: OnnxEngine(v.model, threads=1, disabled_fusions=v.disabled_fusions) for v in variants}
        calls = {name: (lambda batch, e=engine: e.run(batch, False)[0]) for name, engine in engines.items()}
        timings = time_interleaved(calls, batches[: args.latency_samples], args.rounds)
        first = variants[0].name
        ratios = {name: timings.relative(name, first) for name in engines}
        medians = {name: timings.p50(name) for name in engines}
        predicted = {name: np.array([engine.run(b, False)[0][0].argmax() for b in batches])
                     for name, engine in engines.items()}
    reference = predicted[variants[-1].name]  # the fp32 model export writes
    scores = {name: (float((p == truth).mean()), float((p == reference).mean())) for name, p in predicted.items()}
    body = render(variants, medians, ratios, scores, args)
    publish_inference(args, "inference-graph", body, table_figures(body))
    return 0


def parse_args() -> argparse.Namespace:
    return inference_arguments(__doc__.splitlines()[0], latency_samples=400, rounds=8).parse_args()


def build_variants(bundle_dir: Path, work: Path, target: str) -> list[Variant]:
    plain, _ = export_onnx(bundle_dir, work / "exported")
    fused_skip = fuse(plain, {}, "fused-with-skip-layer-norm")
    fused = fuse(plain)
    # MultiHeadAttention instead of Attention: Q, K and V stay separate MatMuls, int8 like the others,
    # and the attention itself runs in fp32 (there is no quantized MultiHeadAttention).
    fused_mha = fuse(plain, FUSION_OVERRIDES | {"use_multi_head_attention": True}, "fused-mha")
    first_token = work / "first-token" / "model.onnx"
    first_token.parent.mkdir()
    shutil.copy(fused, first_token)
    if not keep_first_token_after_last_attention(first_token):
        raise SystemExit(f"{bundle_dir}: the last layer does not have the first-token shape")
    int8_plain = quantize(plain, work / "q-plain", target)
    int8_fused_skip = quantize(fused_skip, work / "q-fused-skip", target)
    int8_fused = quantize(fused, work / "q-fused", target)
    int8_first_token = quantize(first_token, work / "q-first-token", target)
    int8_per_tensor = quantize(first_token, work / "q-first-token-tensor", target, per_channel=False)
    int8_fp32_attention = quantize(first_token, work / "q-first-token-matmul", target, operators=["MatMul"])
    int8_mha = quantize(fused_mha, work / "q-mha", target)
    int8_no_zero_points = without_zero_weight_zero_points(int8_first_token, work / "q-no-zero-points")
    fused_embed = fuse(plain, FUSION_OVERRIDES | {"disable_embed_layer_norm_fusion": False}, "fused-embed")
    if not keep_first_token_after_last_attention(fused_embed):
        raise SystemExit(f"{bundle_dir}: the last layer does not have the first-token shape")
    int8_embed = quantize(fused_embed, work / "q-embed", target)
    default_load: tuple[str, ...] = ()
    return [  # the last one is the reference for agreement: keep it the fp32 model export writes
        Variant("int8 of the plain export (first release)", int8_plain, default_load),
        Variant("  same, no SkipLayerNorm fusion at load", int8_plain, SLOWER_FUSIONS),
        Variant("int8 of the O2-fused export (QAttention)", int8_fused_skip, default_load),
        Variant("int8 of O2 without SkipLayerNorm", int8_fused, SLOWER_FUSIONS),
        Variant("  + last layer on the first token only (current int8)", int8_first_token, SLOWER_FUSIONS),
        Variant("  same, per-tensor weights (not adopted)", int8_per_tensor, SLOWER_FUSIONS),
        Variant("  same, Attention left fp32 (not adopted)", int8_fp32_attention, SLOWER_FUSIONS),
        Variant("int8 of O2 with MultiHeadAttention, no SkipLayerNorm (not adopted)", int8_mha, SLOWER_FUSIONS),
        Variant("  current int8 without its all-zero weight zero points (not adopted)", int8_no_zero_points,
                SLOWER_FUSIONS),
        Variant("  current int8 with EmbedLayerNormalization fused (not adopted)", int8_embed, SLOWER_FUSIONS),
        Variant("fp32 O2 (first release)", fused_skip, default_load),
        Variant("fp32 O2 without SkipLayerNorm", fused, SLOWER_FUSIONS),
        Variant("  + last layer on the first token only (current fp32)", first_token, SLOWER_FUSIONS),
    ]


def without_zero_weight_zero_points(model_path: Path, out_dir: Path) -> Path:
    """A copy with each per-channel weight zero point that is all zeros left out (symmetric int8
    weights have them): the same numbers, maybe a faster kernel path."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    constants = {initializer.name: initializer for initializer in model.graph.initializer}
    for node in model.graph.node:
        position = {"MatMulInteger": 3, "QAttention": 7}.get(node.op_type)
        if position is None or len(node.input) <= position or node.input[position] not in constants:
            continue
        zero_point = numpy_helper.to_array(constants[node.input[position]])
        if zero_point.size > 1 and not zero_point.any():
            node.input[position] = ""  # an optional input left out
    used = {name for node in model.graph.node for name in node.input}
    kept = [initializer for initializer in model.graph.initializer if initializer.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    out_dir.mkdir()
    onnx.save(model, str(out_dir / "model.onnx"))
    return out_dir / "model.onnx"


def render(variants: list[Variant], medians: dict[str, float], ratios: dict[str, float],
           scores: dict[str, tuple[float, float]], args: argparse.Namespace) -> str:
    rows = ["| variant | load-time fusions off | batch-1 p50 (1 thread) | time vs first row | accuracy "
            "| same label as the current fp32 |",
            "| --- | --- | --- | --- | --- | --- |"]
    for v in variants:
        accuracy, agreement = scores[v.name]
        rows.append(f"| {v.name} | {', '.join(v.disabled_fusions) or '-'} | {medians[v.name]:.2f} ms | "
                    f"{ratios[v.name]:.2f} | {100 * accuracy:.2f} % | {100 * agreement:.2f} % |")
    rows.append("")
    rows.append(f"Bare `InferenceSession` per variant, {args.latency_samples} texts of {args.data.name} per round, "
                f"{args.rounds} interleaved rounds; 'time vs first row' is the median over rounds of each round's "
                "ratio. Accuracy over the whole file, one ticket at a time.")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
