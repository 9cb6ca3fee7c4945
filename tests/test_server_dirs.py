"""What a server starting removes of the temporary directories other servers left: only those of servers no
longer running, only what a server makes, only this user's; a mangled owner file is skipped, not a crash."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from service import server_dirs


def _left_by_a_server(temp_dir: Path, name: str, *made: Path) -> Path:
    """A state directory with its owner file (unlocked: its server is gone) naming itself and ``made``."""
    state_dir = temp_dir / f"{server_dirs.STATE_PREFIX}{name}"
    state_dir.mkdir()
    (state_dir / server_dirs.OWNER_FILE).write_text("".join(f"{path}\n" for path in [state_dir, *made]))
    return state_dir


def test_a_dead_servers_directories_go_and_a_running_ones_stay(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    running, owner = server_dirs.make_locked_state_dir()
    metrics = tmp_path / f"{server_dirs.METRICS_PREFIX}dead"
    metrics.mkdir()
    dead = _left_by_a_server(tmp_path, "dead", metrics)
    older = tmp_path / f"{server_dirs.STATE_PREFIX}older"  # no owner file: an older release's
    older.mkdir()
    try:
        assert sorted(server_dirs.remove_abandoned(tmp_path)) == sorted([metrics, dead])
        assert running.is_dir() and older.is_dir() and not metrics.exists() and not dead.exists()
        assert (running / server_dirs.OWNER_FILE).read_text() == f"{running}\n"
    finally:
        os.close(owner)
    assert server_dirs.remove_abandoned(tmp_path) == [running]  # its lock gone with it: a crash


def test_an_owner_file_names_only_what_a_server_makes_here(tmp_path: Path) -> None:
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    elsewhere = tmp_path / f"{server_dirs.METRICS_PREFIX}elsewhere"  # outside the temporary folder
    unrelated = temp_dir / "reports"  # not a server's
    for directory in (elsewhere, unrelated):
        directory.mkdir()
    linked = temp_dir / f"{server_dirs.METRICS_PREFIX}link"  # a link to a directory, not one
    linked.symlink_to(unrelated)
    dead = _left_by_a_server(temp_dir, "dead", elsewhere, unrelated, linked)
    assert server_dirs.remove_abandoned(temp_dir) == [dead]
    assert elsewhere.is_dir() and unrelated.is_dir() and linked.is_symlink()


@pytest.mark.parametrize("mangle", ["directory", "not utf-8", "link"])
def test_a_mangled_owner_file_is_skipped(tmp_path: Path, mangle: str) -> None:
    state_dir = tmp_path / f"{server_dirs.STATE_PREFIX}mangled"
    state_dir.mkdir()
    owner = state_dir / server_dirs.OWNER_FILE
    if mangle == "directory":
        owner.mkdir()
    elif mangle == "not utf-8":
        owner.write_bytes(b"\xff\xfe" + str(state_dir).encode())
    else:
        target = _left_by_a_server(tmp_path, "target")  # a link to a real owner file is not one
        owner.symlink_to(target / server_dirs.OWNER_FILE)
    removed = server_dirs.remove_abandoned(tmp_path)
    assert state_dir not in removed and state_dir.is_dir()


def test_the_lock_is_taken_before_the_owner_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    state_dir, owner = server_dirs.make_locked_state_dir()
    try:
        with open(state_dir / server_dirs.OWNER_FILE) as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert [path.name for path in state_dir.iterdir()] == [server_dirs.OWNER_FILE]
    finally:
        os.close(owner)
