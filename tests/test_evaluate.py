"""The evaluation report: numbers checked against sklearn, files, pictures, thresholds, bad input.

Everything runs the real exported tiny bundle on a hand-made test file: held-out rows of the
sample data plus tickets with labels the model has never seen and one row without a label.
"""

from __future__ import annotations

import base64
import codecs
import copy
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from classifier.baseline import fit_baseline
from classifier.bundle import read_manifest, write_manifest
from classifier.cli import main
from classifier.data import load_tickets, prepare_data
from classifier.errors import UserError
from classifier.evaluate import (
    BOOTSTRAP_RESAMPLES,
    REPORT_FILES,
    EvaluationOptions,
    Scored,
    calibration_verdict,
    class_thresholds,
    cluster_order,
    evaluate,
    load_test_set,
    model_metrics,
    paired_difference,
    recommend_threshold,
    routed_at_target,
    routed_shown,
    summary_table,
)
from classifier.manifest import Calibration, DataSection, Manifest
from classifier.predict import Predictor
from classifier.report import CALLED, Routing
from classifier.text import TextOptions

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNKNOWN = {"shipping": 2, "legal": 1}
PER_CLASS = 12  # test tickets per class: enough for per-class thresholds (at least 10 predictions)


@pytest.fixture(scope="module")
def test_csv(sample_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rows 31-42 of each class (the tiny bundle trains on rows 1-30), 3 unknown labels, 1 row without label."""
    with open(sample_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    seen: dict[str, int] = {}
    kept = []
    for row in rows:
        seen[row["category"]] = seen.get(row["category"], 0) + 1
        if 30 < seen[row["category"]] <= 30 + PER_CLASS:
            kept.append(row)
    unknown = [dict(kept[i], id=f"U-{i}", category=label)
               for i, label in enumerate(label for label, n in UNKNOWN.items() for _ in range(n))]
    path = tmp_path_factory.mktemp("test_data") / "test.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept + unknown + [dict(kept[0], id="NO-LABEL", category="")])
    return path


@pytest.fixture(scope="module")
def known_rows(test_csv: Path, exported_bundle: Path) -> list[dict[str, str]]:
    """The test rows the model can be scored on, read with plain csv (not the project's loader)."""
    labels = set(read_manifest(exported_bundle).labels)
    with open(test_csv, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row["category"] in labels]


@pytest.fixture(scope="module")
def evaluated(exported_bundle: Path, tiny_bundle: Path, test_csv: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("report")
    report = evaluate(exported_bundle, test_csv, output, EvaluationOptions(compare_bundle=tiny_bundle))
    return report, output


@pytest.fixture(scope="module")
def exported_scores(exported_bundle: Path, known_rows: list[dict[str, str]]):
    """``independent_scores`` of the exported bundle, computed once for the tests that compare with it."""
    return independent_scores(exported_bundle, known_rows)


def independent_scores(bundle_dir: Path, rows: list[dict[str, str]], engine: str = "auto"):
    """True labels, predictions, confidences (as predictions show them: thresholds compare with those) and
    whether the out-of-scope check holds each for review, straight from the predictor on raw records.

    One ticket per batch, as the evaluation does: int8 scores depend on the other tickets in a batch.
    """
    predictions = Predictor.load(bundle_dir, engine).predict(rows, top_k=1, batch_size=1)
    return ([row["category"] for row in rows], [p.label for p in predictions],
            np.array([p.confidence for p in predictions]),
            np.array([p.review_reason == "out_of_scope" for p in predictions]))


# ---------------------------------------------------------------- numbers


def test_headline_metrics_equal_sklearn(evaluated, known_rows, exported_scores):
    report, _ = evaluated
    y_true, y_pred, _, _ = exported_scores
    metrics = report["metrics"]
    assert metrics["tickets"] == len(known_rows) == 10 * PER_CLASS
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert metrics["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))


def test_per_class_and_confusion_matrix_equal_sklearn(evaluated, exported_bundle, exported_scores):
    report, output = evaluated
    y_true, y_pred, _, _ = exported_scores
    labels = read_manifest(exported_bundle).labels
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    rows = {row["label"]: row for row in report["per_class"]}
    for i, label in enumerate(labels):
        assert rows[label]["precision"] == pytest.approx(precision[i])
        assert rows[label]["recall"] == pytest.approx(recall[i])
        assert rows[label]["f1"] == pytest.approx(f1[i])
        assert rows[label]["support"] == support[i] == PER_CLASS
    expected = confusion_matrix(y_true, y_pred, labels=labels)
    assert report["confusion_matrix"]["labels"] == labels
    assert np.array_equal(report["confusion_matrix"]["matrix"], expected)
    assert sorted(report["confusion_matrix"]["display_order"]) == list(range(len(labels)))
    with open(output / "confusion_matrix.csv", newline="", encoding="utf-8-sig") as handle:  # a mark for Excel
        table = list(csv.reader(handle))
    assert table[0][1:] == labels
    assert np.array_equal(np.array([row[1:] for row in table[1:]], dtype=int), expected)
    top = report["top_confusions"][0]
    off_diagonal = expected - np.diag(np.diag(expected))
    assert top["count"] == off_diagonal.max()
    assert all(e["id"] for e in top["examples"]) and 1 <= len(top["examples"]) <= 3
    for pair in report["top_confusions"]:  # and how many went the other way between the same two queues
        true, predicted = labels.index(pair["true"]), labels.index(pair["predicted"])
        assert pair["the_other_way"] == expected[predicted, true]


def test_each_class_counts_the_tickets_its_threshold_routes_and_those_wrongly(evaluated, exported_scores):
    report, _ = evaluated
    y_true, y_pred, confidence, held = exported_scores
    truth, predicted = np.array(y_true), np.array(y_pred)
    for row in report["per_class"]:
        routed = (predicted == row["label"]) & (confidence >= row["threshold"]) & ~held
        assert row["routed"] == routed.sum()
        assert row["routed_wrong"] == (routed & (truth != row["label"])).sum()
    per_class = report["precision_coverage"]["with_per_class_thresholds"]
    assert sum(row["routed"] for row in report["per_class"]) == per_class["tickets"]


@pytest.mark.parametrize(("tickets", "right", "verdict"), [
    (400, 320, "Honest on average"), (400, 310, "Honest on average"),  # 80 % confident, 77.5 %: 1.25 sd, chance
    (400, 280, "Over-confident"), (400, 345, "Under-confident"),  # 5 and 3.1 standard deviations (of 8 tickets)
    (10, 6, "Honest on average")])  # 60 % right where 80 % were expected: 1.6 sd on 10 tickets, too few to tell
def test_the_calibration_verdict_tells_a_gap_beyond_chance_from_noise(tickets: int, right: int, verdict: str) -> None:
    confidence = np.full(tickets, 0.8)
    correct = np.arange(tickets) < right
    assert calibration_verdict(confidence, correct).startswith(verdict)


def test_a_gap_beyond_chance_but_too_small_to_matter_is_honest() -> None:
    confidence = np.full(20_000, 0.9)
    correct = np.arange(20_000) < 17_880  # 89.4 % right: 3.5 standard deviations, 0.6 points
    assert calibration_verdict(confidence, correct).startswith("Honest on average")
    assert "a gap under 2 points" in calibration_verdict(confidence, correct)
    certain = np.ones(50)  # every answer at 100 %: a single mistake is no chance, and 2 points
    assert calibration_verdict(certain, np.arange(50) > 0).startswith("Over-confident")


@pytest.mark.parametrize(("routing", "tickets", "said"), [
    (Routing(177, 177 / 239, 174 / 177), 239, ["about 741 would be routed automatically", "about 259 would go",
                                               "about 13 went to a wrong queue here, and up to 36 may"]),
    (Routing(1, 1 / 2500, 1.0), 2500, ["fewer than 1 would be routed", "none went to a wrong queue"]),
    (Routing(0, 0.0, None), 40, ["every ticket goes to an agent"])])
def test_the_routing_per_thousand_tickets_says_what_is_measured_and_what_to_expect(routing, tickets, said) -> None:
    from classifier.evaluate import per_thousand

    sentence = per_thousand(routing, tickets)
    assert all(part in sentence for part in said), sentence


def test_calibration_error_equals_a_direct_computation(evaluated, known_rows, exported_scores):
    report, _ = evaluated
    y_true, y_pred, confidence, _ = exported_scores
    correct = np.array(y_true) == np.array(y_pred)
    ece = 0.0
    for low in np.arange(15) / 15:
        inside = (confidence >= low) & (confidence < low + 1 / 15)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    assert report["metrics"]["ece"] == pytest.approx(ece, abs=1e-6)
    assert report["calibration"]["ece"] == report["metrics"]["ece"]
    assert sum(b["count"] for b in report["calibration"]["bins"]) == len(known_rows)


def test_recommended_threshold_is_the_lowest_reaching_the_target(evaluated, exported_scores):
    report, _ = evaluated
    y_true, y_pred, answered, held = exported_scores
    confidence = np.where(held, -1.0, answered)  # a ticket held for review routes at no threshold
    assert report["precision_coverage"]["held"] == held.sum()
    correct = np.array(y_true) == np.array(y_pred)
    target = report["precision_coverage"]["target_precision"]
    reaching = [t for t in sorted(set(answered[~held].tolist())) if correct[confidence >= t].mean() >= target]
    recommended = report["precision_coverage"]["recommended"]
    if not reaching:
        assert recommended is None and any(warning.startswith(("No confidence threshold", "no single confidence"))
                                           for warning in report["warnings"])
        return
    assert recommended["threshold"] == pytest.approx(min(reaching))
    assert recommended["coverage"] == pytest.approx((confidence >= min(reaching)).mean())
    assert recommended["precision"] >= target
    for row in report["precision_coverage"]["table"]:
        assert row["coverage"] == pytest.approx((confidence >= row["threshold"]).mean())


def test_the_summary_says_an_unreachable_target_once(evaluated):
    report = copy.deepcopy(evaluated[0])
    message = "No confidence threshold reaches 95% precision on this test set"
    report["precision_coverage"]["message"] = message  # as the report of such a test set has it: a warning too
    report["warnings"] = [message, "another warning"]
    summary = summary_table(report)
    assert summary.count(message) == 1 and summary.startswith("warning: another warning\n")  # first, as in the report


def test_a_threshold_near_1_is_shown_with_the_digits_that_tell_it_from_1(evaluated):
    report = copy.deepcopy(evaluated[0])
    report["metrics"]["at_target"] = {"threshold": 0.999783, "coverage": 0.1, "tickets": 24, "precision": 0.96}
    assert "10.0% (t>=0.999783)" in summary_table(report)  # "t>=1" would route nothing once set


@pytest.mark.parametrize(("tickets", "right", "uncertain"), [(2, 2, True), (191, 182, False)])
def test_a_recommendation_on_few_tickets_says_how_little_it_rests_on(tickets, right, uncertain):
    from classifier.evaluate import _recommendation_message
    from classifier.report import OperatingPoint

    point = OperatingPoint(threshold=0.5, coverage=0.9, tickets=215, precision=0.951)
    per_class = {"tickets": tickets, "coverage": tickets / 239, "precision": right / tickets}
    message = _recommendation_message(point, per_class, 0.95)
    # The advice is what the bundle can be given (a threshold per class); one threshold for all, beside it.
    assert message.startswith("Write a review threshold per class into the bundle (--apply-threshold-for-precision "
                              f"0.95): {tickets / 239:.1%} of tickets ({tickets}) would be routed automatically")
    assert (f"That rests on {tickets} tickets: the precision's 95 % interval reaches down to" in message) is uncertain
    assert message.endswith("One threshold for every class, confidence >= 0.5, would route 90.0% (215) at 95.1%.")


def test_a_ticket_the_out_of_scope_check_holds_is_never_routed() -> None:
    from classifier.evaluate import class_sections

    # The surest answer is wrong, and the detector holds it (as the service does); below it six right answers,
    # then two unsure ones.
    proba = np.array([[0.005, 0.995]] + [[0.99, 0.01]] * 6 + [[0.6, 0.4], [0.45, 0.55]])
    truth = ["a"] * 7 + ["b", "b"]
    held = np.array([True] + [False] * 8)
    scored = Scored.of(["a", "b"], proba, truth, held=held)
    assert not scored.routed(lambda label: 0.0)[0] and scored.confidence[0] == 0.995  # its answer unchanged
    coverage = class_sections(scored, 0.95, lambda label: 0.5, None).precision_coverage
    assert coverage.held == 1 and coverage.recommended.threshold == 0.99 and coverage.recommended.tickets == 6
    assert coverage.with_bundle_thresholds.tickets == 8  # of 9 above the bundle's 0.5: the held one is not
    assert all(point.tickets <= 8 for point in coverage.table)  # no threshold lets the held ticket through
    # Counted by confidence alone, the wrong answer on top would leave no threshold reaching 95 %.
    unheld = class_sections(Scored.of(["a", "b"], proba, truth), 0.95, lambda label: 0.5, None).precision_coverage
    assert unheld.held == 0 and unheld.recommended is None and unheld.with_bundle_thresholds.tickets == 9
    rows = {row.label: row for row in class_sections(scored, 0.95, lambda label: 0.5, None).per_class}
    assert (rows["a"].routed, rows["a"].routed_wrong) == (6, 0)
    assert (rows["b"].routed, rows["b"].routed_wrong) == (0, 0)  # its confident mistake is held, not routed wrong


@pytest.mark.parametrize(("billing", "mistakes", "source"),
                         [(15, 1, "global"), (25, 1, "class"), (15, 2, "unreachable"), (15, 0, "class")])
def test_a_single_mistake_among_too_few_predictions_for_the_target_takes_the_global_threshold(billing, mistakes,
                                                                                            source):
    # "billing": confident mistakes (0.99) among its predictions; "login": 40 right answers from 0.6 up.
    confidence = [0.99] * mistakes + [0.8] * (billing - mistakes) + list(np.linspace(0.6, 0.95, 40))
    predicted = ["billing"] * billing + ["login"] * 40
    truth = ["login"] * mistakes + ["billing"] * (billing - mistakes) + ["login"] * 40
    proba = np.array([[c, 1 - c] if p == "billing" else [1 - c, c] for c, p in zip(confidence, predicted)])
    thresholds = class_thresholds(Scored.of(["billing", "login"], proba, truth), 0.95)
    # Under 1 / (1 - 0.95) = 20 predictions one mistake alone would set billing's threshold above 0.99; two are
    # evidence that the class does not reach the target.
    assert thresholds["billing"]["source"] == source
    assert (thresholds["billing"]["tickets"] == billing) == (source != "unreachable")


def test_the_summary_box_gives_the_thresholds_written_not_the_reports_target(bundle_copy, test_csv, tmp_path):
    report = evaluate(bundle_copy, test_csv, tmp_path / "out",
                      EvaluationOptions(apply_threshold_for_precision=0.8, baseline=False))  # the report's: 0.95
    expected = report["thresholds_applied"]["expected"]
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    summary = page[page.index("<b>In short</b>"):page.index("</ul></div>")]
    assert "for\n80% precision, into the bundle" in summary and f"({expected['tickets']})" in summary
    # The tickets of unknown queues routed as the box routes: by the thresholds written.
    _, routed = unknown_routed(bundle_copy, test_csv, report["thresholds_applied"]["per_class"])
    assert report["unknown_labels"]["routed"] == routed and f"would route {routed} of them" in summary


def test_macro_f1_averages_the_classes_with_test_tickets():
    # A file of two queues of three: the third is predicted once, wrongly, and has no F1 of its own.
    truth = ["a", "a", "b", "b"]
    proba = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]])
    metrics = model_metrics(Scored.of(["a", "b", "c"], proba, truth), 0.95)
    assert metrics.macro_f1 == pytest.approx(f1_score(truth, ["a", "c", "b", "b"], labels=["a", "b"], average="macro"))
    assert metrics.macro_f1 == pytest.approx((2 / 3 + 1) / 2)  # not (2/3 + 1 + 0) / 3


def test_unreachable_target_gives_no_threshold():
    confidence, correct = np.array([0.9, 0.8, 0.7]), np.array([False, True, True])
    assert recommend_threshold(confidence, correct, 0.95) is None
    assert recommend_threshold(confidence, correct, 0.6)["threshold"] == 0.7  # 2 of 3 right


@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=30), st.integers(0, 2))
def test_routed_at_target_counts_the_tickets_of_the_lowest_threshold_reaching_it(tickets, leading):
    # Few distinct confidences, so ties are common; and leading axes (resamples) answered at once.
    confidence = np.array([level / 4 for level, _ in tickets])
    correct = np.array([right for _, right in tickets])
    reaching = [t for t in set(confidence.tolist()) if correct[confidence >= t].mean() >= 0.75]
    expected = int((confidence >= min(reaching)).sum()) if reaching else 0  # by brute force, threshold by threshold
    assert routed_at_target(confidence, correct, 0.75) == expected
    stacked = routed_at_target(np.broadcast_to(confidence, (3,) * leading + confidence.shape),
                               np.broadcast_to(correct, (3,) * leading + correct.shape), 0.75)
    assert stacked.shape == (3,) * leading and (stacked == expected).all()


