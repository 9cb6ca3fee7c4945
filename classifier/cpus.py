"""How many CPUs this process may use: the one answer for worker counts and model threads.

Standard library only: gunicorn's config file imports it in the master process.
"""

from __future__ import annotations

import math
import os

from classifier.errors import UserError


def usable_cpus() -> int:
    """CPUs this process may use, including a container's CPU quota (cgroup v2), which affinity ignores."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:
            quota, period = handle.read().split()
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


def count_setting(variable: str, default: int) -> int:
    """A count from an environment variable (unset or blank: ``default``); refused unless a whole number >= 1."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    try:
        count = int(value)
    except ValueError:
        raise UserError(f"{variable} must be a whole number, got {value!r}") from None
    if count < 1:
        raise UserError(f"{variable} must be at least 1, got {count}")
    return count


def worker_count() -> int:
    """gunicorn worker processes: ``TICKETCLF_WORKERS``, else ``WEB_CONCURRENCY`` (the usual name), else the CPUs.
    Both are checked whichever decides: gunicorn's own import reads ``WEB_CONCURRENCY`` with int() regardless."""
    given = {variable: count_setting(variable, 0) for variable in ("TICKETCLF_WORKERS", "WEB_CONCURRENCY")}
    return given["TICKETCLF_WORKERS"] or given["WEB_CONCURRENCY"] or usable_cpus()
