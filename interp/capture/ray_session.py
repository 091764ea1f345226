"""The Ray side of ``invoke cache --workers``: where the pool runs (a cluster or a private local
Ray), how much each actor asks for, and cleaning up after a driver that was killed.

A local Ray lives in its own temporary directory (``ray-*`` under TMPDIR), shut down and removed
when the run ends. Ray's core processes end with a killed driver, its agents do not: the driver
records every process it started (pid and start time) in that directory, and the next local
session ends those of dead drivers by pid (``end_orphans``); nothing is ended by name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from store.cores import usable_cores


@dataclass(frozen=True)
class RayCfg:
    """Where and how wide the pipeline runs. None of it is part of a run's identity."""

    workers: int = 2
    """Actors, each holding its own copy of the model."""
    address: str | None = None
    """A running Ray cluster (what ``ray start --head`` prints); None: ``RAY_ADDRESS``, else a
    private local Ray in a temporary directory, shut down at the end."""
    threads: int = 1
    """Torch threads per actor (more threads than cores slowed evaluation about 4x here)."""
    cpus: float | None = None
    """CPUs Ray reserves per actor. None: locally (cores - 1) / workers, at most ``threads``, so
    Ray Data's own tasks keep a core (actors holding every CPU of 2 hung the pipeline); on a
    cluster ``threads``."""
    gpus: float | None = None
    """GPUs per actor. None: 1 when the cluster has GPUs (the actor loads the model on cuda), else 0."""
    max_restarts: int = 3
    """How often Ray restarts a dead actor (and retries its chunk) before the run fails."""

    def __post_init__(self) -> None:
        if self.workers < 1 or self.threads < 1:
            raise ValueError("--workers and threads per worker must be at least 1")
        if (self.cpus is not None and self.cpus <= 0) or (self.gpus is not None and self.gpus < 0):
            raise ValueError("CPUs per worker must be positive and GPUs per worker not negative")
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be 0 or more")


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[tuple[ModuleType, bool]]:
    """Ray for one run: connected to ``address`` (or ``RAY_ADDRESS``), or a private local Ray in
    a new temporary directory, shut down and removed on exit. Yields (ray, local)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise RuntimeError("--workers needs Ray: pip install 'interp[ray]'") from None
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process: capture starts and stops its own session")
    tmp = None
    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            _reachable(address)
            ray.init(address=address, **common)
        else:
            end_orphans(tempfile.gettempdir())
            tmp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 bytes
            ray.init(num_cpus=usable_cores(), include_dashboard=False, _temp_dir=tmp,
                     object_store_memory=256 << 20, **common)
            _write_pids(tmp)
    except ConnectionError as e:
        raise RuntimeError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]} (start one "
                           "with `ray start --head`, or omit --ray-address for a local Ray)") from None
    except BaseException:
        if tmp:  # a local Ray that did not start: nothing of it is left behind
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        yield ray, address is None
    finally:
        ray.shutdown()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse an address nobody listens on in one line: ``ray.init`` retries an unreachable GCS for
    minutes (measured: still waiting after 3 minutes)."""
    host_port = address.removeprefix("ray://")
    if address == "auto" or ":" not in host_port:
        return  # Ray finds the cluster itself (or says why)
    host, port = host_port.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError):
        raise RuntimeError(f"no Ray cluster answers at {address}: start one with `ray start --head` (it prints "
                           "the address), or omit --ray-address and RAY_ADDRESS for a local Ray") from None


def _started(pid: int) -> int | None:
    """A process's start time in clock ticks (Linux /proc), None when it is gone: with the pid it
    names one process, never a later one that reuses the pid."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _descendants(pid: int) -> list[int]:
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        here = todo.pop()
        kids = [c for c, p in parent.items() if p == here]
        found += kids
        todo += kids
    return found


_PIDS = "interp-ray-pids.json"


def _write_pids(tmp: str) -> None:
    """Record this driver and the local Ray's processes (pid, start time) in Ray's private directory:
    most of them end with the driver, but Ray's agents outlive a killed one (``end_orphans``)."""
    procs = [(p, _started(p)) for p in _descendants(os.getpid())]
    Path(tmp, _PIDS).write_text(json.dumps({"driver": [os.getpid(), _started(os.getpid())], "procs": procs}))


def end_orphans(root: str) -> list[int]:
    """End, by pid, the local Ray processes of drivers that died (killed) without shutting Ray
    down, and remove their private directories; returns the pids ended. A process is ended only if
    its pid still names the process recorded (same start time)."""
    ended = []
    for record in Path(root).glob(f"ray-*/{_PIDS}"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            info = json.loads(record.read_text())
            pid, started = info["driver"]
            if _started(pid) == started:
                continue  # its driver is alive
            for p, t in info["procs"]:
                if t is not None and _started(p) == t:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(p, signal.SIGKILL)
                        ended.append(p)
            shutil.rmtree(record.parent, ignore_errors=True)
    return ended


def placement(resources: dict[str, float], rc: RayCfg, local: bool) -> tuple[float, float]:
    """(CPUs, GPUs) per actor for a cluster with ``resources``; a pool that cannot fit (and would
    wait forever) is a one-line error."""
    have_cpu, have_gpu = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    gpus = rc.gpus if rc.gpus is not None else (1.0 if have_gpu >= 1 else 0.0)
    cpus = rc.cpus if rc.cpus is not None else (
        min(float(rc.threads), max(0.1, (have_cpu - 1) / rc.workers)) if local else float(rc.threads))
    if gpus * rc.workers > have_gpu:
        raise ValueError(f"--workers {rc.workers} needs {gpus * rc.workers:g} GPUs ({gpus:g} per actor) but the "
                         f"Ray cluster has {have_gpu:g}: use fewer workers")
    if cpus * rc.workers + min(1.0, have_cpu / 4) > have_cpu:
        raise ValueError(f"--workers {rc.workers} at {cpus:g} CPUs each would leave Ray Data no CPU on a cluster "
                         f"of {have_cpu:g} (it hangs): use fewer workers")
    return cpus, gpus
