"""``store.cores.usable_cores``: the cores this process may use (affinity, cgroup v2 quota), which the store's
reader threads, the local Ray session, every task's torch threads (``interp.commands.cli.fit_threads``) and the
test runner's threads all follow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from store.cores import usable_cores


def _affinity() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.mark.parametrize(("cpu_max", "quota_cores"), [
    ("max 100000\n", None),          # no quota
    ("400000 100000\n", 4),          # docker --cpus 4
    ("150000 100000\n", 1),          # 1.5 cores: rounded down
    ("50000 100000\n", 1),           # half a core: still one
    ("200000 50000\n", 4),           # another period
    ("garbage\n", None),             # unreadable: no quota
    ("", None),
])
def test_usable_cores_caps_the_affinity_by_the_cgroup_quota(tmp_path: Path, cpu_max: str,
                                                            quota_cores: int | None) -> None:
    f = tmp_path / "cpu.max"
    f.write_text(cpu_max)
    expected = _affinity() if quota_cores is None else min(_affinity(), quota_cores)
    assert usable_cores(f) == expected


def test_usable_cores_without_a_cgroup_file_is_the_affinity(tmp_path: Path) -> None:
    assert usable_cores(tmp_path / "absent") == _affinity()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this system")
def test_usable_cores_follows_a_narrowed_affinity(tmp_path: Path) -> None:
    """A process pinned to one core (``taskset -c 0``) may use one, whatever the host has. In a child
    process: narrowing this worker's own affinity would outlive the test in the threads it starts."""
    code = ("import os, sys; from store.cores import usable_cores; from pathlib import Path; "
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(usable_cores(Path(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "absent")], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True, timeout=60)
    assert out.stdout.strip() == "1"
    assert usable_cores(tmp_path / "absent") == _affinity()  # this process: untouched


@pytest.fixture
def torch_threads():
    import torch

    was = torch.get_num_threads()
    yield torch
    torch.set_num_threads(was)


def test_a_task_caps_torch_threads_at_the_usable_cores(monkeypatch, torch_threads) -> None:
    """In a container whose quota is below the affinity, a task runs with the quota's threads."""
    from invoke import Context, task

    import store.cores
    from interp.commands.cli import CliTask

    torch_threads.set_num_threads(2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(store.cores, "usable_cores", lambda *a: 1)
    seen = []

    @task(klass=CliTask)
    def probe(c):
        seen.append(torch_threads.get_num_threads())

    probe(Context())
    assert seen == [1]


def test_fit_threads_leaves_the_users_choice(monkeypatch, torch_threads) -> None:
    import store.cores
    from interp.commands.cli import fit_threads

    torch_threads.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(store.cores, "usable_cores", lambda *a: 1)
    fit_threads()
    assert torch_threads.get_num_threads() == 2


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two cores in the affinity")
def test_fit_threads_before_torch_is_imported_sets_the_environment() -> None:
    """A task imports torch lazily: the cap goes through OMP_NUM_THREADS, which torch reads on import."""
    code = ("import os, sys; import store.cores as c; c.usable_cores = lambda *a: 1; "
            "from interp.commands.cli import fit_threads; assert 'torch' not in sys.modules; fit_threads(); "
            "import torch; print(os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[2], check=True, timeout=120)
    assert out.stdout.split() == ["1", "1"]
