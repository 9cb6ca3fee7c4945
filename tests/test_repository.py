"""The model repository: versions, aliases, rollback, concurrent writers, crashed builds, and its CLI.

Versions are the session's real tiny bundle, hard-linked rather than trained or copied again, so the
tests stay fast; one test trains into a repository through the CLI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from classifier import repository as repository_module
from classifier.bundle import read_manifest
from classifier.cli import main
from classifier.errors import UserError
from classifier.readers import file_sha256
from classifier.repository import (
    ALIASES_FILE,
    HISTORY_FILE,
    INCOMING_DIR,
    Aliases,
    ModelRepository,
    Version,
    is_model_dir,
    open_model,
)

ROOT = Path(__file__).resolve().parent.parent


def linked(bundle: Path) -> Callable[[Path], object]:
    """A build that makes ``bundle`` the new version, by hard links (instant, and a whole real bundle)."""
    return lambda target: shutil.copytree(bundle, target, copy_function=os.link)


@pytest.fixture()
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(tmp_path / "models")


@pytest.fixture()
def three(repo: ModelRepository, tiny_bundle: Path) -> ModelRepository:
    """A repository whose model 'tickets' has versions 1 (champion), 2 and 3 (challenger)."""
    for _ in range(3):
        repo.add_version("tickets", linked(tiny_bundle))
    return repo


def test_the_first_version_serves_and_later_ones_are_challengers(three: ModelRepository) -> None:
    assert [v.number for v in three.versions("tickets")] == [1, 2, 3]
    assert three.aliases("tickets") == {"champion": 1, "challenger": 3}
    state = three.serving_state("tickets")
    assert state.version == 1 and state.path == three.root / "tickets" / "1"
    assert three.resolve("tickets") == state.path and three.resolve("tickets", "challenger") == three.root / "tickets/3"
    assert three.champion("tickets").manifest().labels  # a version is an ordinary bundle
    assert [(e.action, e.version, e.champion_after) for e in three.history("tickets")] == [
        ("add", 1, 1), ("add", 2, 1), ("add", 3, 1)]
    assert is_model_dir(three.root / "tickets") and not is_model_dir(state.path)
    assert not any((three.root / "tickets" / INCOMING_DIR).iterdir())  # builds leave nothing behind


def test_a_bundle_directory_is_copied_in_and_anything_else_refused(repo: ModelRepository, tiny_bundle: Path,
                                                                   tmp_path: Path) -> None:
    version = repo.add_version("tickets", tiny_bundle)
    assert version.number == 1 and (version.path / "model.safetensors").stat().st_ino != \
        (tiny_bundle / "model.safetensors").stat().st_ino
    assert read_manifest(version.path) == read_manifest(tiny_bundle)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model bundle"):
        repo.add_version("tickets", tmp_path / "empty")
    with pytest.raises(UserError, match="the new version is not a bundle"):
        repo.add_version("tickets", lambda target: target.mkdir())
    with pytest.raises(UserError, match="model name '../x'"):
        repo.add_version("../x", tiny_bundle)
    assert [v.number for v in repo.versions("tickets")] == [1]


def test_adding_copies_the_files_and_refuses_what_would_not_serve(tiny_bundle: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    linked_files = tmp_path / "linked"  # a bundle of links to another's files: the version keeps the files
    linked_files.mkdir()
    for path in tiny_bundle.iterdir():
        (linked_files / path.name).symlink_to(path)
    version = ModelRepository(tmp_path / "models").add_version("tickets", linked_files)
    assert not any(path.is_symlink() for path in version.path.iterdir())
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "tokenizer_config.json").write_text("{}")  # as a hand edit leaves it: the service would refuse it
    with pytest.raises(UserError, match=rf"{broken}: not added: {broken / 'tokenizer_config.json'}") as refused:
        ModelRepository(tmp_path / "other").add_version("tickets", broken)
    assert ".incoming" not in str(refused.value)  # the user's file is named, not the scratch copy's
    assert not (tmp_path / "other" / "tickets" / "1").exists()
    (linked_files / "dangling").symlink_to(tmp_path / "nowhere")
    assert main(["models", "add", str(tmp_path / "other" / "tickets"), str(linked_files)]) == 2
    assert capsys.readouterr().err.startswith(f"ticketclf models: error: cannot copy {linked_files / 'dangling'} ")
    assert not (tmp_path / "other" / "tickets" / "1").exists()
    # A bundle's own folder as the model (serve would then serve the repository, not the bundle), or one inside
    # the bundle added (the copy would copy itself), are refused before anything is made.
    inside = tmp_path / "inside"
    shutil.copytree(tiny_bundle, inside)
    for source in (tiny_bundle, lambda target: pytest.fail("trained into a bundle's folder")):  # add, train
        with pytest.raises(UserError, match=f"{inside}: is a model bundle, not a model in a repository"):
            ModelRepository(tmp_path).add_version("inside", source)
    with pytest.raises(UserError, match=f"{inside / 'x'}: is inside the bundle {inside} being added"):
        ModelRepository(inside).add_version("x", inside)
    assert sorted(path.name for path in inside.iterdir()) == sorted(path.name for path in tiny_bundle.iterdir())


def test_rollback_goes_back_through_the_champions_that_served_before(three: ModelRepository) -> None:
    three.promote("tickets", 2, reason="better on the holdout")
    assert three.aliases("tickets") == {"champion": 2, "challenger": 3}
    three.promote("tickets", "challenger")
    assert three.aliases("tickets") == {"champion": 3}  # promoted: no longer a challenger
    with pytest.raises(UserError, match="version 3 already serves"):
        three.promote("tickets", 3)
    event = three.rollback("tickets", reason="complaints from billing")
    assert (event.champion_before, event.champion_after) == (3, 2) and three.serving_state("tickets").version == 2
    assert three.rollback("tickets").champion_after == 1  # a second rollback goes one champion further back
    with pytest.raises(UserError, match="no earlier champion to roll back to"):
        three.rollback("tickets")
    assert three.serving_state("tickets").version == 1
    history = three.history("tickets")
    assert [(e.action, e.champion_before, e.champion_after) for e in history[3:]] == [
        ("promote", 1, 2), ("promote", 2, 3), ("rollback", 3, 2), ("rollback", 2, 1)]
    assert history[3].reason == "better on the holdout" and history[3].user and history[3].host


def test_promoting_an_alias_that_moves_while_its_version_is_checked_is_refused(
        repo: ModelRepository, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(2):
        repo.add_version("tickets", linked(tiny_bundle))
    check = repository_module._require_intact

    def a_retrain_adds_a_challenger_meanwhile(version: Version, *args: str) -> None:
        check(version, *args)
        repo.add_version("tickets", linked(tiny_bundle))  # version 3, not checked, becomes the challenger

    monkeypatch.setattr(repository_module, "_require_intact", a_retrain_adds_a_challenger_meanwhile)
    with pytest.raises(UserError, match="challenger became version 3 while version 2 was checked; promote again"):
        repo.promote("tickets", "challenger")
    assert repo.serving_state("tickets").version == 1


def test_a_version_that_fails_its_check_is_neither_promoted_nor_rolled_back_to(repo: ModelRepository,
                                                                                 tiny_bundle: Path) -> None:
    for _ in range(3):
        repo.add_version("tickets", tiny_bundle)  # copies, not links: one can break alone

    def break_weights(version: int) -> None:
        with open(repo.version("tickets", version).path / "model.safetensors", "r+b") as weights:
            weights.truncate(1_000_000)

    break_weights(2)
    with pytest.raises(UserError, match=r"version 2 is not promoted: .*model\.safetensors.*'ticketclf bundle verify"):
        repo.promote("tickets", 2)
    assert repo.serving_state("tickets").version == 1 and len(repo.history("tickets")) == 3  # the adds only
    manifest_path = repo.version("tickets", 3).path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["integrity"]  # a version from a release before seals: the service loads it, with a warning
    manifest_path.write_text(json.dumps(manifest))
    repo.promote("tickets", 3)
    break_weights(1)
    with pytest.raises(UserError, match="version 1 is not served again: .*; promote another version"):
        repo.rollback("tickets")
    assert repo.serving_state("tickets").version == 3


def test_remove_refuses_the_serving_version_and_never_reuses_a_number(three: ModelRepository,
                                                                     tiny_bundle: Path) -> None:
    with pytest.raises(UserError, match=r"version 1 serves \(champion\); promote another version or roll back"):
        three.remove("tickets", "champion")
    three.promote("tickets", 2)
    three.remove("tickets", 1)  # the champion before: rollback can no longer go there
    three.remove("tickets", 3)
    assert [v.number for v in three.versions("tickets")] == [2] and three.aliases("tickets") == {"champion": 2}
    with pytest.raises(UserError, match="no earlier champion"):
        three.rollback("tickets")
    with pytest.raises(UserError, match="no version 3; versions: 2"):
        three.version("tickets", 3)
    assert three.add_version("tickets", linked(tiny_bundle)).number == 4


def test_a_torn_history_line_is_passed_over_and_the_next_starts_afresh(three: ModelRepository) -> None:
    with open(three.root / "tickets" / HISTORY_FILE, "a", encoding="utf-8") as history:
        history.write('{"time": "2026-')  # a crash in the middle of an append
    three.promote("tickets", 2)
    assert [e.action for e in three.history("tickets")] == ["add", "add", "add", "promote"]


def test_a_failed_or_killed_build_leaves_no_version(repo: ModelRepository, tiny_bundle: Path,
                                                    tmp_path: Path) -> None:
    repo.add_version("tickets", linked(tiny_bundle))

    def fails(target: Path) -> None:
        linked(tiny_bundle)(target)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        repo.add_version("tickets", fails)
    incoming = repo.root / "tickets" / INCOMING_DIR
    assert [v.number for v in repo.versions("tickets")] == [1] and not any(incoming.iterdir())
    # A process killed in the middle of a build (SIGKILL: no cleanup runs).
    started = tmp_path / "started"
    script = ("import os, shutil, sys, time; from pathlib import Path; from classifier.repository import "
              "ModelRepository\n"
              "def build(target):\n"
              "    shutil.copytree(sys.argv[2], target, copy_function=os.link); Path(sys.argv[3]).touch()\n"
              "    time.sleep(120)\n"
              "ModelRepository(sys.argv[1]).add_version('tickets', build)\n")
    builder = subprocess.Popen([sys.executable, "-c", script, str(repo.root), str(tiny_bundle), str(started)],
                               cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline and builder.poll() is None:
            time.sleep(0.05)
        assert started.exists()
        assert len(list(incoming.iterdir())) == 1  # a build in progress: hidden, and not swept away
        repo.add_version("tickets", linked(tiny_bundle))
        assert len(list(incoming.iterdir())) == 1
    finally:
        builder.send_signal(signal.SIGKILL)
        builder.wait()
    assert [v.number for v in repo.versions("tickets")] == [1, 2] and repo.serving_state("tickets").version == 1
    assert repo.add_version("tickets", linked(tiny_bundle)).number == 3
    assert not any(incoming.iterdir())  # the killed build's leftovers swept by the next add


ADDER = """\
import os, shutil, sys
from classifier.repository import ModelRepository
repo = ModelRepository(sys.argv[1])
for _ in range(int(sys.argv[3])):
    repo.add_version("tickets", lambda target: shutil.copytree(sys.argv[2], target, copy_function=os.link))