def _scored(correct: list[bool], confidence: list[float]) -> Scored:
    """Two-class scores whose predicted class is right where ``correct`` says, at ``confidence``."""
    truth = ["a"] * len(correct)
    proba = np.array([[c, 1 - c] if right else [1 - c, c] for right, c in zip(correct, confidence)])
    return Scored.of(["a", "b"], proba, truth)


def test_a_paired_difference_says_whether_a_gap_is_beyond_chance():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.6, 0.99, 200).tolist()
    always, half = _scored([True] * 200, confidence), _scored([i % 2 == 0 for i in range(200)], confidence)
    gap = paired_difference(always, half, 0.95)
    assert gap.accuracy.value == pytest.approx(0.5) and gap.accuracy.low > 0
    assert gap.accuracy.verdict == "better beyond chance"
    assert gap.routed.value > 0.9 and gap.routed.low > 0  # 'half' reaches 95 % precision at its top tickets only
    assert (gap.only_this_right, gap.only_other_right, gap.resamples) == (100, 0, BOOTSTRAP_RESAMPLES)
    assert gap.plain("the baseline", 200) == ("On these 200 tickets this model is more accurate than the baseline, "
                                              "beyond chance, and routes more tickets at the target precision, "
                                              "beyond chance")
    assert paired_difference(half, always, 0.95).accuracy.verdict == "worse beyond chance"
    assert paired_difference(half, always, 0.95).plain("the baseline", 200).startswith(
        "On these 200 tickets this model is less accurate than the baseline, beyond chance, and routes fewer")
    # One ticket apart on 200: the draw of tickets decides it.
    one_more = _scored([True] * 199 + [False], confidence)
    close = paired_difference(always, one_more, 0.95, "the baseline")
    assert close.accuracy.value == pytest.approx(0.005) and close.accuracy.low <= 0 < close.accuracy.high
    assert close.accuracy.verdict == "within chance" and "+0.5 points" in close.summary
    assert "right on 1 tickets the baseline gets wrong, wrong on 0 the baseline gets right" in close.summary
    assert close.plain("the baseline", 200) == ("On these 200 tickets this model is not shown to be better or worse "
                                                "than the baseline: both gaps are within chance, and more test "
                                                "tickets might tell")
    # 4 tickets of 10 where only this model is right, none the other way: no evidence (McNemar's exact p = 0.125).
    few = paired_difference(_scored([True] * 10, confidence[:10]), _scored([False] * 4 + [True] * 6, confidence[:10]),
                            0.95)
    assert few.accuracy.value == pytest.approx(0.4) and few.accuracy.verdict == "within chance"
    # The same model: no gap, in any draw.
    same = paired_difference(half, half, 0.95)
    assert (same.accuracy.low, same.accuracy.high, same.routed.low, same.routed.high) == (0, 0, 0, 0)
    # Not scored on the same tickets: nothing to pair.
    fewer = Scored.of(["a", "b"], half.proba, ["a"] * 199 + ["c"])
    assert paired_difference(always, fewer, 0.95) is None


