"""The ticketclf command line: useful help, JSON output, and one-line errors with exit codes."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from csv_files import cut_cell_file, read_csv

from classifier.bundle import read_manifest
from classifier.cli import build_parser, main
from classifier.data import DataReport, load_tickets, read_tickets_to_classify
from classifier.errors import UserError
from classifier.evaluate import load_test_set
from classifier.predict import Predictor
from classifier.text import TextOptions
from classifier.train import CLOCK_FILE


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "classifier.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_an_interrupted_training_run_resumes_only_with_its_own_settings(tiny_csv: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "model"
    checkpoints = tmp_path / "model.checkpoints"
    command = ["train", str(tiny_csv), "--output", str(output), "--epochs", "3", "--max-length", "32"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # A shell's background job (nohup ... &) inherits SIGINT ignored; the child must see it as Ctrl-C.
    run = subprocess.Popen([sys.executable, "-m", "classifier.cli", *command], stderr=subprocess.PIPE, text=True,
                           env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob(f"checkpoint-*/{CLOCK_FILE}")) and time.monotonic() < deadline:
        time.sleep(0.2)  # until the first epoch's checkpoint is written (its training time comes last)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=120) == 130
    stderr = run.stderr.read()
    assert f"the run's checkpoints are in {checkpoints}; run the same command with --resume" in stderr

    # Forgetting --resume neither mixes the runs nor deletes the checkpoints (both refused before any training:
    # in this process, a Python start cheaper).
    assert main(command) == 2 and "holds checkpoints of an interrupted run: pass --resume" in capsys.readouterr().err
    assert main([*command[:-4], "--epochs", "1", "--max-length", "32", "--resume"]) == 2
    assert "made with other data or options (training.epochs 3.0 -> 1.0)" in capsys.readouterr().err
    before = json.loads(next(checkpoints.glob(f"checkpoint-*/{CLOCK_FILE}")).read_text())["seconds"]
    resumed = run_cli(*command, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    # Trainer's time and mean loss cover the resumed steps; the bundle's training time, both runs.
    done = re.search(r"training done in (\d+) s after resuming at step (\d+), mean training loss [\d.]+ over steps "
                     r"(\d+) to \d+", resumed.stderr)
    assert done and int(done[3]) == int(done[2]) + 1, resumed.stderr
    assert read_manifest(output).training.train_seconds >= before + int(done[1]) - 0.5 > 0
    # Each epoch's figures as a line on stderr; stdout holds the summary alone (no Trainer dicts).
    assert "epoch 3 validation: loss " in resumed.stderr and "{'" not in resumed.stdout
    assert "\x1b[A" not in resumed.stderr  # no nested bar's cursor moves in a log file
    assert read_manifest(output).training.options.epochs == 3.0 and not checkpoints.exists()


@pytest.mark.parametrize("command", ["split", "train", "export", "evaluate", "predict", "serve", "models list",
                                     "models add", "bundle verify", "feedback stats", "review-labels", "retrain"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: ticketclf {command}" in out and "example" in out
    assert "(default: {})" not in out and "(default: 1 each) (default" not in out  # a default said once


@pytest.mark.parametrize(("options", "message"), [
    (["--lora-rank", "8"], "--lora-rank goes with --lora"),  # would train all weights, no adapters
    (["--field-weights", "priority=2"], "--field-weights: 'priority' is not a field of this training"),
    (["--validation-fraction", "0.2", "--validation", "VALIDATION"], "give one of them"),
])
def test_train_options_that_would_do_nothing_are_refused(options: list[str], message: str, tiny_csv: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    options = [str(tiny_csv) if option == "VALIDATION" else option for option in options]
    assert main(["train", str(tiny_csv), "--output", str(tmp_path / "model"), *options]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "model").exists()


def test_train_on_a_malformed_file_fails_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "export.csv"
    bad.write_bytes(b"subject,body,category\nLogin,cannot sign in,login_access,extra\n")
    result = run_cli("train", str(bad), "--output", str(tmp_path / "model"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ticketclf train: error: {bad}, row 2: 4 fields but the header has 3; "
        "is a text field missing its quotes?"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "missing.csv", "-o", "m"], "missing.csv: file not found"),
    (["train", "{csv}", "-o", "m", "--label-column", "queue"], "label column 'queue' not found"),
    (["train", "{csv}", "-o", "m", "--text-columns", "title"], "text column 'title' not found"),
    (["train", "{csv}", "-o", "m", "--epochs", "0"], "--epochs must be positive"),
    (["train", "{csv}", "-o", "m", "--lora", "--lora-rank", "0"], "--lora-rank must be positive"),
    (["train", "{csv}", "-o", "m", "--patience", "0"], "--patience must be positive"),
    (["train", "{csv}", "-o", "m", "--min-class-count", "-1"], "--min-class-count must be positive"),
    (["predict", "no-bundle", "hello"], "no-bundle: bundle directory not found"),
    (["export", "{tmp}"], "not a model bundle (no manifest.json)"),
    (["evaluate", "{csv}", "--data", "{csv}", "--output", "r"], "is a file; a model bundle is a directory"),
])
def test_user_errors_are_one_line_with_exit_code_2(args: list[str], message: str, sample_csv: Path,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = [a.format(csv=sample_csv, tmp=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_serve_without_a_bundle_argument_uses_ticketclf_bundle(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The Docker image runs `ticketclf serve` with the bundle given only by TICKETCLF_BUNDLE."""
    missing = tmp_path / "mounted-model"
    monkeypatch.setenv("TICKETCLF_BUNDLE", str(missing))
    assert main(["serve"]) == 2
    assert f"{missing}: bundle directory not found" in capsys.readouterr().err
    monkeypatch.delenv("TICKETCLF_BUNDLE")
    assert main(["serve"]) == 2
    assert "give a bundle directory or set TICKETCLF_BUNDLE" in capsys.readouterr().err


