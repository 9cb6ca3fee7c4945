"""The evaluation report as one self-contained HTML page (pictures embedded as base64 PNG).

Written for a support lead: headline numbers and warnings first, then what to do (the routing
threshold), then where the model goes wrong. Everything shown comes from report.json.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from html import escape
from typing import Any

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
       margin: 0 auto; max-width: 1280px; padding: 24px 32px 64px; }
h1 { margin-bottom: 4px; } h2 { margin-top: 42px; border-bottom: 2px solid #e3e7ee; padding-bottom: 4px; }
.meta, .note { color: #5b6475; font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 14px; margin: 20px 0; }
.card { background: #f4f6fa; border-radius: 8px; padding: 12px 18px; }
.card .value { font-size: 28px; font-weight: 600; } .card .label { color: #5b6475; font-size: 13px; }
.advice { background: #eaf3ea; border-left: 5px solid #3d8b3d; padding: 12px 16px; font-size: 16px; }
.advice.none { background: #fbeeee; border-left-color: #b03030; }
.warnings { background: #fff6e0; border-left: 5px solid #d9a400; padding: 10px 16px; margin: 16px 0; }
.warnings li { margin: 3px 0; }
table { border-collapse: collapse; margin: 10px 0; font-size: 13.5px; }
th, td { padding: 4px 9px; border-bottom: 1px solid #e6e9ef; text-align: right; white-space: nowrap; }
th { background: #f4f6fa; position: sticky; top: 0; white-space: normal; }
table.sortable th { cursor: pointer; user-select: none; }
.name { text-align: left; } td.name { white-space: normal; max-width: 260px; }
td.text { text-align: left; white-space: normal; }
.up { color: #2e7d32; font-weight: 600; } .down { color: #c62828; font-weight: 600; }
img { max-width: 100%; border: 1px solid #e3e7ee; }
img.zoomable { cursor: zoom-in; } img.zoomed { max-width: none; cursor: zoom-out; }
.scroll { overflow: auto; }
.bleed { width: 96vw; margin-left: calc(50% - 48vw); }
.bleed table { margin: 10px auto; } .bleed img { display: block; margin: 0 auto; }
.confusion { margin: 14px 0 22px; } .confusion h3 { margin: 0 0 4px; font-size: 15px; }
.confusion ul { margin: 4px 0; padding-left: 20px; } .confusion li { margin: 3px 0; }
code { background: #f1f3f7; padding: 1px 5px; border-radius: 4px; }
"""

# Click a column header to sort (by data-v when the cell has one); click a picture for full size.
SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
  const key = row => {
    const cell = row.cells[column];
    return cell.dataset.v !== undefined ? parseFloat(cell.dataset.v) : cell.textContent;
  };
  const sign = (th.dataset.dir = th.dataset.dir === "asc" ? "desc" : "asc") === "asc" ? 1 : -1;
  rows.sort((a, b) => sign * (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  rows.forEach(row => body.appendChild(row));
}));
document.querySelectorAll("img.zoomable").forEach(img =>
  img.addEventListener("click", () => img.classList.toggle("zoomed")));