def test_baseline_and_compare_side_by_side(evaluated, exported_bundle, tiny_bundle, known_rows, test_csv):
    report, _ = evaluated
    manifest = read_manifest(exported_bundle)
    # The bundle's training split, made again from the recorded options (it is seeded).
    training = prepare_data(manifest.data.train.path, manifest.data.options, manifest.data.seed).train
    tickets, _ = load_tickets(test_csv, manifest.text)
    known = [i for i, label in enumerate(tickets.labels) if label in set(manifest.labels)]
    baseline_pred = fit_baseline(training.texts, training.labels).predict([tickets.texts[i] for i in known])
    y_true = [tickets.labels[i] for i in known]
    assert report["baseline"]["metrics"]["accuracy"] == pytest.approx(accuracy_score(y_true, baseline_pred))
    assert report["baseline"]["metrics"]["macro_f1"] == pytest.approx(f1_score(y_true, baseline_pred, average="macro"))

    compare_true, compare_pred, _, _ = independent_scores(tiny_bundle, known_rows, engine="torch")
    assert report["compare"]["metrics"]["accuracy"] == pytest.approx(accuracy_score(compare_true, compare_pred))
    own = {row["label"]: row["f1"] for row in report["per_class"]}
    _, own_pred, _, _ = independent_scores(exported_bundle, known_rows)
    summary = summary_table(report)
    for name, pred in (("baseline", baseline_pred), ("compare", compare_pred)):
        section = report[name]
        assert set(section["f1_delta"]) == set(manifest.labels)
        for label, delta in section["f1_delta"].items():
            assert delta == pytest.approx(own[label] - section["per_class_f1"][label])
        gap = section["difference"]
        assert gap["accuracy"]["value"] == pytest.approx(report["metrics"]["accuracy"] - section["metrics"]["accuracy"])
        routed = (report["metrics"]["at_target"] or {}).get("coverage", 0) - \
            (section["metrics"]["at_target"] or {}).get("coverage", 0)
        assert gap["routed"]["value"] == pytest.approx(routed)
        right = [(mine == truth, theirs == truth) for mine, theirs, truth in zip(own_pred, pred, y_true)]
        assert gap["only_this_right"] == right.count((True, False))
        assert gap["only_other_right"] == right.count((False, True))
        assert f"this model against {CALLED[name]}: {gap['summary']}" in summary


