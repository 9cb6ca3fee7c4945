"""How many CPUs this process may use: the one answer for worker counts and model threads.

Standard library only: gunicorn's config file imports it in the master process.
"""

from __future__ import annotations

import math
import os


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