"""

PROMOTER = """\
import random, sys, time
from classifier.errors import UserError
from classifier.repository import ModelRepository
repo = ModelRepository(sys.argv[1])
deadline = time.monotonic() + 120
while len(repo.versions("tickets")) < 3 and time.monotonic() < deadline:  # promote while the others add
    time.sleep(0.01)
for _ in range(int(sys.argv[2])):
    try:
        repo.promote("tickets", random.choice(repo.versions("tickets")).number)
        repo.rollback("tickets")
    except UserError:  # that version serves already, or was the only one
        pass
"""


def test_an_aliases_file_edited_out_of_shape_names_the_field(three: ModelRepository) -> None:
    aliases = three.root / "tickets" / ALIASES_FILE
    aliases.write_text(json.dumps({**json.loads(aliases.read_text()), "aliases": {"champion": "two"}}))
    with pytest.raises(UserError, match=r"not an aliases file \(aliases.champion: Input should be a valid integer"):
        three.serving_state("tickets")


def test_concurrent_writers_get_distinct_numbers_and_never_corrupt_the_aliases(repo: ModelRepository,
                                                                              tiny_bundle: Path) -> None:
    per_writer = 12
    repo.add_version("tickets", linked(tiny_bundle))
    writers = [subprocess.Popen([sys.executable, "-c", ADDER, str(repo.root), str(tiny_bundle), str(per_writer)],
                                cwd=ROOT) for _ in range(2)]
    writers.append(subprocess.Popen([sys.executable, "-c", PROMOTER, str(repo.root), "30"], cwd=ROOT))
    aliases, reads = repo.root / "tickets" / ALIASES_FILE, 0
    while any(writer.poll() is None for writer in writers):  # read as a server polls: no lock
        state = Aliases.model_validate_json(aliases.read_bytes(), strict=True)
        assert (repo.root / "tickets" / str(state.aliases["champion"]) / "manifest.json").is_file()
        reads += 1
    assert [writer.returncode for writer in writers] == [0, 0, 0] and reads > 0
    assert [v.number for v in repo.versions("tickets")] == list(range(1, 2 * per_writer + 2))
    history = repo.history("tickets")
    assert sorted(e.version for e in history if e.action == "add") == list(range(1, 2 * per_writer + 2))
    assert any(e.action == "promote" for e in history)
    state = Aliases.model_validate_json(aliases.read_bytes(), strict=True)
    assert state.last_version == 2 * per_writer + 1


# ---------------------------------------------------------------- the CLI


def test_models_list_shows_each_version_its_figures_and_which_serves(three: ModelRepository, tiny_bundle: Path,
                                                                      tiny_csv: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from classifier.evaluate import EvaluationOptions, evaluate

    report = evaluate(three.resolve("tickets", 2), tiny_csv, three.root / "tickets/2/reports/evaluation",
                      EvaluationOptions(baseline=False))
    three.promote("tickets", 2)
    assert main(["models", "list", str(three.root / "tickets")]) == 0
    lines = capsys.readouterr().out.splitlines()
    manifest = read_manifest(tiny_bundle)
    assert lines[0].split() == ["VERSION", "CREATED", "(UTC)", "DATA", "SHA256", "ROWS", "VAL", "ACC", "VAL", "F1",
                                "TEST", "ACC", "TEST", "F1", "TEST", "N", "ENGINE", "ALIASES"]
    rows = {line.split()[0].lstrip("*") or line.split()[1]: line for line in lines[1:4]}
    assert rows["2"].startswith("*") and rows["2"].rstrip().endswith("champion")
    assert rows["3"].rstrip().endswith("challenger") and not rows["1"].startswith("*")
    assert manifest.data.train.sha256 == file_sha256(tiny_csv) and manifest.data.train.sha256[:12] in rows["1"]
    assert f"{manifest.served_validation_accuracy:.4f}" in rows["1"]  # what it serves: the blend where it blends
    assert f"{report['metrics']['accuracy']:.4f}" in rows["2"] and rows["1"].count(" - ") == 3
    assert f" {report['metrics']['tickets']} " in rows["2"]
    assert lines[4].startswith(f"* serves: version 2 ({three.root / 'tickets' / '2'})")
    shutil.rmtree(three.root / "tickets" / "2")  # by hand, as the history never would
    assert main(["models", "list", str(three.root / "tickets")]) == 0
    assert "warning: version 2, the champion, is gone from" in capsys.readouterr().err


def test_models_show_promote_rollback_remove_add_and_their_errors(three: ModelRepository, tiny_bundle: Path,
                                                                  capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = str(three.root / "tickets")
    with monkeypatch.context() as inside:  # in the model's folder, '.' names it
        inside.chdir(model)
        assert main(["models", "list", "."]) == 0 and "* serves: version 1" in capsys.readouterr().out
    assert main(["predict", model, "I was charged twice"]) == 2  # a version is what predict reads
    assert f"{model}: is a model in a repository, not a bundle; give one of its versions (e.g. {model}/1" in \
        capsys.readouterr().err
    assert main(["models", "show", model, "challenger", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 3 and shown["aliases"] == ["challenger"] and not shown["serving"]
    assert shown["manifest"]["labels"] == read_manifest(three.resolve("tickets")).labels
    assert main(["models", "show", model, "1"]) == 0
    shown_text = capsys.readouterr().out
    assert shown_text.startswith(f"version 1 of {model} (champion; serves)\n")
    assert re.search(r"\n  base model: .*, model\.safetensors sha256 [0-9a-f]{12}; max length 96\n", shown_text)
    assert re.search(r"\n  out of scope above score [0-9.]+ \(flags 1% of in-scope validation tickets\)\n", shown_text)
    assert main(["models", "show", model]) == 0  # no version: the one that serves
    assert capsys.readouterr().out == shown_text
    assert main(["models", "promote", model, "3", "--reason", "better"]) == 0
    assert capsys.readouterr().out == f"{model}: version 3 serves now (before: version 1)\n"
    assert main(["models", "rollback", model]) == 0
    assert capsys.readouterr().out == f"{model}: rolled back to version 1 (from version 3)\n"
    assert main(["models", "remove", model, "2", "--reason", "trained on the wrong export"]) == 0
    assert capsys.readouterr().out == f"{model}: version 2 removed\n"
    assert three.history("tickets")[-1].reason == "trained on the wrong export"
    assert main(["models", "add", model, str(tiny_bundle)]) == 0
    same = read_manifest(tiny_bundle).bundle_version  # versions 1 and 3 are links to it
    assert capsys.readouterr().out == (f"{tiny_bundle} added as {model}/4; version 4: challenger; 'ticketclf models "
                                       "promote' makes it serve\n"
                                       f"note: versions 1 and 3 hold the same bundle ({same})\n")
    assert main(["models", "history", model]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == [
        "add", "add", "add", "promote", "rollback", "remove", "add"]
    for command, message in [(["remove", model, "1"], "version 1 serves (champion)"),
                             (["rollback", model], "no earlier champion to roll back to"),
                             (["show", model, "7"], "no version 7; versions: 1, 3, 4"),
                             (["promote", model, "best"], "no alias 'best'"),
                             (["list", str(three.root / "nothing")], "not a model in a repository"),
                             (["show", str(tiny_bundle)], "a bundle, not a model in a repository (REPO/NAME); "
                                                          "its summary is its manifest.json, or add it")]:
        assert main(["models", *command]) == 2
        error = capsys.readouterr().err
        assert error.startswith("ticketclf models: error: ") and message in error and error.count("\n") == 1


def test_train_adds_a_version_to_a_repository(tiny_csv: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    repository = tmp_path / "models"
    command = ["train", str(tiny_csv), "--repository", str(repository), "--epochs", "1", "--max-length", "32"]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert f"bundle written to {repository / 'tickets' / '1'}" in out and "version 1: champion (it serves)" in out
    repo, name = open_model(repository / "tickets")
    assert repo.serving_state(name).version == 1 and repo.history(name)[0].reason == "ticketclf train"
    manifest = read_manifest(repo.resolve(name))
    assert manifest.name == "tickets" and manifest.data.train.sha256 == file_sha256(tiny_csv)
    assert sorted(p.name for p in (repository / "tickets").iterdir()) == [
        ".incoming", ".lock", "1", ALIASES_FILE, HISTORY_FILE]
    assert not any((repository / "tickets" / INCOMING_DIR).iterdir())  # no checkpoints or staging left
    assert main([*command, "--resume"]) == 2
    assert "--resume goes with --output" in capsys.readouterr().err
    assert main(["train", str(tiny_csv), "-o", str(tmp_path / "b"), "--name", "x"]) == 2
    assert "--name names a model in a --repository" in capsys.readouterr().err
    for wrong in ([*command, "--output", str(tmp_path / "b")], ["train", str(tiny_csv)]):  # both, or neither
        with pytest.raises(SystemExit) as exit:
            main(wrong)
        assert exit.value.code == 2 and "--output" in capsys.readouterr().err


def test_a_full_disk_ends_in_one_line_and_leaves_no_version(tiny_bundle: Path, tiny_csv: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        model = disk / "models" / "tickets"
        assert main(["models", "add", str(model), str(tiny_bundle)]) == 2
        error = capsys.readouterr().err
        assert error.startswith("ticketclf models: error: cannot copy ") and error.count("\n") == 1
        assert "No space left on device" in error
        assert not [path for path in model.iterdir() if path.name.isdigit()]
        # A library's own error for it (safetensors writing the weights), not a traceback.
        assert main(["train", str(tiny_csv), "--repository", str(disk / "models"), "--epochs", "0.1"]) == 2
        printed = capsys.readouterr().err
        errors = [line[line.index("ticketclf"):] for line in printed.splitlines() if "ticketclf train: error: " in line]
        assert "Traceback (most recent call last)" not in printed and len(errors) == 1  # after a progress bar's end
        assert errors[0].startswith("ticketclf train: error: writing a file failed; is the disk full? (")
        assert not [path for path in model.iterdir() if path.name.isdigit()]
    finally:
        subprocess.run(["umount", str(disk)], check=True)