def test_a_column_name_with_a_comma_is_given_in_double_quotes() -> None:
    args = build_parser().parse_args(["train", "jira.csv", "--output", "out",
                                      "--label-column", '"Custom field (Team, Queue)", priority'])
    assert args.label_column == ("Custom field (Team, Queue)", "priority")
    split = build_parser().parse_args(["split", "jira.csv", "--output-train", "a.csv", "--output-test", "b.csv",
                                       "--label-column", '"Custom field (Team, Queue)"'])
    assert split.label_column == "Custom field (Team, Queue)"  # one name: quoted or not, as the lists take it


def test_predict_of_one_empty_argument_names_no_others(exported_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(exported_bundle), "<p> </p>"]) == 2
    assert capsys.readouterr().err.endswith("error: argument 1 had no text after cleaning\n")


@pytest.mark.parametrize("csv_output", [False, True])
def test_predict_file_says_truncated_where_a_cell_was_cut(exported_bundle: Path, tmp_path: Path, csv_output: bool,
                                                          capsys: pytest.CaptureFixture) -> None:
    tickets = cut_cell_file(tmp_path / "tickets.csv")
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(exported_bundle), "--file", str(tickets),
                 *(["--csv", str(out)] if csv_output else [])]) == 0
    if csv_output:
        assert [row["truncated"] for row in read_csv(out)] == ["no", "yes"]  # comma-separated, as the input
    else:
        assert [json.loads(line)["truncated"] for line in capsys.readouterr().out.splitlines()] == [False, True]


def test_predict_prints_json_lines(exported_bundle: Path) -> None:
    # Options may come between the bundle and the texts, and between texts.
    result = run_cli("predict", str(exported_bundle), "--top-k", "2", "I was charged twice", "<p> </p>",
                     "--engine", "auto", "Cannot log in")
    assert result.returncode == 2, result.stderr  # an argument with no text is a mistake; the others answered
    assert "ticketclf predict: error: argument 2 had no text after cleaning (the others are answered)" in result.stderr
    lines = check_one_empty_ticket(result.stdout, result.stderr, ["1", "2", "3"], "2")  # numbered from 1
    assert {"label", "confidence", "needs_review", "truncated", "top_k"} <= set(lines[0])
    assert len(lines[0]["top_k"]) == 2


