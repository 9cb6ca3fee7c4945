"""Retraining with champion/challenger promotion, for a model in a repository (``REPO/NAME``).

``ticketclf retrain models/tickets --data export.csv [--feedback DB_URL]``:

1. **Training set**: the helpdesk export plus the agents' corrections. A correction replaces the
   label of the same ticket (matched by id); a corrected ticket the export does not hold joins with
   the text the feedback stored. Corrections that disagree with each other are listed; the latest
   wins. Tickets of the fixed holdout never train. A champion that also predicts fields (priority,
   tags) trains them again from the export's columns; a ticket only the feedback holds trains the
   label alone (feedback corrects the label, so its fields are unknown to training, not empty).
2. **Holdout**: ``REPO/NAME/holdout.csv``, kept in the repository so that every retrain compares
   its models on the same tickets. The first retrain makes it (a stratified tenth of the export, drawn
   from the tickets the champion did not train on where there are enough); ``--holdout FILE`` sets it,
   kept once a challenger was trained and scored on it (one that fails leaves the old holdout in place).
   Its tickets are scored against the label an agent corrected them to, if one did. Corrected tickets
   received since the champion was trained, which neither model trained on, join the evaluation (one in
   five of them is kept out of training).
3. **Challenger**: trained with the champion's data and training options, exported like the
   champion (int8 when it holds), and added as a new version (the challenger).
4. **Decision**: both models are evaluated on the same tickets (``evaluate --compare``: the report
   goes to the challenger's ``reports/evaluation``). The challenger is promoted only when its
   accuracy is higher by at least ``margin`` and no label with at least ``min_support`` test tickets
   loses more than ``tolerance`` of F1; otherwise it stays the challenger, with the reasons. It replaces
   only the champion it was compared with: where another retrain (or a person) promoted a version
   meanwhile, it stays the challenger. The decision and both models' figures go to the repository's history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from classifier.bundle import TRAINING_COPY_FILE, keep_training_copy
from classifier.columns import ColumnMapping, absent_columns, resolve_columns
from classifier.data import (
    flat_columns,
    from_review_file,
    label_value,
    split_file,
    training_file_texts,
    write_csv,
)
from classifier.errors import UserError
from classifier.manifest import Manifest
from classifier.readers import file_sha256, records_and_columns
from classifier.repository import EVALUATION_REPORT, ChampionChanged, ModelRepository, Version, open_model
from classifier.text import TextOptions, into_fields, label_key, ticket_text

log = logging.getLogger(__name__)

HOLDOUT_FILE = "holdout.csv"
EVALUATION_SET_FILE = "evaluation-set.jsonl"  # the tickets both models are scored on, kept with the report
FIELDS = "fields"  # a merged row's field values, by column
HOLDOUT_FRACTION = 0.1
RECENT_HELD_OUT = 5  # one recent corrected ticket in this many is kept out of training, for evaluation


@dataclass(frozen=True)
class Correction:
    """A label an agent set on a ticket (from the feedback store, or its export)."""

    ticket_id: str
    label: str
    fields: dict[str, str] | None  # the ticket's text fields, when the feedback sent them
    received_at: str  # ISO 8601, UTC: orders corrections of the same ticket


# Shares, not points: a margin of 5 could never be met, and one below -1 or a tolerance above 1 means nothing.
MARGIN_RANGE = (-1.0, 1.0)
TOLERANCE_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class PromotionPolicy:
    margin: float = 0.005  # accuracy the challenger must gain over the champion (0.005: half a point)
    tolerance: float = 0.05  # F1 any well-supported label may lose, and accuracy (tags: micro-F1) any field
    min_support: int = 20  # test tickets a label needs for its F1 to count (a field, for its figure)

    def __post_init__(self) -> None:
        for name, (low, high) in (("margin", MARGIN_RANGE), ("tolerance", TOLERANCE_RANGE)):
            value = getattr(self, name)
            if not low <= value <= high:  # NaN fails too
                raise UserError(f"{name} {value!r}: expected a share between {low:g} and {high:g} "
                                "(0.005 is half a point)")
        if self.min_support < 0:
            raise UserError(f"min_support {self.min_support}: expected a number of tickets, 0 or more")


@dataclass
class MergeReport:
    """What the corrections did to the export."""

    export_rows: int = 0
    held_out: int = 0  # export rows that are holdout tickets: not trained on
    trained: int = 0  # tickets in the training file: the export's outside the holdout, relabelled or added
    corrected: int = 0  # export tickets whose label an agent changed
    confirmed: int = 0  # export tickets an agent gave the label they had
    added: int = 0  # corrected tickets the export did not hold, trained on
    evaluated: int = 0  # recent corrected tickets kept for evaluation instead
    holdout_relabelled: int = 0  # holdout tickets an agent relabelled: scored with the agent's label
    holdout_confirmed: int = 0  # holdout tickets an agent labelled as they were
    holdout_trained: int | None = None  # holdout tickets the champion trained on (None: its training file is gone)
    without_text: int = 0  # corrections of tickets neither the export nor the feedback has text for
    conflicts: list[dict[str, Any]] = field(default_factory=list)  # a ticket given different labels
    new_labels: dict[str, int] = field(default_factory=dict)  # labels the champion does not know: tickets
    too_few: dict[str, int] = field(default_factory=dict)  # new labels left out: fewer tickets than training needs
    # The files written name the text fields as the champion does (columns are read in any case) and the label
    # and id as the export does.
    text_columns: list[str] = field(default_factory=list)
    label_column: str = "label"
    id_column: str = "id"
    field_columns: list[str] = field(default_factory=list)  # the other fields the champion predicts
    fields_unknown: int = 0  # trained tickets only the feedback holds: their fields are unknown

    def lines(self) -> list[str]:
        lines = [f"export: {self.export_rows} tickets, {self.held_out} of them in the holdout (not trained on); "
                 f"{self.trained} tickets to train on, corrections included",
                 f"corrections: {self.corrected} relabelled, {self.confirmed} confirmed, {self.added} new tickets "
                 f"added, {self.evaluated} recent ones kept for evaluation, {self.without_text} without text"]
        if self.holdout_relabelled or self.holdout_confirmed:
            lines.append(f"holdout tickets agents labelled (scored, never trained on): {self.holdout_relabelled} "
                         f"relabelled, {self.holdout_confirmed} confirmed; both models are scored against the agents' "
                         "label")
        if self.holdout_trained:
            lines.append(f"warning: {self.holdout_trained} holdout tickets are in the champion's training file, "
                         "which favours it; give --holdout a labelled file of tickets neither model trained on")
        elif self.holdout_trained is None:
            lines.append("the champion's training file is no longer where it was trained: whether the holdout "
                         "holds tickets it trained on (which would favour it) cannot be told")
        if self.conflicts:
            lines.append(f"{len(self.conflicts)} ticket(s) corrected to different labels (the latest wins): "
                         + ", ".join(f"{c['ticket_id']} {' -> '.join(c['labels'])}" for c in self.conflicts[:5]))
        if self.fields_unknown:
            lines.append(f"{self.fields_unknown} ticket(s) only the feedback holds train the label alone: their "
                         f"{', '.join(self.field_columns)} unknown")
        if self.new_labels:
            lines.append("new labels, trained: " + ", ".join(f"{label} ({n})" for label, n in self.new_labels.items()))
        if self.too_few:
            lines.append("new labels not trained yet, too few tickets: "
                         + ", ".join(f"{label} ({n})" for label, n in self.too_few.items()))
        return lines


@dataclass
class Decision:
    promoted: bool
    reasons: list[str]
    challenger: dict[str, float]
    champion: dict[str, float]
    f1_losses: dict[str, float]  # labels whose F1 dropped, by how much
    # Fields whose accuracy (tags: micro-F1) dropped beyond the tolerance and chance, by how much; a champion's
    # field the challenger could not be measured on loses its whole figure.
    field_losses: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RetrainResult:
    version: Version
    champion: Version
    decision: Decision
    merge: MergeReport
    report: dict[str, Any]  # the evaluation's report.json content, with the champion side by side


def retrain(model_dir: str | Path, data_path: str | Path, corrections: Iterable[Correction] = (), *,
            holdout_path: str | Path | None = None, policy: PromotionPolicy | None = None, promote: bool = True,
            training_overrides: dict[str, Any] | None = None) -> RetrainResult:
    """Train a challenger on the export plus the corrections, compare it with the champion on the same
    tickets, and promote it if it is better by the policy (unless ``promote`` is False)."""
    from classifier.evaluate import EvaluationOptions, evaluate
    from classifier.export import export
    from classifier.train import train

    policy = policy or PromotionPolicy()
    repository, name = open_model(model_dir)
    champion = repository.champion(name)
    manifest = champion.manifest()
    columns = Columns.of(manifest)
    # An export the challenger cannot train on is refused before anything changes (the holdout included).
    export_file = columns.resolve(Path(data_path),
                                  label_alone=f"ticketclf train EXPORT --repository {repository.root} --name {name}")
    given = None
    if holdout_path is not None:
        given = columns.resolve(Path(holdout_path), fields_required=False)
        _refuse_a_holdout_of_every_ticket(export_file, given, Path(holdout_path))
    trained = training_file_texts(manifest, champion.path)
    champion_trained = TrainedOn(set(trained), manifest.text) if trained is not None else None
    with repository.scratch(name) as work:  # removed after, or by the next writer if this process is killed
        holdout, holdout_file = _holdout(repository, name, Path(data_path), given, columns, champion_trained, work)
        training_file, evaluation_file = work / TRAINING_COPY_FILE, work / EVALUATION_SET_FILE
        merge = merge_corrections(export_file, list(corrections), training_file, evaluation_file,
                                  holdout=holdout, known_labels=set(manifest.labels), since=manifest.created_at,
                                  min_class_count=manifest.data.options.min_class_count)
        merge.holdout_trained = champion_trained.count(holdout, merge.text_columns) if champion_trained else None
        for line in merge.lines():
            log.info("%s", line)
        data_options = dataclasses.replace(manifest.data.options, validation_path=None)
        options = dataclasses.replace(manifest.training.options, resume=False, **(training_overrides or {}))

        def build(path: Path) -> None:
            try:
                train(training_file, path, options, data_options)
            except UserError as error:  # the trainer names the merged file: say what went into it
                kept = "; the --holdout file was not kept" if holdout_path is not None else ""
                raise UserError(f"{error} (training the challenger on {merge.trained} tickets, merged from the "
                                f"export's {merge.export_rows} and the corrections, the {merge.held_out} holdout "
                                f"tickets left out{kept})") from error
            keep_training_copy(path, training_file)
            if manifest.export is not None:  # served as the champion is: exported, checked for drift
                export(path)

        version = repository.add_version(name, build, reason="retrained: the challenger",
                                         details={"data": str(data_path), "merge": dataclasses.asdict(merge)})
        # The tickets both models are scored on, kept with the report first, so that the report names that
        # file and not this scratch folder's, gone once the retrain ends.
        reports = version.path / EVALUATION_REPORT.parent
        reports.mkdir(parents=True, exist_ok=True)
        shutil.copy2(evaluation_file, reports / EVALUATION_SET_FILE)
        report = evaluate(version.path, reports / EVALUATION_SET_FILE, reports,
                          EvaluationOptions(compare_bundle=champion.path, label_column=merge.label_column,
                                            text_columns=tuple(merge.text_columns)))
        # Kept only now, so that a challenger that fails to train leaves the holdout as it was; and only over the
        # champion it was chosen against: one promoted meanwhile may have trained on these tickets.
        if holdout_path is not None:
            now = repository.champion(name).number
            if now == champion.number:
                _keep_holdout(holdout_file, repository.model_dir(name) / HOLDOUT_FILE, Path(holdout_path),
                              len(holdout), columns)
            else:
                log.warning("%s is not kept as the fixed holdout: version %d became the champion while this retrain "
                            "ran, and may have trained on its tickets; retrain again with --holdout", holdout_path, now)

    decision = decide(report, policy)

    def details() -> dict[str, Any]:
        return {"decision": decision.to_dict(), "merge": dataclasses.asdict(merge),
                "policy": dataclasses.asdict(policy), "report": str(version.path / EVALUATION_REPORT)}

    if decision.promoted and promote:
        try:
            repository.promote(name, version.number, reason=f"retrain: {'; '.join(decision.reasons)}",
                               details=details(), replacing=champion.number)
            return RetrainResult(version, champion, decision, merge, report)
        except ChampionChanged as changed:  # another retrain, or a person, promoted meanwhile
            decision.promoted = False
            decision.reasons.append(f"{changed}; retrain again to compare it with the new champion")
    staged = "" if decision.promoted else "not promoted: "
    repository.record(name, "retrain", version.number,
                      reason=f"{staged}{'; '.join(decision.reasons)}"
                             + ("; --no-promote: staged only" if not promote else ""), details=details())
    decision.promoted = decision.promoted and promote
    return RetrainResult(version, champion, decision, merge, report)


# ---------------------------------------------------------------- the decision


def decide(report: dict[str, Any], policy: PromotionPolicy) -> Decision:
    """Promote or not, from an evaluation report with the champion as its compared model."""
    compare = report.get("compare")
    if not compare:
        raise UserError("the evaluation has no side-by-side champion: nothing to decide on")
    ours, theirs = report["metrics"], compare["metrics"]
    support = {row["label"]: row["support"] for row in report["per_class"]}
    losses = {label: round(-delta, 4) for label, delta in compare["f1_delta"].items()
              if support.get(label, 0) >= policy.min_support and _beyond(-delta, policy.tolerance)}
    gain = ours["accuracy"] - theirs["accuracy"]
    reasons = []
    if gain < policy.margin:
        reasons.append(f"accuracy {ours['accuracy']:.2%} against the champion's {theirs['accuracy']:.2%}: "
                       f"{gain * 100:+.2f} points, the margin is {policy.margin * 100:+.2f}")
    if losses:
        lost = ", ".join(f"{label} -{loss:.3f}" for label, loss in losses.items())
        reasons.append(f"labels that lose more than the tolerated F1 ({policy.tolerance:.2f}): {lost}")
    fields_compared, field_reasons, field_losses = _field_losses(report, compare, policy)
    reasons += field_reasons
    promoted = not reasons
    if promoted:
        reasons.append(f"accuracy {ours['accuracy']:.2%} against the champion's {theirs['accuracy']:.2%} "
                       f"({gain * 100:+.2f} points, the margin is {policy.margin * 100:+.2f}), no label with "
                       f"{policy.min_support}+ test tickets loses more than {policy.tolerance:.2f} F1"
                       + (f"; no field loses more beyond chance either ({'; '.join(fields_compared)})"
                          if fields_compared else ""))
    figures = ("accuracy", "macro_f1", "tickets")
    return Decision(promoted, reasons, {key: ours[key] for key in figures}, {key: theirs[key] for key in figures},
                    losses, field_losses)


def _beyond(loss: float, tolerance: float) -> bool:
    """Whether a loss is more than the tolerance, 0.8 - 0.75 counting as 0.05 (not 0.05000000000000004)."""
    return round(loss, 9) > tolerance


def _field_losses(report: dict[str, Any], compare: dict[str, Any], policy: PromotionPolicy
                  ) -> tuple[list[str], list[str], dict[str, float]]:
    """The fields besides the label, on the test tickets both models were measured on: those that do not lose
    (in words, for a promotion's reason), the reasons not to promote, and the losses behind them. A field loses
    where its figure drops by more than the tolerance *and* beyond chance: on a few dozen tickets a 5-point drop
    is often the draw of tickets. A field the champion was measured on and the challenger could not be loses the
    champion's whole figure, for certain. Either counts from ``min_support`` tickets on, as for a label."""
    counted = [field for field in (compare.get("fields") or {}).values()  # none in a report from before fields
               if field["tickets"] >= policy.min_support]                # were compared

    def loss(field: dict[str, Any]) -> float:  # the champion's whole figure where the challenger was not measured
        return field["other"] if field["gap"] is None else -field["gap"]["value"]

    def lost(field: dict[str, Any]) -> bool:  # a measured gap's whole interval below 0: worse beyond chance
        return _beyond(loss(field), policy.tolerance) and (field["gap"] is None or field["gap"]["high"] < 0)

    losing = [field for field in counted if lost(field)]
    reasons = [f"{field['name']}: the champion's {field['measure']} is {field['other']:.3f} on {field['tickets']} "
               "tickets, and the challenger could not be measured on it (it does not predict the field, predicts it "
               "as another kind, or knows none of its values)" for field in losing if field["gap"] is None]
    if worse := [field["summary"] for field in losing if field["gap"] is not None]:
        reasons.append(f"fields that lose more than the tolerance ({policy.tolerance * 100:.1f} points of accuracy, "
                       f"{policy.tolerance:.3f} of micro-F1), beyond chance: " + "; ".join(worse))
    kept = [field["summary"] if field["gap"] is not None else
            f"{field['name']}: the challenger could not be measured on it, the champion's {field['measure']} is "
            f"{field['other']:.3f}, within the tolerance" for field in counted if field not in losing]
    return kept, reasons, {field["name"]: round(loss(field), 4) for field in losing}


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Columns:
    """The columns the champion was trained on: its text fields, its label column (None: detect), and the
    columns of the other fields it predicts (single-label ones, then its tags column, if any)."""

    text_fields: tuple[str, ...]
    label: str | None
    fields: tuple[str, ...] = ()

    @classmethod
    def of(cls, manifest: Manifest) -> Columns:
        options = manifest.data.options
        return cls(manifest.text.fields, manifest.data.train.label_column if manifest.data.train else None,
                   (*options.field_columns, *([options.tags_column] if options.tags_column else [])))

    def resolve(self, path: Path, fields_required: bool = True,
                label_alone: str = "ticketclf train EXPORT --repository REPO --name NAME") -> TicketFile:
        """The file's records and columns. The export must hold every field the champion predicts: its
        challenger trains them (``label_alone``: the command the refusal suggests instead). A holdout without
        some of them is scored without them (``fields_required`` False)."""
        numbered, file_columns = records_and_columns(path)
        absent = absent_columns(file_columns, self.fields)
        if absent and fields_required:
            raise UserError(f"{path}: no column {absent[0]!r}; the model also predicts {', '.join(self.fields)}, "
                            "and retrain trains its challenger's fields from the export's columns of those names. "
                            f"Give an export that has them, or train a version of the label alone with "
                            f"'{label_alone}' and promote it")
        present = [name for name in self.fields if name not in absent]
        mapping = resolve_columns(file_columns, path, self.text_fields or None, self.label, field_columns=present,
                                  hint="retrain reads a file by the columns the model was trained on; give it "
                                       "one that has them")
        texts = dict(zip(self.text_fields or mapping.text_columns, mapping.text_columns))
        fields = {**dict.fromkeys(self.fields), **dict(zip(present, mapping.field_columns))}
        return TicketFile(numbered, file_columns, mapping, texts, fields)


@dataclass(frozen=True)
class TicketFile:
    """A file read by :meth:`Columns.resolve`: its records, and its columns as the champion names them."""

    records: list[tuple[int, dict[str, Any]]]
    columns: list[str]  # all of the file's, as read
    mapping: ColumnMapping
    texts: dict[str, str]  # the champion's text fields -> the file's columns
    fields: dict[str, str | None]  # the champion's field names -> the file's column (None: the file has none)

    def row(self, record: dict[str, Any]) -> dict[str, Any]:
        """A ticket as merged, by the champion's names whatever the file's spelling (an export's "Subject" and
        a holdout's "subject" are one column): its text cells, label and id, and its field values (a tags cell
        as read: a JSON list, or text that training splits as it split the champion's; None where the file
        has no such column: unknown)."""
        mapping = self.mapping
        assert mapping.label_column is not None
        return {**{name: _cell(record.get(column)) for name, column in self.texts.items()},
                "label": label_value(record.get(mapping.label_column)),
                "id": _cell(record.get(mapping.id_column)) if mapping.id_column else "",
                FIELDS: {name: record.get(column) if column else None for name, column in self.fields.items()}}


def merge_corrections(export: TicketFile, corrections: list[Correction], training_file: Path, evaluation_file: Path,
                      *, holdout: list[dict[str, Any]], known_labels: set[str], since: str,
                      min_class_count: int) -> MergeReport:
    """Write the training file (export + corrections, holdout tickets out) and the recent corrected
    tickets kept for evaluation; both as JSON Lines with the export's text columns, label, id and field
    columns. A ticket only the feedback holds has its fields unknown (null): it trains the label and
    leaves them out of its loss, where an empty cell would say "no tags"."""
    mapping = export.mapping
    assert mapping.label_column is not None
    text_columns, id_column = list(export.texts), mapping.id_column
    field_columns = list(export.fields)
    holdout_keys = _all_keys(holdout, text_columns)
    latest, report = _latest(corrections)
    holdout = [_as_corrected(row, latest, report) for row in holdout]
    rows: list[dict[str, Any]] = []
    in_export: set[str] = set()
    counted: set[str] = set()  # tickets counted as confirmed or corrected: once, however many rows they have
    for _, record in export.records:
        report.export_rows += 1
        row = export.row(record)
        ticket_id = row["id"]
        correction = latest.get(ticket_id) if ticket_id else None  # every row of the ticket, if it has several
        if ticket_id:
            in_export.add(ticket_id)
        if _keys(row, text_columns) & holdout_keys:  # its corrections too: evaluation only
            report.held_out += 1
            continue
        if correction is not None:
            if ticket_id not in counted:
                counted.add(ticket_id)
                if correction.label == row["label"]:
                    report.confirmed += 1
                else:
                    report.corrected += 1
            row["label"] = correction.label
        rows.append(row)
    for ticket_id in in_export:
        latest.pop(ticket_id, None)
    evaluation: list[dict[str, Any]] = []
    only_feedback = set(latest)  # tickets the export does not hold: their fields are unknown
    for correction in latest.values():
        sent = into_fields(correction.fields or {}, text_columns)  # a corrections file's other columns are not text
        if not any((value or "").strip() for value in sent.values()):
            report.without_text += 1
            continue
        row = {**sent, "label": correction.label, "id": correction.ticket_id,
               FIELDS: dict.fromkeys(field_columns)}
        if _keys(row, text_columns) & holdout_keys:
            continue
        recent = instant(correction.received_at) > instant(since)
        if recent and int(hashlib.sha256(correction.ticket_id.encode()).hexdigest(), 16) % RECENT_HELD_OUT == 0:
            report.evaluated += 1
            evaluation.append(row)
        else:
            report.added += 1
            rows.append(row)
    # In any spelling, as training counts classes: "Billing" in the export is the model's "billing", not a new queue.
    known, spelling = {label_key(label) for label in known_labels}, dict[str, str]()
    for row in rows:
        if not str(row["label"] or "").strip():
            continue  # an export's row without a label: no queue, and training drops it (its data report says so)
        if (key := label_key(row["label"])) not in known:
            label = spelling.setdefault(key, row["label"])
            report.new_labels[label] = report.new_labels.get(label, 0) + 1
    # A new queue with a handful of tickets would stop training (too few to split): left for a later retrain.
    report.too_few = {label: n for label, n in report.new_labels.items() if n < min_class_count}
    too_few = {label_key(label) for label in report.too_few}
    rows = [row for row in rows if label_key(row["label"]) not in too_few]
    for label in report.too_few:
        del report.new_labels[label]
    report.text_columns, report.label_column = text_columns, mapping.label_column
    report.id_column = id_column or "id"
    report.field_columns = field_columns
    report.fields_unknown = sum(row["id"] in only_feedback for row in rows) if field_columns else 0
    names = {"label": report.label_column, "id": report.id_column}
    report.trained = len(rows)
    _write(training_file, text_columns, names, rows)
    _write(evaluation_file, text_columns, names, evaluation + holdout)  # both models are scored on these
    return report


def _as_corrected(row: dict[str, Any], latest: dict[str, Correction], report: MergeReport) -> dict[str, Any]:
    """A holdout ticket with the label an agent set since, where one did: the truth both models are scored
    against (it still never trains)."""
    correction = latest.get(row["id"]) if row["id"] else None
    if correction is None:
        return row
    if correction.label == row["label"]:
        report.holdout_confirmed += 1
        return row
    report.holdout_relabelled += 1
    return {**row, "label": correction.label}


def _latest(corrections: list[Correction]) -> tuple[dict[str, Correction], MergeReport]:
    report = MergeReport()
    by_ticket: dict[str, list[Correction]] = {}
    for correction in sorted(corrections, key=lambda c: instant(c.received_at)):
        by_ticket.setdefault(correction.ticket_id, []).append(correction)
    for ticket_id, history in by_ticket.items():
        labels = list(dict.fromkeys(c.label for c in history))
        if len(labels) > 1:
            report.conflicts.append({"ticket_id": ticket_id, "labels": [c.label for c in history]})
    return {ticket_id: history[-1] for ticket_id, history in by_ticket.items()}, report


@dataclass(frozen=True)
class TrainedOn:
    """The texts of the tickets a model trained on, as its bundle cleans them."""

    texts: set[str]
    text_options: TextOptions

    def has(self, record: dict[str, Any], text_columns: Sequence[str]) -> bool:
        return ticket_text(record, dataclasses.replace(self.text_options, fields=tuple(text_columns))) in self.texts

    def count(self, rows: list[dict[str, Any]], text_columns: Sequence[str]) -> int:
        return sum(self.has(row, text_columns) for row in rows)


def _holdout(repository: ModelRepository, name: str, export_path: Path, given: TicketFile | None,
             columns: Columns, champion_trained: TrainedOn | None, scratch: Path) -> tuple[list[dict[str, Any]], Path]:
    """The holdout's rows, and the file they were read from: the repository's fixed holdout (made from the
    export on the first retrain), or the ``--holdout`` file ``given``, written as CSV in ``scratch`` for
    :func:`_keep_holdout` and read back from there, as later retrains will read it."""
    kept = repository.model_dir(name) / HOLDOUT_FILE
    source = kept
    if given is not None:
        source = scratch / HOLDOUT_FILE
        records = [record for _, record in given.records]
        write_csv(source, flat_columns(records, given.columns), records)
    elif not kept.is_file():
        made = scratch / HOLDOUT_FILE  # then put in place whole: a retrain killed while writing leaves no half
        make_holdout(export_path, made, columns, champion_trained, scratch)
        try:
            os.link(made, kept)  # only if none is there: a retrain started beside this one may have made it
        except FileExistsError:
            pass
    holdout = columns.resolve(source, fields_required=False)
    return [holdout.row(record) for _, record in holdout.records], source


def _refuse_a_holdout_of_every_ticket(export: TicketFile, holdout: TicketFile, given: Path) -> None:
    """``--holdout`` with every ticket of the export (the export itself, say) would leave nothing to train on:
    refused before training, with the reason rather than the trainer's complaint about an empty file."""
    text_columns = list(export.texts)
    held = _all_keys([holdout.row(record) for _, record in holdout.records], text_columns)
    if all(_keys(export.row(record), text_columns) & held for _, record in export.records):
        raise UserError(f"{given}: holds every ticket of the export ({len(export.records)}), which would leave "
                        "nothing to train on; give --holdout labelled tickets the export does not hold")


def _keep_holdout(made: Path, kept: Path, given: Path, tickets: int, columns: Columns) -> None:
    """The ``--holdout`` file (``made``: as CSV) as the repository's fixed holdout, once a challenger was
    trained and scored on it; the same tickets given again change nothing."""
    if kept.is_file() and file_sha256(made) == file_sha256(kept):
        return
    try:
        before = f"; it held {len(columns.resolve(kept, fields_required=False).records)} tickets before" \
            if kept.is_file() else ""
    except UserError:  # one the champion's columns no longer read: what the new file is for
        before = "; the one before could not be read by this model's columns"
    os.replace(made, kept)
    log.info("the fixed holdout of every retrain is now the %d tickets of %s, kept as %s%s", tickets, given,
             kept, before)


def make_holdout(export_path: Path, holdout: Path, columns: Columns, champion_trained: TrainedOn | None,
                 scratch: Path) -> None:
    """A stratified tenth of the export, drawn from the tickets the champion did not train on where they
    are enough for it twice over (the challenger learns from the other half at least): on tickets it has
    learnt, the champion would look better than it is. Otherwise a tenth of the whole export, which the
    retrain's output then warns about. ``scratch``: a directory for the files in between."""
    export = columns.resolve(export_path)
    mapping = export.mapping
    records = [record for _, record in export.records]
    unseen = records if champion_trained is None else \
        [record for record in records if not champion_trained.has(record, mapping.text_columns)]
    source, fraction = export_path, HOLDOUT_FRACTION
    if champion_trained is not None and len(unseen) >= 2 * HOLDOUT_FRACTION * len(records):
        source = scratch / "unseen.csv"
        write_csv(source, flat_columns(unseen, export.columns), unseen)
        fraction = HOLDOUT_FRACTION * len(records) / len(unseen)
    split_file(source, scratch / "rest.csv", holdout, label_column=mapping.label_column,
               text_columns=mapping.text_columns, test_fraction=fraction)
    drawn = "the tickets the champion did not train on" if source != export_path else "all its tickets"
    log.info("the fixed holdout of every retrain: a stratified tenth of %s, drawn from %s", export_path, drawn)


def _all_keys(rows: list[dict[str, Any]], text_columns: list[str]) -> set[str]:
    return {key for row in rows for key in _keys(row, text_columns)}


def _keys(row: dict[str, Any], text_columns: list[str]) -> set[str]:
    """What makes a ticket the same as a holdout ticket: its id, where it has one, or its text (a holdout file
    without ids still holds the export's tickets; a copy of a holdout text would be tested on after training)."""
    text = "text:" + json.dumps([row.get(column, "") for column in text_columns])
    return {f"id:{row['id']}", text} if row.get("id") else {text}


def instant(text: str) -> datetime:
    """An ISO 8601 time as an instant, to order and compare by (``+02:00`` and ``Z`` alike; UTC where it names
    no zone); the earliest for none. ValueError for text that is not one."""
    if not text:
        return datetime.min.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)  # Python 3.10 reads no Z
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _write(path: Path, text_columns: list[str], names: dict[str, str], rows: list[dict[str, Any]]) -> None:
    """Rows as JSON Lines, ``label`` and ``id`` under the export's own names for them."""
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            record = {**{column: row.get(column, "") for column in text_columns}, names["label"]: row["label"],
                      names["id"]: row["id"], **row.get(FIELDS, {})}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def corrections_from_file(path: str | Path) -> list[Correction]:
    """Corrections as ``ticketclf feedback export`` writes them (id, label, text fields, received_at)."""
    numbered, columns = records_and_columns(path)
    from_review_file(numbered, columns)  # its cells as stored, not as escaped for spreadsheets
    mapping = resolve_columns(columns, path)
    text_columns = [c for c in columns if c not in (mapping.id_column, mapping.label_column, "received_at")]
    if mapping.id_column is None or mapping.label_column is None:
        raise UserError(f"{path}: corrections need a ticket id and a label column")
    corrections = [Correction(_cell(record[mapping.id_column]), label_value(record.get(mapping.label_column)),
                              {c: _cell(record.get(c)) for c in text_columns} or None,
                              _cell(record.get("received_at")))
                   for _, record in numbered]
    for (number, _), correction in zip(numbered, corrections):
        try:
            instant(correction.received_at)
        except ValueError:
            raise UserError(f"{path}: row {number}: received_at {correction.received_at!r} is not an ISO 8601 time "
                            "(e.g. 2026-03-03T10:14:00Z); it orders an agent's corrections of one ticket") from None
    return corrections