"""


def render(report: dict[str, Any], images: dict[str, bytes]) -> str:
    """The whole page; ``images`` maps file names (e.g. ``confusion_matrix.png``) to PNG bytes."""
    sections = [_header(report), _warnings(report), _headline(report), _side_by_side(report),
                _coverage(report, images), _per_class(report), _confusions(report),
                _matrix(images), _calibration(report, images), _unknown(report), _how_to(report)]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>Evaluation: {escape(report['model']['name'])}</title><style>{STYLE}</style></head><body>"
            + "\n".join(s for s in sections if s) + f"<script>{SCRIPT}</script></body></html>\n")


# ---------------------------------------------------------------- sections


def _header(report: dict[str, Any]) -> str:
    model, data = report["model"], report["data"]
    return (f"<h1>Ticket classifier evaluation</h1><p class='meta'>Model <b>{escape(model['name'])}</b> "
            f"(version {escape(model['version'])}, {escape(model['engine'])}, {model['labels']} classes) on "
            f"<b>{escape(str(data['path']))}</b>: {data['rows_read']} rows, {data['evaluated']} evaluated. "
            f"Created {escape(report['created_at'])}.</p>")


def _warnings(report: dict[str, Any]) -> str:
    if not report["warnings"]:
        return ""
    items = "".join(f"<li>{escape(warning)}</li>" for warning in report["warnings"])
    return f"<div class='warnings'><b>Before you rely on these numbers</b><ul>{items}</ul></div>"


def _headline(report: dict[str, Any]) -> str:
    metrics, coverage = report["metrics"], report["precision_coverage"]
    point = coverage["recommended"]
    cards = [(f"{metrics['accuracy']:.1%}", "accuracy: tickets put in the right queue"),
             (f"{metrics['macro_f1']:.3f}", "macro F1: every class counts the same"),
             (f"{metrics['weighted_f1']:.3f}", "weighted F1: big classes count more"),
             (f"{point['coverage']:.1%}" if point else "none",
              f"could be routed without review at {coverage['target_precision']:.0%} precision"),
             (f"{metrics['ece']:.3f}", "calibration error (0 = confidence is honest)")]
    shown = "".join(f"<div class='card'><div class='value'>{value}</div><div class='label'>{escape(label)}</div>"
                    "</div>" for value, label in cards)
    return (f"<div class='cards'>{shown}</div>"
            f"<p class='advice{'' if point else ' none'}'>{escape(coverage['message'])}</p>")


def _side_by_side(report: dict[str, Any]) -> str:
    others = _others(report)
    if not others:
        return ""
    mine = report["metrics"]
    metrics = [("tickets evaluated", "tickets", str, 0), ("accuracy", "accuracy", "{:.1%}".format, 1),
               ("macro F1", "macro_f1", "{:.3f}".format, 1), ("weighted F1", "weighted_f1", "{:.3f}".format, 1),
               ("calibration error (lower is better)", "ece", "{:.3f}".format, -1)]
    rows = []
    for title, key, fmt, better in metrics:  # better: +1 higher is better, -1 lower is better, 0 no difference
        cells = [f"<td class='name'>{title}</td>", f"<td>{fmt(mine[key])}</td>"]
        for _, other in others:
            difference = (mine[key] - other["metrics"][key]) * better
            cells += [f"<td>{fmt(other['metrics'][key])}</td>",
                      _delta_cell(difference, points=key == "accuracy") if better else "<td></td>"]
        rows.append(cells)
    rows.append(["<td class='name'>routed at target precision</td>", f"<td>{_coverage_text(mine['at_target'])}</td>"]
                + [f"<td>{_coverage_text(o['metrics']['at_target'])}</td><td></td>" for _, o in others])
    head = ["", "this model"] + [h for key, o in others for h in (f"{key}: {o['name']}", "this model better by")]
    notes = "".join(f"<li>{key}: {escape(o['name'])}, {escape(o['description'])}</li>" for key, o in others)
    return ("<h2>Compared with other models</h2><p>Is this model better than the alternatives? A positive "
            "difference means this model is better. Per-class differences are in the class table.</p>"
            f"{_table(head, rows)}<ul class='note'>{notes}</ul>")


def _coverage(report: dict[str, Any], images: dict[str, bytes]) -> str:
    section = report["precision_coverage"]
    rows = [[f"<td>{p['threshold']:.3g}</td>", f"<td>{p['coverage']:.1%}</td>", f"<td>{p['tickets']}</td>",
             f"<td>{_percent(p['precision'])}</td>"] for p in section["table"]]
    return ("<h2>How many tickets can be routed automatically?</h2>"
            "<p>The model gives every ticket a confidence. Tickets at or above a <b>threshold</b> are routed "
            "automatically; the rest go to a person (<code>needs_review</code>). A higher threshold means fewer "
            "tickets routed (<b>coverage</b>) but more of them right (<b>precision</b>).</p>"
            + _image(images, "precision_coverage.png", "precision and coverage curves")
            + _table(["confidence threshold", "coverage", "tickets routed", "precision"], rows)
            + "<p>With one threshold per class (column “threshold” in the class table), "
            f"{_routing_text(section['with_per_class_thresholds'])}. With the thresholds in the bundle now"
            f"{_source_text(section)}, {_routing_text(section['with_bundle_thresholds'])}.</p>"
            "<p class='note'>Thresholds chosen on this test set look slightly better here than they will on new "
            "tickets; choose them on a set you do not report on, or keep a margin.</p>")


def _per_class(report: dict[str, Any]) -> str:
    others = _others(report)
    target = report["precision_coverage"]["target_precision"]
    head = (["class", "test tickets", "predicted", "precision", "recall", "F1"]
            + [h for key, _ in others for h in (f"F1 {key}", "Δ F1")]
            + [f"threshold for {target:.0%}", "routed at it", "most often mistaken for"])
    rows = [_class_row(row, others) for row in sorted(report["per_class"], key=lambda r: (r["support"] == 0, r["f1"]))]
    legend = "".join(f" <b>F1 {key}</b>: {escape(o['name'])}; <b>Δ F1</b>: this model's F1 minus it (green: "
                     "this model is better)." for key, o in others)
    return (f"<h2>Per class</h2><p>Worst classes first (click a column to sort).{legend} <b>Precision</b>: of the "
            "tickets the model put in this class, the share that belong there. <b>Recall</b>: of this class's "
            "tickets, the share the model found. <b>Threshold</b>: the lowest confidence at which this class's "
            f"routed tickets reach {target:.0%} precision (“global”: too few tickets to tell, the overall "
            "threshold is used; “never”: the class never reaches it, all its tickets go to review).</p>"
            f"<div class='bleed scroll'>{_table(head, rows, sortable=True)}</div>")


def _class_row(row: dict[str, Any], others: list[tuple[str, dict[str, Any]]]) -> list[str]:
    label = row["label"]
    cells = [f"<td class='name'>{_breakable(label)}</td>", _number_cell(row["support"]),
             _number_cell(row["predicted"]), _score_cell(row["precision"]), _score_cell(row["recall"]),
             _score_cell(row["f1"])]
    for _, other in others:
        delta = other["f1_delta"].get(label)
        cells += ([_score_cell(other["per_class_f1"][label]), _delta_cell(delta)] if delta is not None
                  else ["<td data-v='-1'>–</td>", "<td data-v='0'></td>"])
    source, mistaken = row["threshold_source"], row["most_confused_with"]
    threshold = f"{row['threshold']:.3g}"
    shown = {"unreachable": "never", "global": f"{threshold} (global)"}.get(source, threshold)
    return cells + [f"<td data-v='{row['threshold']}'>{shown}</td>",
                    f"<td data-v='{row['coverage_at_threshold']}'>{row['coverage_at_threshold']:.0%}</td>",
                    f"<td class='name'>{_breakable(mistaken) if mistaken else ''}</td>"]


def _confusions(report: dict[str, Any]) -> str:
    if not report["top_confusions"]:
        return ""
    blocks = "".join(_confusion(c) for c in report["top_confusions"])
    return ("<h2>Worst confusions</h2><p>The most frequent mistakes, with the tickets the model was most sure "
            "about. Frequent confusions between two queues often mean overlapping queue definitions or "
            "inconsistent labels rather than a model problem. All mistakes are in <code>misclassified.csv</code>."
            f"</p>{blocks}")


def _confusion(pair: dict[str, Any]) -> str:
    true, predicted = escape(pair["true"]), escape(pair["predicted"])
    examples = "".join(f"<li>“{escape(e['text'])}” <span class='note'>(id {escape(str(e['id']))}, confidence "
                       f"{e['confidence']:.0%})</span></li>" for e in pair["examples"])
    return (f"<div class='confusion'><h3>{true} → predicted as {predicted}: {pair['count']} ticket{'s' if pair['count'] != 1 else ''} "
            f"({pair['share_of_true']:.0%} of {true})</h3><ul>{examples}</ul></div>")


def _matrix(images: dict[str, bytes]) -> str:
    return ("<h2>Confusion matrix</h2><p>Each row is a true class; the colour shows where its tickets went "
            "(the diagonal is correct). Dark cells off the diagonal are confusions; classes that get confused "
            "are placed side by side, so they show up as blocks near the diagonal. Click the picture for full "
            "size. The counts are also in <code>confusion_matrix.csv</code>.</p>"
            f"<div class='bleed scroll'>{_image(images, 'confusion_matrix.png', 'confusion matrix')}</div>")


def _calibration(report: dict[str, Any], images: dict[str, bytes]) -> str:
    return ("<h2>Can the confidence be trusted?</h2><p>If the model says 80 %, it should be right about 80 % of "
            "the time. Bars below the dashed line mean the model is over-confident at that level, above it "
            f"under-confident. Expected calibration error: <b>{report['calibration']['ece']:.3f}</b> (the average "
            "gap, weighted by tickets; below 0.05 is good). Thresholds are still valid when calibration is poor, "
            "because they are measured, not assumed.</p>"
            + _image(images, "reliability.png", "reliability diagram"))


def _unknown(report: dict[str, Any]) -> str:
    unknown = report["unknown_labels"]
    if not unknown["count"]:
        return ""
    rows = [[f"<td class='name'>{escape(label)}</td>", f"<td>{info['count']}</td>",
             f"<td class='name'>{escape(', '.join(f'{k} ({v})' for k, v in list(info['predicted_as'].items())[:3]))}"
             "</td>",
             f"<td class='text'>{escape(', '.join(info['ids'][:10]))}{' …' if info['count'] > 10 else ''}</td>"]
            for label, info in unknown["labels"].items()]
    return ("<h2>Labels the model does not know</h2><p>These test tickets carry labels the model was not trained "
            "on, so it cannot get them right; they are left out of every number above. If these are new queues, "
            "the model needs retraining with examples of them.</p>"
            + _table(["label", "tickets", "the model sends them to", "ticket ids"], rows))


def _how_to(report: dict[str, Any]) -> str:
    target = report["precision_coverage"]["target_precision"]
    applied = report.get("thresholds_applied")
    done = (f"<p><b>Per-class thresholds for {applied['target_precision']:.0%} precision were written to the "
            f"bundle</b> at {escape(applied['set_at'])}.</p>" if applied else "")
    command = (f"ticketclf evaluate {report['model']['bundle']} --data HOLDOUT_FILE "
               f"--output REPORT_DIR --apply-threshold-for-precision {target}")
    return (f"<h2>Setting the thresholds</h2>{done}<p>To make the service send every ticket below its class's "
            f"threshold to review, write the per-class thresholds into the bundle. Measure them on labelled "
            f"tickets kept out of training other than this test file, so that this report stays an honest "
            f"estimate of what they give:</p>"
            f"<p><code>{escape(command)}</code></p>"
            f"<p class='note'>Files: {escape(', '.join(report.get('files', [])))}</p>")


# ---------------------------------------------------------------- tables and cells


def _table(head: list[str], rows: Iterable[list[str]], sortable: bool = False) -> str:
    """``head``: plain-text column titles (the first is the left-aligned name column); ``rows``: ready cells."""
    titles = "".join(f"<th{' class=name' if i == 0 else ''}>{escape(title)}</th>" for i, title in enumerate(head))
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return (f"<table{' class=sortable' if sortable else ''}><thead><tr>{titles}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _others(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The models evaluated next to this one, as ("baseline" | "compare", section)."""
    return [(key, report[key]) for key in ("baseline", "compare") if report.get(key) and report[key].get("metrics")]


