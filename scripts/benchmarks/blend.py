"""What blending the TF-IDF model into the served scores costs and gives, on one bundle, in one run.

    python scripts/benchmarks/blend.py runs/small-data/default/all/bundle --latency-samples 300 --rounds 8

- parity: the served TF-IDF model (classifier.blend, numpy) against the fitted scikit-learn pipeline,
  largest probability difference and label agreement on the test tickets;
- accuracy on the test tickets: the model alone, the TF-IDF model alone, the blend as served;
- latency: ``Predictor.predict`` on one ticket at a time with and without the blend, interleaved rounds,
  and the TF-IDF model's own time per ticket.
Appends to docs/benchmarks/runs.jsonl (area "blend").
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import inference_arguments, publish_inference, table_figures, time_interleaved  # noqa: E402

from classifier.baseline import load_baseline  # noqa: E402
from classifier.blend import parity  # noqa: E402
from classifier.data import load_tickets  # noqa: E402
from classifier.predict import Predictor  # noqa: E402


def main() -> int:
    args = inference_arguments(__doc__.splitlines()[0], latency_samples=300, rounds=8).parse_args()
    blended = Predictor.load(args.bundle, threads=1)
    alone = Predictor.load(args.bundle, threads=1)
    alone.tfidf, alone.blend_weight = None, 0.0
    if blended.tfidf is None:
        raise SystemExit(f"{args.bundle}: the bundle does not blend (manifest baseline.blend_weight 0)")
    test, _ = load_tickets(args.data, blended.manifest.text, "category")
    truth = np.array([blended.labels.index(label) for label in test.labels])

    fitted = load_baseline(args.bundle / blended.manifest.baseline.file)
    columns = [list(fitted.classes_).index(label) for label in blended.labels]
    fitted_probabilities = fitted.predict_proba(test.texts)[:, columns]
    started = time.perf_counter()
    tfidf_logits = blended.tfidf.logits(test.texts)
    tfidf_ms = 1000 * (time.perf_counter() - started) / len(test.texts)
    difference = parity(blended.tfidf, fitted_probabilities, test.texts)
    agreement = float((tfidf_logits.argmax(axis=1) == fitted_probabilities.argmax(axis=1)).mean())

    def accuracy(probabilities: np.ndarray) -> float:
        return 100 * float((probabilities.argmax(axis=1) == truth).mean())

    texts = test.texts[:args.latency_samples]
    timings = time_interleaved({"blend": lambda text: blended.predict([text], cleaned=True),
                                "alone": lambda text: alone.predict([text], cleaned=True)}, texts, args.rounds)
    section = blended.manifest.baseline
    accuracies = [accuracy(alone.predict_proba(test.texts, cleaned=True)), accuracy(fitted_probabilities),
                  accuracy(blended.predict_proba(test.texts, cleaned=True))]
    body = "\n".join([
        "| figure | value |", "| --- | --- |",
        f"| served TF-IDF against scikit-learn: largest probability difference, same label | {difference:.1e}, "
        f"{100 * agreement:.2f} % |",
        f"| test accuracy: model alone, TF-IDF alone, blend (weight {section.blend_weight}, sharpness "
        f"{section.blend_scale}; {blended.engine_kind}) | {' %, '.join(f'{value:.2f}' for value in accuracies)} % |",
        f"| batch-1 latency, blend against model alone (p50 {timings.p50('blend'):.3f} against "
        f"{timings.p50('alone'):.3f} ms) | {timings.relative('blend', 'alone'):.3f}x |",
        f"| TF-IDF model time per ticket (all test tickets in one call) | {tfidf_ms:.3f} ms |"])
    publish_inference(args, "blend", body, table_figures(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
