"""The ticketclf command line: useful help, JSON output, and one-line errors with exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "classifier.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("command", ["train", "export", "evaluate", "predict", "serve"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: ticketclf {command}" in out and "example" in out


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
    (["predict", "no-bundle", "hello"], "no-bundle: bundle directory not found"),
    (["export", "{tmp}"], "not a model bundle (no manifest.json)"),
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


def test_predict_prints_json_lines(exported_bundle: Path) -> None:
    result = run_cli("predict", str(exported_bundle), "I was charged twice", "Cannot log in", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    assert {"label", "confidence", "needs_review", "truncated", "top_k"} <= set(lines[0])
    assert len(lines[0]["top_k"]) == 2


def test_predict_reads_a_ticket_file(exported_bundle: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    tickets = tmp_path / "new.jsonl"
    tickets.write_text('{"subject": "Refund", "body": "charged twice"}\n{"subject": "Slow", "body": "dashboard"}\n')
    assert main(["predict", str(exported_bundle), "--file", str(tickets)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