def _image(images: dict[str, bytes], name: str, alt: str) -> str:
    data = base64.b64encode(images[name]).decode("ascii")
    return f"<img class='zoomable' alt='{escape(alt)}' src='data:image/png;base64,{data}'>"


def _breakable(label: str) -> str:
    """Let long snake_case class names wrap after an underscore instead of widening the table."""
    return escape(label).replace("_", "_<wbr>")


def _score_cell(value: float) -> str:
    hue = int(120 * value)  # red (0) through yellow to green (1)
    return f"<td data-v='{value}' style='background: hsl({hue}, 65%, 86%)'>{value:.2f}</td>"


def _delta_cell(delta: float, points: bool = False) -> str:
    """A difference, green when this model is better; ``points``: a share shown in percentage points."""
    css = "up" if delta > 0.005 else "down" if delta < -0.005 else ""
    shown = f"{delta * 100:+.1f} points" if points else f"{delta:+.3f}"
    return f"<td data-v='{delta}' class='{css}'>{shown}</td>"


def _number_cell(value: int) -> str:
    return f"<td data-v='{value}'>{value}</td>"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _coverage_text(point: dict[str, Any] | None) -> str:
    return "none" if point is None else f"{point['coverage']:.1%} (confidence ≥ {point['threshold']:.3g})"


def _routing_text(point: dict[str, Any]) -> str:
    if not point["tickets"]:
        return "no ticket would be routed automatically"
    return (f"{point['coverage']:.1%} of tickets ({point['tickets']}) would be routed automatically, "
            f"{_percent(point['precision'])} of them correctly")


def _source_text(section: dict[str, Any]) -> str:
    source = section.get("bundle_thresholds_source")
    if not source:
        return " (no per-class thresholds set by an evaluation)"
    return (f" (set for {source['target_precision']:.0%} precision on {escape(str(source['data']['path']))}, "
            f"{escape(source['set_at'])})")