def test_a_compared_bundle_reads_the_test_file_with_its_own_labels(exported_bundle, tiny_bundle, test_csv,
                                                                   tmp_path):
    def compared_with(rename: dict[str, str]) -> dict:
        other = tmp_path / "-".join(rename.values())
        shutil.copytree(tiny_bundle, other)
        manifest = read_manifest(other)
        manifest.labels = [rename.get(label, label) for label in manifest.labels]
        manifest.data.train.label_column = "queue"  # not in the test file: scored on the same labels
        write_manifest(other, manifest)
        options = EvaluationOptions(compare_bundle=other, baseline=False)
        return evaluate(exported_bundle, test_csv, tmp_path / f"report-{other.name}", options)

    # The same classes spelled differently: every test ticket counts for both models.
    report = compared_with({"billing": "Billing"})
    assert report["compare"]["metrics"]["tickets"] == report["metrics"]["tickets"] == 10 * PER_CLASS
    assert not any("not like for like" in warning for warning in report["warnings"])
    # A class the other model does not have (a queue a challenger learnt): on the same tickets, those its
    # mistakes, so that the two accuracies and the paired difference compare like for like; the report says so.
    report = compared_with({"billing": "invoices"})
    assert report["compare"]["metrics"]["tickets"] == report["metrics"]["tickets"] == 10 * PER_CLASS
    assert report["compare"]["metrics"]["accuracy"] <= 0.9 and report["compare"]["difference"] is not None
    assert "has no class billing: its test tickets of those count as its mistakes" in " ".join(report["warnings"])