def check_one_empty_ticket(out: str, err: str, ids: list[str], empty: str) -> list[dict]:
    """Every ticket has its line, in order: the empty one an error line (and a warning), the others a label."""
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["id"] for line in lines] == ids
    for line in lines:
        assert line == {"id": empty, "error": "no text after cleaning"} if line["id"] == empty else "label" in line
    assert f"1 of {len(ids)} tickets have no text after cleaning (ids {empty})" in err
    return lines


def test_predict_reads_a_ticket_file(exported_bundle: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    tickets = tmp_path / "new.jsonl"
    tickets.write_text('{"subject": "Refund", "body": "charged twice"}\n{"subject": "Slow", "body": "dashboard"}\n')
    assert main(["predict", str(exported_bundle), "--file", str(tickets)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.parametrize("chunk", [1024, 2])  # 2: predicted in two pieces, the empty ticket at a piece's end
def test_predict_file_keeps_every_row_in_order_with_its_id(exported_bundle: Path, tmp_path: Path, chunk: int,
                                                           capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.setattr("classifier.cli.PREDICT_CHUNK", chunk)
    tickets = tmp_path / "new.jsonl"
    tickets.write_text('{"id": "T-1", "text": "I was charged twice"}\n'  # "text" alone, as the service takes
                       '{"id": "T-2", "text": "> only a quoted reply"}\n'  # nothing left after cleaning
                       '{"id": "T-3", "text": "cannot log in"}\n')
    assert main(["predict", str(exported_bundle), "--file", str(tickets)]) == 0
    captured = capsys.readouterr()
    lines = check_one_empty_ticket(captured.out, captured.err, ["T-1", "T-2", "T-3"], "T-2")
    expected = Predictor.load(exported_bundle).predict(["I was charged twice", "cannot log in"])
    assert [{k: v for k, v in line.items() if k != "id"} for line in (lines[0], lines[2])] == \
        [prediction.to_dict() for prediction in expected]  # each row's own prediction, whatever the pieces


def test_an_id_on_two_different_tickets_is_warned_at_predict_and_at_training(
        exported_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tickets = tmp_path / "new.csv"  # a helpdesk export merged twice: 11089 is two tickets, 7 one ticket twice
    tickets.write_text("id,subject,body,category\n11089,Login,cannot log in,login\n7,Refund,refund it,billing\n"
                       "11089,Invoice,where is my invoice,billing\n7,Refund,refund it,billing\n"
                       ",Row six,a blank id: its row number is ticket 6's id below,login\n6,Six,slow,billing\n")
    assert main(["predict", str(exported_bundle), "--file", str(tickets)]) == 0
    assert "warning: 1 id is on more than one ticket, each of another text (11089): match the predictions to " \
        "tickets by their order" in capsys.readouterr().err
    report = DataReport()
    load_tickets(tickets, label_column="category", report=report)
    assert report.files[str(tickets)]["repeated_ids"] == ["11089"]
    assert any(f"{tickets}: 1 id is on more than one ticket, each of another text (11089): reviews" in line
               for line in report.summary_lines())


def test_a_row_with_a_blank_id_gets_id_null_not_a_row_number_another_ticket_may_have(
        exported_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tickets = tmp_path / "new.csv"  # row 3's number is the next row's id: a write-back by id would hit ticket 3
    tickets.write_text("id,subject,body\n1,Login,cannot log in\n,Invoice,where is my invoice\n3,Refund,refund it\n")
    assert main(["predict", str(exported_bundle), "--file", str(tickets)]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["id"] for line in captured.out.splitlines()] == ["1", None, "3"]
    assert "warning: 1 of 3 rows have no value in the id column; their predictions have no id" in captured.err
    # Without an id column, row numbers are the ids: no ticket has another.
    tickets.write_text("subject,body\nLogin,cannot log in\nRefund,refund it\n")
    assert main(["predict", str(exported_bundle), "--file", str(tickets)]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ["2", "3"]


def test_predict_writes_a_csv_for_spreadsheets_as_its_input_file_is_separated(
        exported_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tickets, out = tmp_path / "tickets.csv", tmp_path / "classified.csv"
    # A German Excel's export: a byte-order mark, semicolons, Salesforce's id column; one ticket empty.
    tickets.write_text("\ufeffCase Number;Subject;Body\nCS-1;Refund;I was charged twice\nCS-2;;> only a quote\n"
                       "CS-3;=cmd;cannot log in\n", encoding="utf-8")
    assert main(["predict", str(exported_bundle), "--file", str(tickets), "--top-k", "2", "--csv", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"2 of 3 tickets classified; written to {out}" in captured.err
    assert out.read_bytes().startswith(b"\xef\xbb\xbfid;text;predicted_label;confidence;needs_review;review_reason;"
                                       b"out_of_scope_score;truncated;label_2;confidence_2;error\r\n")
    rows = read_csv(out, delimiter=";")
    assert [row["id"] for row in rows] == ["CS-1", "CS-2", "CS-3"]
    assert rows[1]["error"] == "no text after cleaning" and rows[1]["predicted_label"] == ""
    assert rows[2]["text"].startswith("'=cmd")  # customer text never runs as a formula
    expected = Predictor.load(exported_bundle).predict(["Refund\n\nI was charged twice"], top_k=2)[0]
    first = rows[0]
    assert (first["predicted_label"], first["confidence"], first["label_2"], first["needs_review"], first["error"]) \
        == (expected.label, f"{expected.confidence:.6f}".replace(".", ","), expected.top_k[1]["label"],
            "yes" if expected.needs_review else "no", "")
    written = out.read_bytes()  # a file there, maybe the user's own: replaced only with --overwrite
    assert main(["predict", str(exported_bundle), "--file", str(tickets), "--csv", str(out)]) == 2
    assert f"{out} exists; choose another file name, or pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == written
    assert main(["predict", str(exported_bundle), "--file", str(tickets), "--csv", str(out), "--overwrite"]) == 0
    assert main(["predict", str(exported_bundle), "I was charged twice", "--overwrite"]) == 2
    assert "--overwrite goes with --csv, or with --input and --output" in capsys.readouterr().err
    before = tickets.read_bytes()
    assert main(["predict", str(exported_bundle), "--file", str(tickets), "--csv", str(tickets)]) == 2
    assert "is the input file; write the predictions to another file" in capsys.readouterr().err
    assert tickets.read_bytes() == before and sorted(path.name for path in tmp_path.iterdir()) == \
        ["classified.csv", "tickets.csv"]  # nothing half-written left behind


def test_predict_csv_has_each_fields_label_and_the_tags(fields_bundle: Path, fields_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "classified.csv"
    assert main(["predict", str(fields_bundle), "--file", str(fields_csv), "--top-k", "1", "--csv", str(out)]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["id", "text", "predicted_label", "confidence", "needs_review", "review_reason",
                             "out_of_scope_score", "truncated", "predicted_priority", "priority_confidence",
                             "priority_needs_review", "predicted_tags", "error"]
    assert [row["id"] for row in rows] == [row["id"] for row in read_csv(fields_csv)]
    expected = Predictor.load(fields_bundle).predict([row["text"] for row in rows[:5]], top_k=1, cleaned=True)
    for row, prediction in zip(rows, expected):
        priority = (prediction.fields or {})["priority"]
        assert (row["predicted_label"], row["predicted_priority"], float(row["priority_confidence"]),
                row["predicted_tags"]) == \
            (prediction.label, priority["label"], priority["confidence"],
             "; ".join(tag["tag"] for tag in prediction.tags or []))


def test_evaluate_reads_ids_from_the_named_column(exported_bundle: Path, tmp_path: Path) -> None:
    tickets = tmp_path / "test.csv"
    tickets.write_text("Ref,id,subject,body,category\nA-7,1,Refund,I was charged twice,billing\n")
    manifest = read_manifest(exported_bundle)
    assert load_test_set(tickets, manifest, None, id_column="REF")[0].ids == ["A-7"]
    assert load_test_set(tickets, manifest, None)[0].ids == ["1"]


def test_predict_reads_ids_from_the_named_column(exported_bundle: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    tickets = tmp_path / "tickets.csv"
    tickets.write_text("Ref,subject,body\nA-7,Refund,I was charged twice\nA-8,Login,cannot log in\n")
    assert main(["predict", str(exported_bundle), "--file", str(tickets), "--id-column", "ref"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ["A-7", "A-8"]
    assert main(["predict", str(exported_bundle), "--file", str(tickets), "--id-column", "ticket"]) == 2
    assert "id column 'ticket' not found; columns are ['Ref', 'subject', 'body']" in capsys.readouterr().err
    assert main(["predict", str(exported_bundle), "hello", "--id-column", "ref"]) == 2
    assert "--id-column names the columns of a --file" in capsys.readouterr().err


def test_predict_reads_tickets_piped_to_standard_input(exported_bundle: Path) -> None:
    piped = '{"id": "T-1", "text": "I was charged twice"}\n{"id": "T-2", "text": "cannot log in"}\n'
    result = subprocess.run([sys.executable, "-m", "classifier.cli", "predict", str(exported_bundle), "--file", "-"],
                            input=piped, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["T-1", "T-2"]


@pytest.mark.parametrize("piped", [
    b'id,text\nT-1,"charged twice, again"\nT-2,cannot log in\n',
    b"id\ttext\nT-1\tcharged twice, again\nT-2\tcannot log in\n",
    b'{"id": "T-1", "text": "charged twice, again"}\n{"id": "T-2", "text": "cannot log in"}',
    b'[{"id": "T-1", "text": "charged twice, again"}, {"id": "T-2", "text": "cannot log in"}]',
    gzip.compress(b'{"tickets": [{"id": "T-1", "text": "charged twice, again"}, '
                  b'{"id": "T-2", "text": "cannot log in"}], "count": 2}'),
    b'{"tickets": [{"id": "T-1", "text": "charged twice, again"}, {"id": "T-2", "text": "cannot log in"}], '
    b'"users": [{"id": 5, "name": "Sam"}], "next_page": "https://example.zendesk.com/api/v2/tickets?page=2"}',
    b'{"results": [{"id": "T-1", "text": "charged twice, again"}, {"id": "T-2", "text": "cannot log in"}]}',
    b"text\tid\tsubject, short\ncharged twice, again\tT-1\t\ncannot log in\tT-2\t\n",
    b'{"data": [{"id": "T-1", "text": "charged twice, again"}, {"id": "T-2", "text": "cannot log in"}], '
    b'"meta": {"page": 1}}',
], ids=["csv", "tsv", "jsonl", "json", "wrapped-gzip", "wrapped-with-sideloads", "results", "tsv-comma-in-header",
        "wrapped-under-another-key"])
def test_standard_input_is_read_in_the_format_its_content_has(piped: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(piped)))
    assert read_tickets_to_classify("-", TextOptions()) == [("T-1", "charged twice, again"), ("T-2", "cannot log in")]


@pytest.mark.parametrize("extra", [
    {"custom_fields": [{"id": 360001, "value": "billing", "name": "Queue"}]},
    {"comments": [{"text": "Thanks, we are looking into it"}, {"text": "where is my refund"}]},
    {"items": [{"sku": "A-1", "name": "phone case"}]},
], ids=["custom-fields", "comments", "order-items"])
def test_one_ticket_holding_lists_of_objects_is_one_ticket(extra: dict, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ticket = json.dumps({"id": 9, "text": "refund please", **extra}, indent=2)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(ticket.encode())))
    assert read_tickets_to_classify("-", TextOptions()) == [("9", "refund please")]
    (tmp_path / "one.json").write_text(ticket)  # a file with the same content reads the same
    assert read_tickets_to_classify(tmp_path / "one.json", TextOptions()) == [("9", "refund please")]


def test_a_single_text_column_is_read_whole_lines_commas_and_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("text\nI was charged twice, please refund\n"))
    assert read_tickets_to_classify("-", TextOptions()) == [("2", "I was charged twice, please refund")]


@pytest.mark.parametrize(("piped", "message"), [
    ('{"tickets": []}', "<stdin>: no tickets in file"),
    ('{\n  "id": "T-1",\n  "text": "card declined"\n}\n{\n  "id": "T-2",\n  "text": "refund"\n}\n',
     "<stdin>, row 5: invalid JSON (Extra data); several JSON values one after another? JSON Lines takes one "
     "object per line (jq -c)"),
    ('{\n  "id": "T-1",\n  "text": "card declined",\n}\n',
     "<stdin>, row 4: invalid JSON (Expecting property name enclosed in double quotes)"),
    ('{"id": "T-1", "text": card declined}\n', "<stdin>, row 1: invalid JSON (Expecting value at column 23)"),
], ids=["empty-wrapper", "pretty-printed-stream", "trailing-comma", "one-line"])
def test_piped_json_errors_say_where_it_went_wrong(piped: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(piped))
    with pytest.raises(UserError) as error:
        read_tickets_to_classify("-", TextOptions())
    assert str(error.value) == message


def test_standard_input_from_a_terminal_is_refused_not_waited_on(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(io.BytesIO(b"")))
    with pytest.raises(UserError, match="standard input is a terminal; pipe the file in"):
        read_tickets_to_classify("-", TextOptions())


def test_predict_file_without_the_models_columns_names_them(exported_bundle: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    tickets = tmp_path / "new.csv"
    tickets.write_text("id,title\n1,Refund please\n")
    assert main(["predict", str(exported_bundle), "--file", str(tickets)]) == 2
    assert capsys.readouterr().err.strip() == (f"ticketclf predict: error: {tickets}: text column 'subject' not "
                                               "found; columns are ['id', 'title']; check the names, name the "
                                               "file's text columns with --text-columns, or add that column, empty, "
                                               "to classify without it")


def test_predict_reads_a_file_with_its_own_column_names(exported_bundle: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    own, renamed = tmp_path / "own.csv", tmp_path / "renamed.csv"
    own.write_text("id,subject,body\n1,Refund please,I was charged twice\n2,Slow,the dashboard takes ages\n")
    renamed.write_text("id,title,description\n1,Refund please,I was charged twice\n2,Slow,the dashboard takes ages\n")
    assert main(["predict", str(exported_bundle), "--file", str(own)]) == 0
    expected = capsys.readouterr().out
    assert main(["predict", str(exported_bundle), "--file", str(renamed), "--text-columns", "title,description"]) == 0
    assert capsys.readouterr().out == expected
    arguments = ["predict", str(exported_bundle), "--file", str(renamed), "--text-columns", "id,title,description"]
    assert main(arguments) == 2
    assert ("--text-columns: the model reads 2 text fields (subject, body); give 2 columns in that order, or one "
            "with the whole ticket; got 3") in capsys.readouterr().err
    assert main(["predict", str(exported_bundle), "hello", "--text-columns", "title"]) == 2
    assert "--text-columns names the columns of a --file" in capsys.readouterr().err
    # A misspelt name is an error even where a 'text' column could stand in for the model's fields.
    with_text = tmp_path / "with_text.csv"
    with_text.write_text("id,text,message\n1,see message,I was charged twice\n")
    assert main(["predict", str(exported_bundle), "--file", str(with_text), "--text-columns", "mesage"]) == 2
    assert "text column 'mesage' not found" in capsys.readouterr().err


def test_predict_refuses_top_k_over_the_label_count(exported_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    labels = len(json.loads((exported_bundle / "manifest.json").read_text())["labels"])
    assert main(["predict", str(exported_bundle), "hello", "--top-k", str(labels + 1)]) == 2
    assert f"--top-k must be between 1 and {labels}" in capsys.readouterr().err


def test_predict_refuses_texts_and_a_file_together(exported_bundle: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    tickets = tmp_path / "new.csv"  # no id column: rows are numbered 2, 3, ... as a spreadsheet shows them
    tickets.write_text("subject,body\nRefund,charged twice\n")
    assert main(["predict", str(exported_bundle), "one", "two", "--file", str(tickets)]) == 2
    assert "give ticket texts as arguments or a --file, not both" in capsys.readouterr().err


def test_predict_with_a_model_giving_nan_fails_with_one_line_not_invalid_json(
        bundle_copy: Path, poison_word, capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch) -> None:
    poison_word(bundle_copy, "please")
    assert main(["predict", str(bundle_copy), "--engine", "fp32", "my card is blocked", "a refund please"]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""  # no prediction with a NaN confidence ("NaN" is not JSON)
    assert "error: the model gave scores that are not numbers (NaN or infinity) for ticket 2;" in captured.err
    # In a later piece of a file, after an empty row: the ticket is named by its own id.
    monkeypatch.setattr("classifier.cli.PREDICT_CHUNK", 2)
    tickets = tmp_path / "new.csv"
    tickets.write_text("id,text\nT-1,my card is blocked\nT-2,> only a quoted reply\nT-3,my card\nT-4,a refund please\n")
    assert main(["predict", str(bundle_copy), "--engine", "fp32", "--file", str(tickets)]) == 3
    captured = capsys.readouterr()
    assert [json.loads(line)["id"] for line in captured.out.splitlines()] == ["T-1", "T-2"]  # the first piece
    assert "for ticket T-4;" in captured.err


def test_predict_stops_quietly_when_its_reader_leaves(exported_bundle: Path, tmp_path: Path) -> None:
    tickets = tmp_path / "many.jsonl"
    tickets.write_text("".join(json.dumps({"text": f"charged twice {i}"}) + "\n" for i in range(1500)))
    command = [sys.executable, "-m", "classifier.cli", "predict", str(exported_bundle), "--file", str(tickets)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")) as process:
        assert process.stdout is not None and process.stderr is not None
        assert json.loads(process.stdout.readline())["label"]  # like `| head -1`
        process.stdout.close()
        assert process.wait(timeout=120) == 141
        assert process.stderr.read() == b""


def test_any_command_stops_quietly_when_its_reader_is_gone(tmp_path: Path) -> None:
    export = tmp_path / "export.csv"
    export.write_text("text,category\n" + "".join(f"ticket {i},{'ab'[i % 2]}\n" for i in range(10)))
    reader, writer = os.pipe()
    os.close(reader)  # like `| head` that has already left: the summary's first write fails
    split = subprocess.run([sys.executable, "-m", "classifier.cli", "split", str(export), "--output-train",
                            str(tmp_path / "train.csv"), "--output-test", str(tmp_path / "test.csv")],
                           stdout=writer, stderr=subprocess.PIPE, check=False)
    os.close(writer)
    assert (split.returncode, split.stderr) == (141, b"")


def test_split_writes_a_training_and_a_test_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    export = tmp_path / "export.csv"
    export.write_text("text,category\n" + "".join(f"ticket {i},{'ab'[i % 2]}\n" for i in range(10)) + "no queue,\n")
    train, test = tmp_path / "out" / "train.csv", tmp_path / "out" / "test.csv"
    assert main(["split", str(export), "--output-train", str(train), "--output-test", str(test)]) == 0
    assert capsys.readouterr().out == (f"9 training and 2 test tickets from {export} (text from text; labels from "
                                       "column 'category')\n  1 row without a label went to the training file: "
                                       "training leaves such rows out and lists them; 'ticketclf review-labels' "
                                       "suggests a label\n")
    assert len(train.read_text().splitlines()) == 10 and len(test.read_text().splitlines()) == 3
    # Files already there are not replaced without --overwrite: one may be the user's own.
    written = test.read_bytes()
    assert main(["split", str(export), "--output-train", str(tmp_path / "new.csv"), "--output-test", str(test),
                 "--seed", "1"]) == 2
    assert f"{test} exists; choose another file name, or pass --overwrite to replace it" in capsys.readouterr().err
    assert test.read_bytes() == written and not (tmp_path / "new.csv").exists()
    # An output that cannot be written (its folder is a file): one line naming it, not a traceback.
    code = main(["split", str(export), "--output-train", str(export / "train.csv"), "--output-test", str(test),
                 "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ticketclf split: error: ") and f"'{export}'" in err
    assert err.count("\n") == 1


def test_split_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    export = tmp_path / "export.csv"
    export.write_text("text,category\nhello,a\nbye,b\n")
    listed = tmp_path / "listed.jsonl"
    listed.write_text('{"text": ["charged", "twice"], "category": "billing"}\n')

    def split(data: Path, *args: str | Path) -> tuple[int, str]:
        code = main(["split", str(data), "--output-train", str(tmp_path / "train.csv"),
                     "--output-test", str(tmp_path / "test.csv"), *map(str, args)])
        return code, capsys.readouterr().err

    for args, message in ((("--label-column", "queue"), "label column 'queue' not found"),
                          (("--test-fraction", "1.5"), "--test-fraction must be between 0 and 1"),
                          (("--output-train", export), "must be three different files"),
                          (("--output-train", tmp_path / "test.csv"), "must be three different files"),
                          ((), "no class has two tickets")):
        code, err = split(export, *args)
        assert code == 2 and message in err
        assert err.count("\n") == 1 and "Traceback" not in err
    for data, message in ((tmp_path / "missing.csv", "file not found"),
                          (listed, "listed.jsonl, row 1, column 'text': holds a JSON list")):
        code, err = split(data)
        assert code == 2 and message in err


@pytest.mark.parametrize("command", [["split", "--output-test", "test.csv", "--output-train"],
                                     ["review-labels", "--output"], ["feedback", "export", "--output"],
                                     ["predict", "runs/model", "--file", "new.csv", "--csv"]])
def test_a_file_written_as_csv_under_another_name_is_refused(command: list[str], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """Written as CSV, read back by its name: "review.json" would be a CSV no command reads, and `train`, told
    to read it by the command's own last line, would fail on it."""
    export = tmp_path / "export.csv"
    export.write_text("text,category\nhello,a\nbye,b\n")
    data = [str(export)] if command[0] in ("split", "review-labels") else []
    with pytest.raises(SystemExit) as stopped:
        main([*command[:-1], *data, command[-1], str(tmp_path / "review.json")])
    assert stopped.value.code == 2
    assert "review.json: the file is written as CSV; name it .csv (or .tsv for tabs)" in capsys.readouterr().err
    assert not (tmp_path / "review.json").exists()


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
@pytest.mark.parametrize("hostile", ["deep.json", "deep.jsonl", "bomb.csv.gz"])
def test_hostile_files_end_in_one_line_and_exit_code_2(command: str, hostile: str, exported_bundle: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Nested 100,000 deep (a RecursionError traceback before), or a gzip file inflating past the size limit
    (read whole into memory before: 6.7 GB for a 1 GB bomb): one line, exit code 2, in every command."""
    monkeypatch.setattr("classifier.readers.MAX_FILE_BYTES", 2**20)  # the bomb: 16 MiB, over a 1 MiB limit
    path = tmp_path / hostile
    if hostile == "bomb.csv.gz":
        path.write_bytes(gzip.compress(b"text,label\n" + b"charged twice,billing\n" * (16 * 2**20 // 22)))
    else:
        path.write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": "billing"}\n')
    args = {"train": ["train", str(path), "--output", str(tmp_path / "model")],
            "evaluate": ["evaluate", str(exported_bundle), "--data", str(path), "--output", str(tmp_path / "report")],
            "predict": ["predict", str(exported_bundle), "--file", str(path)]}[command]
    assert main(args) == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith(f"ticketclf {command}: error: {path}")
    assert ("inflates to more than 1 MiB" if hostile == "bomb.csv.gz" else "JSON nested more than 100 levels") in line
    assert captured.out == "" and not (tmp_path / "model").exists() and not (tmp_path / "report").exists()
