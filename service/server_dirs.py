"""The temporary directories a gunicorn master makes for its workers (model state, metrics), and their removal
after a master killed outright (SIGKILL, the OOM killer), which never runs its exit hook.

The state directory holds an owner file naming every directory its server made, locked by the master for as
long as it or a worker of it lives (forked workers share the lock). A server starting later removes the
directories of owner files it can lock: never a running server's, nor anything another user made.
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


def make_locked_state_dir() -> tuple[Path, int]:
    """A new state directory in the temporary folder, and the descriptor of its owner file, locked. The owner
    file is locked before it takes its name, so that no other server ever sees it unlocked."""
    state_dir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX))
    unnamed = state_dir / f"{OWNER_FILE}.new"
    owner = os.open(unnamed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(owner, fcntl.LOCK_EX)
    record_made(owner, state_dir)
    unnamed.rename(state_dir / OWNER_FILE)
    return state_dir, owner


def record_made(owner: int, directory: Path) -> None:
    """Add ``directory`` to those the locked owner file names."""
    os.write(owner, f"{directory}\n".encode())


def remove_abandoned(temp_dir: Path) -> list[Path]:
    """Remove what servers no longer running left in ``temp_dir`` (their owner files unlocked); return it.
    A state directory without an owner file (an older release's, or one killed as it started) is kept."""
    removed = []
    for state_dir in temp_dir.glob(f"{STATE_PREFIX}*"):
        for directory in _abandoned(state_dir):
            if directory.parent == temp_dir and directory.name.startswith((STATE_PREFIX, METRICS_PREFIX)) \
                    and _ours(directory, stat.S_ISDIR):
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory)
    return removed


def _abandoned(state_dir: Path) -> list[Path]:
    """The directories ``state_dir``'s owner file names, if no running server holds it (else none)."""
    try:
        owner = os.open(state_dir / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # none, another user's, a link, or removed meanwhile
        return []
    try:
        if not _ours(owner, stat.S_ISREG):
            return []
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its server runs
        named = os.read(owner, 1 << 16).decode().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    finally:
        os.close(owner)
    return [state_dir, *(Path(name) for name in named if name)]


def _ours(path_or_descriptor: Path | int, kind: Callable[[int], bool]) -> bool:
    """Whether it exists, is of ``kind`` (``stat.S_ISDIR`` or ``S_ISREG``), not a link, and is this user's."""
    try:
        info = os.fstat(path_or_descriptor) if isinstance(path_or_descriptor, int) else \
            os.lstat(path_or_descriptor)
    except OSError:
        return False
    return kind(info.st_mode) and info.st_uid == os.geteuid()
