"""The CPU cores this process may use.

``os.cpu_count()`` counts the host's cores; a process pinned to some of them (``taskset``, a
scheduler's CPU set) or in a container with a CPU quota (``docker --cpus``: a cgroup v2
``cpu.max``) may use fewer. Thread pools and worker counts sized by the host's count oversubscribe
those cores. It lives in ``store`` (the lowest layer: ``interp`` imports ``store``, never the other
way) so the store's reader threads, the package's Ray session and the tasks' torch threads
(``interp.commands.cli.fit_threads``) count cores the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (rounded
    down, at least 1) where one is set. ``cpu_max``: the cgroup file to read (tests point it at
    their own)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 (macOS, cgroup v1) or an unreadable file: no quota
        pass
    return max(1, n)
