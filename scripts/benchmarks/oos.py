"""Out-of-scope detection on BANKING77 with a quarter of the intents hidden, side by side in one run.

    python scripts/benchmarks/oos.py                       # seeds 0 1 2, ticketclf train's defaults
    python scripts/benchmarks/oos.py --seeds 0 --reuse     # keep the bundles of an earlier run

Per seed: 19 of the 77 intents are drawn with that seed; their training tickets are removed and their
test tickets are out of scope. The default bundle is trained on the rest (``ticketclf train`` defaults,
so the shipped detector is fitted as users get it) and exported. Every method then scores the same
test tickets:

- max softmax probability (calibrated) and energy, from the logits;
- the served confidence: the calibrated softmax blended with the bundle's TF-IDF model where the bundle blends
  (classifier.blend), the confidence whose per-label thresholds make ``needs_review`` for low confidence today
  (here one global threshold), and its standardised sum with the shipped detector;
- Mahalanobis distance to the nearest class mean (shared, shrunk covariance) and the nearest training
  neighbour's cosine distance (k = 1 and 10), on three features of the last layer: the first token (what
  the shipped detector and the classification head read), BERT's pooled output, and the mean over tokens;
- relative Mahalanobis (the class distance minus the distance to the whole training set);
- the shipped detector (classifier.oos): the first token's Mahalanobis distance and the energy combined by
  Fisher's method on their p-values against the in-scope validation tickets; beside it the distance alone,
  and the distance and energy standardised and added;
- ViM (Wang et al. 2022, virtual-logit matching): the pooled feature's norm off its principal subspace (2/3 of
  the dimensions, from the training tickets) as one more logit, scaled to the logits; the score is that
  logit's softmax probability.

Thresholds for the recall figures are chosen as the product chooses them, on the in-scope validation
tickets for a target abstention (1 % and 5 %); AUROC and FPR at 95 % recall need none. Feature methods
run on PyTorch's features (the ONNX fp32 model computes the same within 1e-5); the logit methods and the
shipped detector are also measured on the served int8 model. The latency row times ``Predictor.predict``
on the int8 model, one ticket at a time, on one predictor with its detector and without: each ticket both ways
back to back (the median difference is the figure), and in interleaved blocks of tickets.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from common import ROOT, publish, record_arguments, time_interleaved  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from classifier import bundle  # noqa: E402
from classifier.data import prepare_data  # noqa: E402
from classifier.export import export  # noqa: E402
from classifier.numerics import softmax  # noqa: E402
from classifier.oos import METHOD, energies, fit_detector  # noqa: E402
from classifier.predict import Predictor  # noqa: E402
from classifier.text import ticket_text  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "banking77"
HIDDEN = 19  # of 77 intents: a quarter
ABSTENTIONS = (0.01, 0.05)
FEATURES = ("first_token", "pooled", "mean")
SHIPPED, SOFTMAX = "shipped: Mahalanobis + energy (Fisher), first_token", "max softmax (calibrated)"
DISTANCE = "Mahalanobis, first_token"  # the shipped detector's distance alone
SERVED = "served confidence (blend)"


def main() -> int:
    args = parse_args()
    results: dict[int, dict[str, dict[str, float]]] = {}
    latency: dict[int, dict[str, float]] = {}
    for seed in args.seeds:
        bundle_dir = trained_bundle(seed, args.work / f"seed{seed}", args.reuse, args.set)
        split = scored_split(bundle_dir, seed)
        results[seed] = evaluate_methods(split)
        latency[seed] = detector_latency(bundle_dir, split["test_texts"][:args.latency_samples], args.rounds)
        print_seed(seed, results[seed], latency[seed])
    report(args, results, latency)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="which intents are hidden")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "oos", help="bundles and splits go here")
    parser.add_argument("--reuse", action="store_true", help="keep bundles already trained and exported in --work")
    parser.add_argument("--latency-samples", type=int, default=300, help="test tickets timed one by one")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainingOptions field of the bundles trained, e.g. epochs=10 (repeatable)")
    return record_arguments(parser).parse_args()


def hidden_intents(seed: int) -> set[str]:
    labels = sorted({row["category"] for row in read_rows(DATA / "train.csv")})
    return set(np.random.default_rng(seed).choice(labels, HIDDEN, replace=False).tolist())


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def trained_bundle(seed: int, work: Path, reuse: bool, overrides: list[str]) -> Path:
    """Train (``ticketclf train`` defaults) and export a bundle on the in-scope intents of BANKING77's train."""
    from banking77 import apply_overrides

    from classifier.options import TrainingOptions
    from classifier.train import train

    bundle_dir = work / "bundle"
    if reuse and (bundle_dir / bundle.MANIFEST).is_file() and bundle.read_manifest(bundle_dir).export:
        return bundle_dir
    work.mkdir(parents=True, exist_ok=True)
    hidden = hidden_intents(seed)
    rows = [row for row in read_rows(DATA / "train.csv") if row["category"] not in hidden]
    with open(work / "train.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows({"text": row["text"], "category": row["category"]} for row in rows)
    shutil.rmtree(bundle_dir, ignore_errors=True)
    started = time.perf_counter()
    train(work / "train.csv", bundle_dir, apply_overrides(TrainingOptions(), overrides))
    export(bundle_dir)
    print(f"seed {seed}: trained and exported in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return bundle_dir


def scored_split(bundle_dir: Path, seed: int) -> dict[str, Any]:
    """Logits and the three features of the training, validation and test tickets (PyTorch), the served
    confidence of the validation and test tickets from those logits, and the served int8 model's logits,
    confidence and out-of-scope scores on the validation and test tickets."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    manifest = bundle.read_manifest(bundle_dir)
    data = prepare_data(bundle_dir.parent / "train.csv", manifest.data.options, seed=manifest.data.seed)
    test = read_rows(DATA / "test.csv")
    test_texts = [ticket_text(row["text"], manifest.text) for row in test]
    model = AutoModelForSequenceClassification.from_pretrained(bundle_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(bundle_dir)
    split: dict[str, Any] = {"labels": list(manifest.labels), "temperature": manifest.temperature,
                             "test_texts": test_texts, "head": (model.classifier.weight.detach().numpy(),
                                                                model.classifier.bias.detach().numpy())}
    served = Predictor.load(bundle_dir, engine="int8")
    tfidf: dict[str, np.ndarray | None] = {}
    for name, texts, labels in (("train", data.train.texts, data.train.labels),
                                ("validation", data.validation.texts, data.validation.labels),
                                ("test", test_texts, [row["category"] for row in test])):
        split[name] = torch_outputs(model, tokenizer, texts, manifest.max_length, torch)
        split[name]["y"] = np.array([manifest.labels.index(x) if x in manifest.labels else -1 for x in labels])
        if name != "train":
            tfidf[name] = served.tfidf.logits(texts) if served.tfidf is not None else None
            split[name]["served"] = -served.probabilities(split[name]["logits"], tfidf[name]).max(axis=1)
    for name, texts, part in (("int8", test_texts, "test"), ("int8_validation", data.validation.texts, "validation")):
        outputs = served.outputs(texts, cleaned=True, blended=False)
        split[name] = {"logits": outputs.logits, "shipped": served.detector.score(outputs.features, outputs.logits),
                       "distance": served.detector.distance(outputs.features),
                       "served": -served.probabilities(outputs.logits, tfidf[part]).max(axis=1)}
    split["detector"] = served.detector
    if manifest.out_of_scope is None or manifest.out_of_scope.method != METHOD:
        raise SystemExit(f"{bundle_dir} was trained before the detector it measures: leave out --reuse")
    if not set(split["labels"]).isdisjoint(hidden_intents(seed)):
        raise SystemExit(f"{bundle_dir} was trained on intents seed {seed} hides: remove it, or leave out --reuse")
    return split


def torch_outputs(model: Any, tokenizer: Any, texts: list[str], max_length: int, torch: Any) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {"logits": [], **{feature: [] for feature in FEATURES}}
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start:start + 64], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")
            result = model(**batch, output_hidden_states=True)
            last = result.hidden_states[-1]
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out["logits"].append(result.logits.numpy())
            out["first_token"].append(last[:, 0].numpy())
            out["pooled"].append(model.bert.pooler(last).numpy())
            out["mean"].append(((last * mask).sum(1) / mask.sum(1)).numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def methods(split: dict[str, Any]) -> dict[str, Callable[[str], np.ndarray]]:
    """Each method: a function from a part of the split ("validation", "test", ...) to out-of-scope scores
    (higher: more likely out of scope)."""
    train = split["train"]
    chosen: dict[str, Callable[[str], np.ndarray]] = {
        name: (lambda part, m=method: m(split[part]["logits"]))
        for name, method in logit_methods(split["temperature"]).items()}
    for feature in FEATURES:
        detector = fit_detector(train[feature], train["y"])
        chosen[f"Mahalanobis, {feature}"] = lambda part, d=detector, f=feature: d.distance(split[part][f])
        for k in (1, 10):
            chosen[f"kNN (k={k}), {feature}"] = nearest_neighbour(train[feature], feature, k, split)
    whole = fit_detector(train["first_token"], np.zeros(len(train["y"]), dtype=int))
    chosen["relative Mahalanobis, first_token"] = lambda part: (chosen[DISTANCE](part)
                                                                - whole.distance(split[part]["first_token"]))
    chosen["Mahalanobis + energy, first_token"] = standardised_sum(chosen[DISTANCE], chosen["energy"], "validation")
    chosen[SHIPPED] = lambda part: split["detector"].score(split[part]["first_token"], split[part]["logits"])
    chosen["ViM, pooled"] = virtual_logit(split)
    add_served(chosen, split, "validation")
    return chosen


def virtual_logit(split: dict[str, Any]) -> Callable[[str], np.ndarray]:
    """ViM: features moved to the origin the head's bias implies, their residual off the training tickets'
    principal subspace as a virtual logit (scaled so that its training mean matches the top logit's); the
    score is the virtual logit's softmax probability, as log-odds (the same order, without rounding to 1)."""
    weight, bias = split["head"]
    origin = -np.linalg.pinv(weight) @ bias
    train = split["train"]["pooled"] - origin
    values, vectors = np.linalg.eigh(train.T @ train / len(train))
    residual_space = vectors[:, np.argsort(values)[::-1][2 * train.shape[1] // 3:]]
    scale = split["train"]["logits"].max(axis=1).mean() / np.linalg.norm(train @ residual_space, axis=1).mean()

    def score(part: str) -> np.ndarray:
        virtual = scale * np.linalg.norm((split[part]["pooled"] - origin) @ residual_space, axis=1)
        return virtual + energies(split[part]["logits"])  # the virtual logit minus logsumexp

    return score


def add_served(chosen: dict[str, Callable[[str], np.ndarray]], split: dict[str, Any], validation: str) -> None:
    """The served confidence (the calibrated softmax where the bundle does not blend: the weight fitted on
    validation can be 0 for one seed and not another), and its standardised sum with the shipped detector."""
    chosen[SERVED] = lambda part: split[part]["served"]
    chosen[f"{SHIPPED} + served confidence"] = standardised_sum(chosen[SHIPPED], chosen[SERVED], validation)


def standardised_sum(first: Callable[[str], np.ndarray], second: Callable[[str], np.ndarray],
                     validation: str) -> Callable[[str], np.ndarray]:
    """Both scores standardised by their mean and deviation on the in-scope validation tickets, added."""
    reference = [(method(validation).mean(), method(validation).std()) for method in (first, second)]

    def score(part: str) -> np.ndarray:
        return sum((method(part) - mean) / std for method, (mean, std) in zip((first, second), reference))

    return score


def nearest_neighbour(train: np.ndarray, feature: str, k: int, split: dict[str, Any]) -> Callable[[str], np.ndarray]:
    bank = train / np.linalg.norm(train, axis=1, keepdims=True)

    def score(part: str) -> np.ndarray:
        queries = split[part][feature]
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        return -np.sort(queries @ bank.T, axis=1)[:, -k]

    return score


def evaluate_methods(split: dict[str, Any]) -> dict[str, dict[str, float]]:
    truth = split["test"]["y"]
    predicted = split["test"]["logits"].argmax(axis=1)
    results = {}
    for name, score in methods(split).items():
        results[f"{name} (fp32)"] = figures(score("test"), score("validation"), truth, predicted)
    int8_predicted = split["int8"]["logits"].argmax(axis=1)
    int8_methods = {name: (lambda part, m=method: m(split[part]["logits"]))
                    for name, method in logit_methods(split["temperature"]).items()}
    int8_methods[SHIPPED] = lambda part: split[part]["shipped"]
    int8_methods[DISTANCE] = lambda part: split[part]["distance"]
    int8_methods["Mahalanobis + energy, first_token"] = standardised_sum(
        int8_methods[DISTANCE], int8_methods["energy"], "int8_validation")
    add_served(int8_methods, split, "int8_validation")
    for name, score in int8_methods.items():
        results[f"{name} (int8)"] = figures(score("int8"), score("int8_validation"), truth, int8_predicted)
    return results


def logit_methods(temperature: float) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    return {"max softmax (calibrated)": lambda logits: -softmax(logits / temperature).max(axis=1),
            "energy": energies}


def figures(test: np.ndarray, validation: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """AUROC, FPR at 95 % recall, and at the validation thresholds for each abstention: out-of-scope recall,
    in-scope tickets flagged, and in-scope accuracy with the flagged counted as errors."""
    out_of_scope = truth < 0
    rates_false, rates_true, _ = roc_curve(out_of_scope, test)
    result = {"auroc": float(roc_auc_score(out_of_scope, test)),
              "fpr95": float(rates_false[np.searchsorted(rates_true, 0.95)])}
    in_scope_validation = validation  # the validation split holds in-scope tickets only
    result["in-scope accuracy"] = float((predicted == truth)[~out_of_scope].mean())
    for abstention in ABSTENTIONS:
        threshold = np.quantile(in_scope_validation, 1 - abstention, method="higher")
        flagged = test > threshold
        tag = f"{abstention:.0%}"
        result[f"recall@{tag}"] = float(flagged[out_of_scope].mean())
        result[f"flagged in-scope@{tag}"] = float(flagged[~out_of_scope].mean())
        result[f"in-scope accuracy@{tag}"] = float(((predicted == truth) & ~flagged)[~out_of_scope].mean())
        # The same share flagged for every method, exactly (thresholds from the test tickets themselves):
        # compares the methods at equal cost, which validation thresholds only approximate.
        exact = np.quantile(test[~out_of_scope], 1 - abstention, method="higher")
        result[f"recall@{tag} exact"] = float((test > exact)[out_of_scope].mean())
    return result


def detector_latency(bundle_dir: Path, texts: list[str], rounds: int) -> dict[str, float]:
    # One predictor, its detector switched on and off: two onnxruntime sessions of the same model differ
    # by up to 2 % in speed between themselves (their weights land at other addresses), as much as the
    # detector costs.
    predictor = Predictor.load(bundle_dir, engine="int8")
    detector = predictor.detector

    def predict(with_detector: bool) -> Callable[[str], Any]:
        def call(text: str) -> Any:
            predictor.detector = detector if with_detector else None
            return predictor.predict([text], cleaned=True)
        return call

    timings = time_interleaved({"with": predict(True), "without": predict(False)}, texts, rounds)
    added, without = paired_difference(predict(True), predict(False), texts, rounds)
    return {"with_ms": timings.p50("with"), "without_ms": timings.p50("without"),
            "block_ratio": timings.relative("with", "without"), "added_ms": added, "ratio": 1 + added / without}


def paired_difference(first: Callable[[str], Any], second: Callable[[str], Any], texts: list[str],
                      rounds: int) -> tuple[float, float]:
    """The median over tickets and rounds of ``first``'s time minus ``second``'s on the same ticket, run back
    to back (in alternating order), and ``second``'s median time, in ms. Blocks of 300 tickets, interleaved,
    put the same code at +1.3 to +7.4 % in three runs: the machine's drift between blocks is as large as the
    detector's cost; between two calls on one ticket it is not."""
    differences, times = [], []
    for round_index in range(rounds):
        for index, text in enumerate(texts):
            spent = {}
            for call in ((first, second) if (index + round_index) % 2 else (second, first)):
                started = time.perf_counter()
                call(text)
                spent[call] = (time.perf_counter() - started) * 1000
            differences.append(spent[first] - spent[second])
            times.append(spent[second])
    return float(np.median(differences)), float(np.median(times))


def print_seed(seed: int, results: dict[str, dict[str, float]], latency: dict[str, float]) -> None:
    print(f"\nseed {seed} (hidden: {', '.join(sorted(hidden_intents(seed)))})")
    print("\n".join(table(results)))
    print(f"latency, int8 batch 1: {latency['with_ms']:.3f} ms with the detector, {latency['without_ms']:.3f} ms "
          f"without ({latency['block_ratio']:.3f}x, blocks); {latency['added_ms'] * 1000:.1f} us added, paired "
          f"({latency['ratio']:.3f}x)")


def table(results: dict[str, dict[str, float]]) -> list[str]:
    """One line per method: AUROC, FPR95, OOS recall at 1 % and 5 % abstention (validation thresholds), at
    exactly 1 %, the in-scope share flagged and in-scope accuracy at the 1 % validation threshold."""
    lines = [f"{'method':52} {'AUROC':>7} {'FPR95':>7} {'rec@1%':>7} {'rec@5%':>7} {'exact1%':>7} {'flag@1%':>8} "
             f"{'acc@1%':>7}"]
    lines += [f"{name:52} {row['auroc']:7.4f} {row['fpr95']:7.4f} {row['recall@1%']:7.4f} {row['recall@5%']:7.4f} "
              f"{row['recall@1% exact']:7.4f} {row['flagged in-scope@1%']:8.4f} {row['in-scope accuracy@1%']:7.4f}"
              for name, row in results.items()]
    return lines


def report(args: argparse.Namespace, results: dict[int, dict[str, dict[str, float]]],
           latency: dict[int, dict[str, float]]) -> None:
    names = list(next(iter(results.values())))
    mean = {name: {key: float(np.mean([results[seed][name][key] for seed in results]))
                   for key in results[args.seeds[0]][name]} for name in names}
    lines = [f"\nmean over seeds {', '.join(map(str, args.seeds))}", *table(mean)]
    checks = {}
    # Against the model's calibrated softmax (the baseline) and against what a bundle serves as its
    # confidence today (the same softmax blended with TF-IDF, where the bundle blends).
    for engine in ("fp32", "int8"):
        for baseline, key, target in ((SOFTMAX, engine, "issue 20's targets: AUROC >= +0.015, recall >= 1.2x"),
                                      (SERVED, f"{engine} vs served", "the product's confidence today")):
            ours, theirs = mean[f"{SHIPPED} ({engine})"], mean[f"{baseline} ({engine})"]
            check = {"auroc_gain": ours["auroc"] - theirs["auroc"],
                     "recall_ratio_1pct": ours["recall@1%"] / max(theirs["recall@1%"], 1e-9),
                     "recall_ratio_1pct_exact": ours["recall@1% exact"] / max(theirs["recall@1% exact"], 1e-9)}
            checks[key] = check
            lines.append(f"shipped detector vs {baseline} ({engine}; {target}): AUROC {check['auroc_gain']:+.4f}, "
                         f"OOS recall at 1 % abstention {check['recall_ratio_1pct']:.2f}x with validation "
                         f"thresholds, {check['recall_ratio_1pct_exact']:.2f}x at exactly 1 % of in-scope test tickets")
    ratio = float(np.mean([value["ratio"] for value in latency.values()]))
    blocks = float(np.mean([value["block_ratio"] for value in latency.values()]))
    lines.append(f"latency added by the detector (int8, batch 1): {100 * (ratio - 1):+.1f} % paired (target < 5 %), "
                 f"{100 * (blocks - 1):+.1f} % in interleaved blocks")
    figures_out = {"mean": mean, "per_seed": {str(seed): rows for seed, rows in results.items()},
                   "latency": {str(seed): value for seed, value in latency.items()}, "checks": checks,
                   "latency_added_percent": 100 * (ratio - 1)}
    publish(args, "out-of-scope", "\n".join(lines), figures_out)


if __name__ == "__main__":
    sys.exit(main())
