"""The temporary directories a gunicorn master makes for its workers (model state, metrics), and their removal
after a master killed outright (SIGKILL, the OOM killer), which never runs its exit hook.

The state directory holds an owner file naming it and the metrics directory its server made, locked by the
master for as long as it or a worker of it lives (forked workers share the lock). A server starting later
removes what the owner files it can lock name: only this user's, never what a running server holds, and never
through a copy of a state directory (its owner file names another one).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

STATE_PREFIX, METRICS_PREFIX = "ticketclf-state-", "ticketclf-metrics-"
OWNER_FILE = ".owner"
MAX_OWNER_BYTES = 1 << 16  # two paths; anything longer is not an owner file this module wrote


def make_locked_state_dir() -> tuple[Path, int]:
    """A new state directory in the temporary folder, and the descriptor of its owner file, locked. The owner
    file is locked before it takes its name, so that no other server ever sees it unlocked."""
    state_dir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX))
    unnamed = state_dir / f"{OWNER_FILE}.new"
    owner = os.open(unnamed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(owner, fcntl.LOCK_EX)
    record_made(owner, state_dir)  # first, the directory it belongs to: a copy elsewhere is not taken for it
    unnamed.rename(state_dir / OWNER_FILE)
    return state_dir, owner


def record_made(owner: int, directory: Path) -> None:
    """Add ``directory`` to those the locked owner file names, one per line."""
    os.write(owner, os.fsencode(directory) + b"\n")


def remove_abandoned(temp_dir: Path) -> list[Path]:
    """Remove what servers no longer running left in ``temp_dir`` (their owner files unlocked); return it.
    A state directory without an owner file (an older release's, or one killed as it started) is kept."""
    removed = []
    for state_dir in temp_dir.glob(f"{STATE_PREFIX}*"):
        removed += _remove_named(temp_dir, _named(state_dir, held_by_caller=False))
    return removed


def remove_own(state_dir: Path) -> None:
    """At a server's exit: remove what its own owner file (locked by this process) names, as a crashed
    server's would be removed, so that the owner file is the one record of what the server made."""
    _remove_named(state_dir.parent, _named(state_dir, held_by_caller=True))


def _remove_named(temp_dir: Path, named: list[Path]) -> list[Path]:
    """Remove the named state directory (first) and what it made, where each is what it should be: a directory
    of this user's in ``temp_dir`` with a server's prefix."""
    removed = []
    for index, directory in enumerate(named):
        prefix = METRICS_PREFIX if index else STATE_PREFIX
        if directory.parent == temp_dir and directory.name.startswith(prefix) and _own(directory, stat.S_ISDIR):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def _named(state_dir: Path, held_by_caller: bool) -> list[Path]:
    """What ``state_dir``'s owner file names (itself first), if the file is this user's and ``state_dir``'s own,
    and no running server holds it, or (``held_by_caller``) only the server calling, whose lock would refuse
    this new descriptor too; else nothing."""
    try:  # not following a link, and not waiting on a FIFO put there in its place
        owner = os.open(state_dir / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # none, another user's, or removed meanwhile
        return []
    try:
        if not _own(owner, stat.S_ISREG):
            return []
        if not held_by_caller:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its server runs
        content = os.read(owner, MAX_OWNER_BYTES + 1)
    except OSError:
        return []
    finally:
        os.close(owner)
    # Whole lines only: a last line without its newline was cut, and is no name.
    named = [Path(os.fsdecode(line)) for line in content.split(b"\n")[:-1]]
    return named if len(content) <= MAX_OWNER_BYTES and named[:1] == [state_dir] else []


def _own(path_or_descriptor: Path | int, kind: Callable[[int], bool]) -> bool:
    """Whether it exists as ``kind`` (``stat.S_ISDIR``, ``S_ISREG``; a link is neither) and is this user's."""
    try:
        info = os.fstat(path_or_descriptor) if isinstance(path_or_descriptor, int) else \
            os.lstat(path_or_descriptor)
    except (OSError, ValueError):  # ValueError: a name holding a NUL byte
        return False
    return kind(info.st_mode) and info.st_uid == os.geteuid()