# ---------------------------------------------------------------- files and pictures


def test_all_files_written_and_pictures_are_real(evaluated):
    report, output = evaluated
    files = [*REPORT_FILES, "out_of_scope.png"]  # the test file has tickets of labels the model does not know
    assert sorted(report["files"]) == sorted(files)
    for name in files:
        assert (output / name).stat().st_size > 0, name
    assert json.loads((output / "report.json").read_text(encoding="utf-8"))["metrics"] == report["metrics"]
    for name in ("confusion_matrix.png", "precision_coverage.png", "reliability.png", "out_of_scope.png"):
        assert (output / name).read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(output / name) as image:
            image.verify()
            assert min(image.size) >= 400, (name, image.size)


def test_html_embeds_the_pictures_and_shows_the_numbers(evaluated):
    report, output = evaluated
    page = (output / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    embedded = re.findall(r"""src=["']data:image/png;base64,([A-Za-z0-9+/=]+)["']""", page)
    assert len(embedded) == 4
    assert all(base64.b64decode(data)[:8] == PNG_SIGNATURE for data in embedded)
    assert f"{report['metrics']['accuracy']:.1%}" in page
    assert all(label in page for label in UNKNOWN)
    assert report["top_confusions"][0]["examples"][0]["id"] in page
    assert f"drawing the test tickets again\n{BOOTSTRAP_RESAMPLES} times" in page
    assert report["baseline"]["difference"]["accuracy"]["verdict"] in page
    assert report["calibration"]["verdict"] in page
    per_class = report["precision_coverage"]["with_per_class_thresholds"]
    assert report["precision_coverage"]["per_thousand"] in " ".join(page.split())
    wrong = per_class["coverage"] * (1 - per_class["precision"]) * 1000
    said = f"about {round(wrong)}" if wrong else "none"
    assert f"{said} went to a wrong queue here" in report["precision_coverage"]["per_thousand"]


def test_misclassified_csv_lists_every_mistake(evaluated, known_rows, exported_scores):
    _, output = evaluated
    y_true, y_pred, _, _ = exported_scores
    with open(output / "misclassified.csv", newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    expected = {row["id"] for row, t, p in zip(known_rows, y_true, y_pred) if t != p}
    assert {row["id"] for row in rows} == expected
    assert list(rows[0]) == ["id", "text", "true", "predicted", "confidence", "routed", "second_choice"]
    confidences = [float(row["confidence"]) for row in rows]
    assert confidences == sorted(confidences, reverse=True)
    # the bundle's one threshold (0.5): a mistake at or above it reached the wrong queue unreviewed
    assert [row["routed"] for row in rows] == ["yes" if c >= 0.5 else "no" for c in confidences]
    assert all(row["second_choice"] not in ("", row["predicted"]) for row in rows)


# ---------------------------------------------------------------- bad input


def test_unknown_labels_are_counted_and_listed(evaluated):
    report, _ = evaluated
    unknown = report["unknown_labels"]
    assert unknown["count"] == sum(UNKNOWN.values())
    assert {label: info["count"] for label, info in unknown["labels"].items()} == UNKNOWN
    assert unknown["labels"]["legal"]["ids"] == ["U-2"]
    assert sum(unknown["labels"]["shipping"]["predicted_as"].values()) == 2
    assert report["data"]["dropped"]["no label"]["count"] == 1
    assert any("test tickets (" in warning and "have labels the model does not know" in warning
               for warning in report["warnings"])
    assert "shipping" in summary_table(report)


def unknown_routed(bundle: Path, test_csv: Path, thresholds: dict[str, float]) -> tuple[int, int]:
    """How many test tickets of labels the model lacks there are, and how many ``thresholds`` route."""
    with open(test_csv, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["category"] in UNKNOWN]
    predictions = Predictor.load(bundle).predict([{"subject": row["subject"], "body": row["body"]} for row in rows])
    return len(rows), sum(p.review_reason != "out_of_scope" and p.confidence >= thresholds[p.label]
                          for p in predictions)


def test_the_summary_says_how_many_tickets_of_unknown_labels_would_be_routed(evaluated, exported_bundle, test_csv):
    report, output = evaluated
    count, routed = unknown_routed(exported_bundle, test_csv, {row["label"]: row["threshold"]
                                                               for row in report["per_class"]})
    assert report["unknown_labels"]["routed"] == routed and routed > 0
    page = (output / "report.html").read_text(encoding="utf-8")
    summary = page[page.index("<b>In short</b>"):page.index("</ul></div>")]
    assert (f"{count} more tickets, of queues the model does not know, are not in these figures:\na threshold "
            f"per class would route {routed} of them, each to a wrong queue") in summary


def test_missing_label_column_fails_with_the_training_message(exported_bundle, test_csv, tmp_path):
    with pytest.raises(UserError) as training_error:
        load_tickets(test_csv, label_column="queue")
    with pytest.raises(UserError) as evaluation_error:
        evaluate(exported_bundle, test_csv, tmp_path / "out", EvaluationOptions(label_column="queue", baseline=False))
    assert str(evaluation_error.value) == str(training_error.value)
    assert str(evaluation_error.value).endswith("name the file's label column with --label-column")
    assert not (tmp_path / "out").exists()  # a failed run leaves no empty report folder
    with pytest.raises(UserError):
        evaluate(exported_bundle, test_csv, tmp_path / "new" / "out", EvaluationOptions(label_column="queue"))
    assert not (tmp_path / "new").exists()  # nor the parents it made for it
    (tmp_path / "kept").mkdir()  # one the user made stays
    with pytest.raises(UserError):
        evaluate(exported_bundle, test_csv, tmp_path / "kept", EvaluationOptions(label_column="queue", baseline=False))
    assert (tmp_path / "kept").is_dir()


def test_labels_come_from_the_column_the_bundle_was_trained_on(exported_bundle, test_csv, tmp_path):
    # A "label" column would be guessed before "category"; the bundle learnt from "category".
    with open(test_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with_other_labels = tmp_path / "test.csv"
    with open(with_other_labels, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["label", *rows[0]])
        writer.writeheader()
        writer.writerows({"label": "priority-high", **row} for row in rows)
    tickets, _ = load_test_set(with_other_labels, read_manifest(exported_bundle), None)
    assert tickets.labels == [row["category"] for row in rows if row["category"]]


def test_a_test_file_with_its_own_text_column_names_reads_the_same_tickets(exported_bundle, known_rows, tmp_path):
    renamed = tmp_path / "test.csv"
    with open(renamed, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["title", "description", "category"])
        writer.writeheader()
        writer.writerows({"title": r["subject"], "description": r["body"], "category": r["category"]}
                         for r in known_rows)
    manifest = read_manifest(exported_bundle)
    tickets, _ = load_test_set(renamed, manifest, None, ("title", "description"))
    assert tickets.texts == [Predictor.load(exported_bundle).texts([row])[0] for row in known_rows]


def test_test_labels_in_another_case_are_matched_to_the_models(exported_bundle, known_rows, tmp_path):
    shouting = tmp_path / "test.csv"
    with open(shouting, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(known_rows[0]))
        writer.writeheader()
        writer.writerows({**row, "category": row["category"].upper()} for row in known_rows)
    tickets, data_report = load_test_set(shouting, read_manifest(exported_bundle), None)
    assert tickets.labels == [row["category"] for row in known_rows]
    assert data_report.merged_label_spellings["BILLING"] == "billing"


def test_copies_within_the_test_file_are_flagged(evaluated, exported_bundle, known_rows, tmp_path):
    before = evaluated[0]["data"]["test_copies"]  # the sample has a ticket written twice
    doubled = tmp_path / "doubled.csv"
    with open(doubled, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(known_rows[0]))
        writer.writeheader()
        writer.writerows([*known_rows, *known_rows[:3]])  # the same tickets exported twice
    report = evaluate(exported_bundle, doubled, tmp_path / "report", EvaluationOptions(baseline=False))
    assert report["data"]["test_copies"] == before + [row["id"] for row in known_rows[:3]]
    assert any(f"{len(before) + 3} of the {len(known_rows) + 3} test tickets are copies of another" in warning
               for warning in report["warnings"])


def test_a_file_with_only_unknown_labels_is_a_user_error(exported_bundle, test_csv, tmp_path):
    with pytest.raises(UserError, match="no test ticket has a label the model knows"):
        evaluate(exported_bundle, test_csv, tmp_path / "out", EvaluationOptions(label_column="priority",
                                                                               baseline=False))


def test_a_report_never_replaces_files_that_are_not_an_earlier_report(exported_bundle, test_csv, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("my own notes")
    theirs = tmp_path / "theirs"  # another tool's report.json is no earlier report either
    theirs.mkdir()
    (theirs / "report.json").write_text('{"mine": 1}')
    for output, message in ((mine, r"holds report.html, not from an earlier report"),
                            (theirs, r"holds report.json, not from an earlier report"),
                            (exported_bundle, "is a model bundle")):
        with pytest.raises(UserError, match=message):
            evaluate(exported_bundle, test_csv, output, EvaluationOptions(baseline=False))
    assert (mine / "report.html").read_text() == "my own notes"
    assert (theirs / "report.json").read_text() == '{"mine": 1}'
    assert not (exported_bundle / "report.json").exists()
    options = EvaluationOptions(baseline=False)
    evaluate(exported_bundle, test_csv, tmp_path / "earlier", options)
    evaluate(exported_bundle, test_csv, tmp_path / "earlier", options)  # an earlier report is written again


def test_bad_target_precision_is_a_user_error(exported_bundle, test_csv, tmp_path):
    with pytest.raises(UserError, match="between 0 and 1"):
        evaluate(exported_bundle, test_csv, tmp_path / "out", EvaluationOptions(target_precision=95))


# ---------------------------------------------------------------- thresholds into the bundle


def test_labels_from_a_corrected_label_column_are_said(exported_bundle, known_rows, tmp_path):
    rows = [{**row, "corrected_label": ""} for row in known_rows]
    for row in rows[:2]:  # an agent's two corrections in a reviewed file
        row["corrected_label"] = next(row2["category"] for row2 in known_rows if row2["category"] != row["category"])
    reviewed = tmp_path / "reviewed.csv"
    with open(reviewed, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = evaluate(exported_bundle, reviewed, tmp_path / "out", EvaluationOptions(baseline=False))
    assert report["data"]["corrected_labels"] == 2
    assert "2 test labels are the file's corrected_label column's, in place of its label column's" in report["warnings"]


def test_thresholds_are_not_applied_from_a_handful_of_tickets(bundle_copy, known_rows, tmp_path):
    few = tmp_path / "few.csv"
    with open(few, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(known_rows[0]))
        writer.writeheader()
        writer.writerows(known_rows[:99])  # one short of the least
    before = (bundle_copy / "manifest.json").read_bytes()
    with pytest.raises(UserError, match=r"few.csv has 99 tickets of the model's labels, too few to set the bundle's "
                                        r"review thresholds on \(at least 100\); nothing was written"):
        evaluate(bundle_copy, few, tmp_path / "out", EvaluationOptions(apply_threshold_for_precision=0.95))
    assert (bundle_copy / "manifest.json").read_bytes() == before and not (tmp_path / "out").exists()


def test_applied_thresholds_drive_needs_review(bundle_copy, test_csv, known_rows, tmp_path):
    report = evaluate(bundle_copy, test_csv, tmp_path / "out",
                      EvaluationOptions(apply_threshold_for_precision=0.9, target_precision=0.9, baseline=False))
    manifest = read_manifest(bundle_copy)
    per_class = manifest.thresholds.per_class
    assert set(per_class) == set(manifest.labels)
    source = manifest.thresholds.source
    assert source.target_precision == 0.9 and source.data["path"] == str(test_csv)
    assert report["thresholds_applied"]["per_class"] == per_class
    assert any(f"leave out the {sum(UNKNOWN.values())} tickets with labels the model does not know" in warning
               for warning in report["warnings"])

    predictor = Predictor.load(bundle_copy)
    predictions = predictor.predict(known_rows, batch_size=1)
    below = [p.confidence < per_class[p.label] for p in predictions]  # as shown
    for prediction, low in zip(predictions, below):
        assert predictor.threshold(prediction.label) == per_class[prediction.label]
        # The out-of-scope detector may flag a ticket too, for its own reason (which comes first).
        assert prediction.needs_review == (low or prediction.review_reason == "out_of_scope")
        assert prediction.review_reason != "low_confidence" or low
    # Served as evaluated: each threshold is one ticket's confidence, and that ticket is routed too; a ticket the
    # out-of-scope check holds for review is routed by neither, whatever its confidence.
    coverage = report["precision_coverage"]
    routed = sum(not prediction.needs_review for prediction in predictions)
    assert routed == source.expected["tickets"] == coverage["with_per_class_thresholds"]["tickets"]
    assert coverage["held"] == sum(prediction.review_reason == "out_of_scope" for prediction in predictions)
    # Each class with its own threshold reaches the target on the tickets it routes.
    own = [label for label, info in report["precision_coverage"]["per_class_thresholds"].items()
           if info["source"] == "class"]
    assert own, "12 tickets per class give some classes their own threshold"
    for label in own:
        routed = [row["category"] == p.label for row, p in zip(known_rows, predictions)
                  if p.label == label and not p.needs_review]
        assert routed and np.mean(routed) >= 0.9


def test_evaluation_without_apply_leaves_the_bundle_alone(bundle_copy, test_csv, tmp_path):
    before = (bundle_copy / "manifest.json").read_bytes()
    evaluate(bundle_copy, test_csv, tmp_path / "out", EvaluationOptions(baseline=False))
    assert (bundle_copy / "manifest.json").read_bytes() == before


# ---------------------------------------------------------------- command line and rendering


def test_cli_prints_the_summary(exported_bundle, test_csv, tmp_path, capsys):
    code = main(["evaluate", str(exported_bundle), "--data", str(test_csv), "--output", str(tmp_path / "out"),
                 "--no-baseline", "--target-precision", "0.9"])
    out = capsys.readouterr().out
    assert code == 0
    assert "accuracy" in out and "routed at 90% precision" in out and "report.html" in out
    assert main(["evaluate", str(exported_bundle), "--data", str(tmp_path / "missing.csv"),
                 "--output", str(tmp_path / "out")]) == 2


def test_cluster_order_puts_confused_classes_together():
    matrix = np.diag([20] * 6)
    matrix[0, 4] = matrix[4, 0] = 8  # 0 and 4 are confused with each other, as are 1 and 5
    matrix[1, 5] = 6
    order = list(cluster_order(matrix))
    assert sorted(order) == list(range(6))
    assert abs(order.index(0) - order.index(4)) == 1
    assert abs(order.index(1) - order.index(5)) == 1


@pytest.mark.parametrize("test_labels, model_labels, merged, other, expected", [
    (["billing", "data_export", "integrations"], ["billing", "other"], ["data_export", "integrations"], "other",
     ["billing", "other", "other"]),
    # Any spelling of a merged class, or of the data's own catch-all class, lands in that class.
    (["Billing", "LEGAL", "Other"], ["Other", "billing"], ["Legal"], "Other", ["billing", "Other", "Other"]),
    # A bundle from before the catch-all's spelling was recorded merged into "other".
    (["legal", "Other"], ["Other", "billing", "other"], ["legal"], None, ["other", "Other"])])
def test_test_tickets_of_merged_classes_count_as_other(tmp_path: Path, test_labels, model_labels, merged, other,
                                                       expected) -> None:
    path = tmp_path / "test.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["text", "label"],
                                      *([f"ticket {i}", label] for i, label in enumerate(test_labels))])
    data = DataSection(merged_into_other=merged, **({"other_label": other} if other else {}))
    manifest = Manifest(bundle_version="test", labels=model_labels, max_length=16, text=TextOptions(fields=("text",)),
                        data=data)
    tickets, _ = load_test_set(path, manifest, "label")
    assert tickets.labels == expected


def test_report_csvs_show_ticket_text_as_text_not_formulas(tmp_path: Path) -> None:
    from classifier.data import Tickets
    from classifier.evaluate import Scored, _write_confusion_csv, _write_misclassified

    tickets = Tickets(['=HYPERLINK("http://x.example","refund")', "+1 555 0100 call me", "fine"],
                      ["a", "b", "a"], ["@1", "-2", "3"])  # a plain number stays, so the file joins by id
    scored = Scored.of(["a", "b"], np.array([[0.1, 0.9], [0.8, 0.2], [0.6, 0.4]]), tickets.labels)
    test_file = tmp_path / "test.csv"
    test_file.write_text("text,label\n")
    _write_misclassified(tmp_path / "misclassified.csv", scored, tickets, test_file, {"a": 0.85, "b": 0.5}.get)
    with open(tmp_path / "misclassified.csv", newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    assert rows[1:] == [["'@1", '\'=HYPERLINK("http://x.example","refund")', "a", "b", "0.900000", "yes", "a"],
                        ["-2", "'+1 555 0100 call me", "b", "a", "0.800000", "no", "b"]]
    _write_confusion_csv(tmp_path / "matrix.csv", {"labels": ["-1", "=cmd|' /C calc'!A0"], "matrix": [[1, 0], [0, 1]]},
                         test_file)
    with open(tmp_path / "matrix.csv", newline="", encoding="utf-8-sig") as handle:
        assert list(csv.reader(handle))[0] == ["true \\ predicted", "-1", "'=cmd|' /C calc'!A0"]


def test_report_csvs_open_in_the_excel_the_test_file_came_from(tmp_path: Path) -> None:
    """A semicolon-separated test file (a German or French Excel's): the report's files are separated alike,
    with decimal commas, and start with a byte-order mark, or that Excel mangles "Réseau"."""
    from classifier.data import Tickets
    from classifier.evaluate import Scored, _write_misclassified

    test_file = tmp_path / "test.csv"
    test_file.write_bytes("\ufefftext;label\n".encode())
    tickets = Tickets(["WLAN fällt aus", "fine"], ["Réseau", "Matériel"], ["1", "2"])
    scored = Scored.of(["Matériel", "Réseau"], np.array([[0.75, 0.25], [0.9, 0.1]]), tickets.labels)
    _write_misclassified(tmp_path / "misclassified.csv", scored, tickets, test_file, lambda label: 0.5)
    written = (tmp_path / "misclassified.csv").read_bytes()
    assert written.startswith(codecs.BOM_UTF8)
    assert written.decode("utf-8-sig").splitlines() == ["id;text;true;predicted;confidence;routed;second_choice",
                                                        "1;WLAN fällt aus;Réseau;Matériel;0,750000;yes;Réseau"]


def test_evaluating_on_the_training_file_is_flagged(evaluated, exported_bundle, tiny_csv, tmp_path):
    assert not evaluated[0]["data"]["is_training_file"]
    report = evaluate(exported_bundle, tiny_csv, tmp_path / "report", EvaluationOptions(baseline=False))
    assert report["data"]["is_training_file"]
    assert any("the file this model was trained on" in warning for warning in report["warnings"])

    # Training tickets in another file and format: counted as copies, by their text.
    before = evaluated[0]["data"]["training_copies"]
    with open(tiny_csv, newline="", encoding="utf-8") as handle:
        copies = list(csv.DictReader(handle))[:5]
    with open(test_csv_path := tmp_path / "mixed.jsonl", "w", encoding="utf-8") as handle:
        with open(evaluated[0]["data"]["path"], newline="", encoding="utf-8") as test_handle:
            handle.writelines(json.dumps(row) + "\n" for row in [*copies, *csv.DictReader(test_handle)])
    report = evaluate(exported_bundle, test_csv_path, tmp_path / "mixed", EvaluationOptions(baseline=False))
    assert report["data"]["training_copies"] == before + 5 and not report["data"]["is_training_file"]
    assert any(f"{before + 5} of the {report['data']['evaluated']} test tickets" in warning
               for warning in report["warnings"])


def test_thresholds_in_the_bundle_that_route_below_the_target_are_flagged(bundle_copy, test_csv, tmp_path):
    manifest = read_manifest(bundle_copy)
    manifest.thresholds.global_ = 0.0  # every ticket routed: precision is the accuracy
    write_manifest(bundle_copy, manifest)
    report = evaluate(bundle_copy, test_csv, tmp_path / "report", EvaluationOptions(baseline=False))
    assert report["metrics"]["accuracy"] < 0.9 and report["metrics"]["tickets"] >= 100  # below 95 % beyond chance
    [warning] = [w for w in report["warnings"] if w.startswith("the review thresholds in the bundle now route")]
    held = report["precision_coverage"]["held"]  # tickets the out-of-scope check sends to review all the same
    share = 1 - held / report["metrics"]["tickets"]
    assert f"{share:.1%} of these tickets without review" in warning and "below the 95% target" in warning
    # Thresholds that reach the target here, written by this run: nothing to warn about.
    report = evaluate(bundle_copy, test_csv, tmp_path / "applied", EvaluationOptions(
        baseline=False, apply_threshold_for_precision=0.95))
    assert not any(w.startswith("the review thresholds in the bundle now route") for w in report["warnings"])


def test_a_test_accuracy_below_validation_beyond_chance_is_explained(bundle_copy, test_csv, tmp_path):
    def evaluated_with_validation(accuracy: float, tickets: int) -> list[str]:
        manifest = read_manifest(bundle_copy)
        manifest.training.validation_metrics["accuracy"] = accuracy
        if manifest.baseline is not None:  # what the bundle serves: the blend, where it blends
            manifest.baseline.blend_metrics["blend_accuracy"] = accuracy
        manifest.data.validation.rows_used = tickets  # type: ignore[union-attr]
        write_manifest(bundle_copy, manifest)
        report = evaluate(bundle_copy, test_csv, tmp_path / f"{accuracy}-{tickets}", EvaluationOptions(baseline=False))
        assert report["model"]["validation_accuracy"] == accuracy and report["model"]["validation_tickets"] == tickets
        return [w for w in report["warnings"] if w.startswith("accuracy on these tickets")]

    [warning] = evaluated_with_validation(1.0, 400)  # 400 of 400 right in validation: far above any test figure
    assert "is below the 100.0% training measured on its 400 validation tickets, beyond chance" in warning
    assert not evaluated_with_validation(1.0, 3)  # 3 of 3: no evidence of a gap


@pytest.mark.parametrize(("temperature", "how"), [(20.0, "less sure than it is right"),
                                                   (0.1, "surer than it is right")])
def test_confidences_far_from_accuracy_are_flagged(bundle_copy, test_csv, tmp_path, temperature, how):
    manifest = read_manifest(bundle_copy)
    manifest.calibration = Calibration(temperature=temperature)  # far too cool, or far too sharp
    write_manifest(bundle_copy, manifest)
    report = evaluate(bundle_copy, test_csv, tmp_path / "report", EvaluationOptions(baseline=False))
    assert report["metrics"]["tickets"] >= 100
    [warning] = [w for w in report["warnings"] if w.startswith("confidences do not match accuracy")]
    assert f"the model is {how}" in warning
    few = tmp_path / "few.csv"  # under 100 tickets the gap is too noisy to warn about
    with open(test_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:60]
    with open(few, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = evaluate(bundle_copy, few, tmp_path / "few-report", EvaluationOptions(baseline=False))
    assert not any(w.startswith("confidences do not match accuracy") for w in report["warnings"])




def test_a_threshold_resting_on_a_few_tickets_says_so_in_the_terminal() -> None:
    thin = {"threshold": 0.982738, "tickets": 3, "coverage": 0.0126, "precision": 1.0}  # 3 of 3: 44 % to 100 %
    solid = {"threshold": 0.902307, "tickets": 191, "coverage": 0.799, "precision": 0.953}  # 91 % to 98 %
    assert routed_shown(thin, 0.95) == "1.3% (t>=0.982738), only 3 tickets: too few to rely on"
    assert routed_shown(solid, 0.95) == "79.9% (t>=0.902307)" and routed_shown(None, 0.95) == "none"
