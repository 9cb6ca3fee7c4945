"""What a server starting removes of the temporary directories other servers left: only those of servers no
longer running, only what a server makes, only this user's; a mangled owner file is skipped, not a crash."""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from pathlib import Path

import pytest

from service import server_dirs


def _left_by_a_server(temp_dir: Path, name: str, *made: Path) -> Path:
    """A state directory with its owner file (unlocked: its server is gone) naming itself and ``made``."""
    state_dir = temp_dir / f"{server_dirs.STATE_PREFIX}{name}"
    state_dir.mkdir()
    (state_dir / server_dirs.OWNER_FILE).write_text("".join(f"{path}\n" for path in [state_dir, *made]))
    return state_dir


def _metrics_dir(temp_dir: Path, name: str) -> Path:
    directory = temp_dir / f"{server_dirs.METRICS_PREFIX}{name}"
    directory.mkdir()
    return directory


def test_a_dead_servers_directories_go_and_a_running_ones_stay(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    running, owner = server_dirs.make_locked_state_dir()
    server_dirs.record_made(owner, _metrics_dir(tmp_path, "running"))
    metrics = _metrics_dir(tmp_path, "dead")
    dead = _left_by_a_server(tmp_path, "dead", metrics)
    copy = tmp_path / f"{server_dirs.STATE_PREFIX}copy"  # a running one's copied: its owner file names that one
    shutil.copytree(running, copy)
    older = tmp_path / f"{server_dirs.STATE_PREFIX}older"  # no owner file: an older release's
    older.mkdir()
    try:
        assert sorted(server_dirs.remove_abandoned(tmp_path)) == sorted([metrics, dead])
        assert running.is_dir() and (tmp_path / "ticketclf-metrics-running").is_dir()
        assert copy.is_dir() and older.is_dir()
    finally:
        os.close(owner)
    assert server_dirs.remove_abandoned(tmp_path) == [running, tmp_path / "ticketclf-metrics-running"]


def test_a_server_at_exit_removes_what_its_owner_file_names_while_it_holds_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    state_dir, owner = server_dirs.make_locked_state_dir()
    metrics = _metrics_dir(tmp_path, "own")
    server_dirs.record_made(owner, metrics)
    other = _left_by_a_server(tmp_path, "other", _metrics_dir(tmp_path, "other"))  # not this server's to remove
    try:
        server_dirs.remove_own(state_dir)
        assert not state_dir.exists() and not metrics.exists()
        assert other.is_dir() and (tmp_path / "ticketclf-metrics-other").is_dir()
    finally:
        os.close(owner)


def test_an_owner_file_names_only_what_a_server_makes_here_as_this_user(tmp_path: Path) -> None:
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    elsewhere = _metrics_dir(tmp_path, "elsewhere")  # outside the temporary folder
    unrelated = temp_dir / "reports"  # not a server's
    unrelated.mkdir()
    state_named = temp_dir / f"{server_dirs.STATE_PREFIX}other"  # only the owner file's own state directory
    state_named.mkdir()
    linked = temp_dir / f"{server_dirs.METRICS_PREFIX}link"  # a link to a directory, not one
    linked.symlink_to(unrelated)
    foreign = _metrics_dir(temp_dir, "foreign")
    if os.geteuid() == 0:  # CI runs as root: another user's directory can be made
        os.chown(foreign, 65534, 65534)
    dead = _left_by_a_server(temp_dir, "dead", elsewhere, unrelated, state_named, linked, foreign,
                             Path(f"{temp_dir}/{server_dirs.METRICS_PREFIX}nul\0byte"))
    assert server_dirs.remove_abandoned(temp_dir) == [dead] + ([] if os.geteuid() == 0 else [foreign])
    assert elsewhere.is_dir() and unrelated.is_dir() and state_named.is_dir() and linked.is_symlink()


@pytest.mark.parametrize("mangle", ["directory", "cut short", "too long", "link", "another user's"])
def test_a_mangled_owner_file_is_skipped(tmp_path: Path, mangle: str) -> None:
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    metrics = _metrics_dir(temp_dir, "ab")
    state_dir = _left_by_a_server(temp_dir, "mangled")
    owner = state_dir / server_dirs.OWNER_FILE
    kept = [state_dir]
    if mangle == "directory":
        owner.unlink()
        owner.mkdir()
    elif mangle == "cut short":  # "...-ab", a longer name's start, without its newline: not a name
        owner.write_text(f"{state_dir}\n{metrics}")
        kept = []  # the state directory it names whole is its own
    elif mangle == "too long":
        owner.write_text(f"{state_dir}\n" + f"{metrics}\n" * 5000)
    elif mangle == "link":
        real = _left_by_a_server(tmp_path, "real")  # outside the folder swept: only the link could reach it
        owner.unlink()
        owner.symlink_to(real / server_dirs.OWNER_FILE)
    elif os.geteuid() == 0:
        os.chown(owner, 65534, 65534)
    else:
        pytest.skip("another user's file needs root to make")
    assert server_dirs.remove_abandoned(temp_dir) == ([] if kept else [state_dir])
    assert metrics.is_dir() and all(path.is_dir() for path in kept)


def test_a_fifo_for_an_owner_file_does_not_hang_the_start(tmp_path: Path) -> None:
    state_dir = tmp_path / f"{server_dirs.STATE_PREFIX}fifo"
    state_dir.mkdir()
    os.mkfifo(state_dir / server_dirs.OWNER_FILE)
    sweep = threading.Thread(target=server_dirs.remove_abandoned, args=(tmp_path,), daemon=True)
    sweep.start()
    sweep.join(timeout=10)
    assert not sweep.is_alive() and state_dir.is_dir()


def test_the_owner_file_is_locked_before_it_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    rename, held = Path.rename, []

    def renaming(path: Path, target: Path) -> Path:
        with open(path) as other:  # as another server would open it, once named
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(True)
        return rename(path, target)

    monkeypatch.setattr(Path, "rename", renaming)
    state_dir, owner = server_dirs.make_locked_state_dir()
    os.close(owner)
    assert held == [True] and [path.name for path in state_dir.iterdir()] == [server_dirs.OWNER_FILE]
