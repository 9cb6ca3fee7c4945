"""What temperature scaling does to a bundle's confidences, on labelled test tickets.

    python scripts/benchmarks/calibration.py runs/banking77
    python scripts/benchmarks/calibration.py runs/banking77 --no-record   # print only

Fits the temperature on the bundle's validation split as training does
(``classifier.calibration.fit_temperature``, on the served model's logits), then compares
the test tickets' expected calibration error, log-likelihood, accuracy and confidences
without it (temperature 1) and with it. For a bundle trained before calibration existed,
this shows what training now records. The run is appended to docs/benchmarks/runs.jsonl
(area "calibration").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import BANKING77_TEST, publish, record_arguments, table_figures  # noqa: E402

from classifier.bundle import read_examples  # noqa: E402
from classifier.calibration import fit_temperature, negative_log_likelihood  # noqa: E402
from classifier.evaluate import expected_calibration_error, load_test_set  # noqa: E402
from classifier.numerics import softmax  # noqa: E402
from classifier.predict import Predictor  # noqa: E402


def main() -> int:
    args = parse_args()
    predictor = Predictor.load(args.bundle)
    texts, labels = read_examples(args.bundle)
    validation_logits = predictor.logits(texts, cleaned=True)
    calibration = fit_temperature(validation_logits, np.array([predictor.labels.index(x) for x in labels]))
    tickets, _ = load_test_set(args.data, predictor.manifest, None)
    known = [i for i, label in enumerate(tickets.labels) if label in predictor.labels]
    logits = predictor.logits([tickets.texts[i] for i in known], cleaned=True)
    truth = np.array([predictor.labels.index(tickets.labels[i]) for i in known])
    lines = ["| temperature | test ECE | test NLL | accuracy | mean confidence | highest confidence |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, temperature in (("1 (none)", 1.0), (f"{calibration['temperature']:.3f} (fitted)",
                                                  calibration["temperature"])):
        probabilities = softmax(logits / temperature)
        confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == truth
        lines.append(f"| {name} | {expected_calibration_error(confidence, correct):.4f} | "
                     f"{negative_log_likelihood(logits, truth, temperature):.4f} | {correct.mean():.2%} | "
                     f"{confidence.mean():.3f} | {confidence.max():.3f} |")
    lines.append(f"\nTemperature fitted on the bundle's {calibration['tickets']} validation tickets "
                 f"({predictor.engine_kind} model); test: the {len(known)} tickets of {args.data.name} "
                 "with labels the model knows.")
    body = "\n".join(lines)
    figures = table_figures(body) | {"fitted temperature": round(float(calibration["temperature"]), 4)}
    publish(args, "calibration", body, figures,
            f"python scripts/benchmarks/calibration.py {args.bundle} --data {args.data}", lines[-1].strip())
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a trained bundle (exported or not)")
    parser.add_argument("--data", type=Path, default=BANKING77_TEST, help="labelled test tickets")
    return record_arguments(parser).parse_args()


if __name__ == "__main__":
    sys.exit(main())
