"""How the suite itself runs: the README's test command (what `.ci/run` runs) puts it on pytest-xdist workers, the
worker count follows the cores and the memory, and the README's one-file command still runs without the plugin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_exactly_the_readme_test_command_on_workers() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"Run the tests \(what CI runs, `\.ci/run`\):\n\n```bash\n(.+)\n```", readme)
    assert block is not None, "the README lost its test command block"
    command = block.group(1)
    assert "-n auto --dist loadfile" in command
    assert (ROOT / ".ci" / "run").read_text().rstrip("\n").splitlines()[-1] == command


@pytest.mark.parametrize(("cpus", "available_gb", "workers"), [
    (2, 22.0, 2),    # the CI machine
    (16, 64.0, 4),   # at most 4
    (8, 6.0, 1),     # one per 4 GB available
    (8, 2.0, 1),     # never fewer than one
    (1, 64.0, 1),
    (3, None, 3),    # no /proc/meminfo: the cores alone
])
def test_auto_worker_count_follows_cores_and_memory(monkeypatch: pytest.MonkeyPatch, cpus: int,
                                                     available_gb: float | None, workers: int) -> None:
    monkeypatch.setattr(conftest, "_cores", lambda: cpus)
    monkeypatch.setattr(conftest, "_available_memory",
                        lambda: None if available_gb is None else int(available_gb * (1 << 30)))
    assert conftest.pytest_xdist_auto_num_workers(None) == workers


def test_cores_are_this_process_s() -> None:
    cores = conftest._cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert cores <= len(os.sched_getaffinity(0))


def test_available_memory_reads_meminfo() -> None:
    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc/meminfo on this system")
    available = conftest._available_memory()
    assert available is not None and 0 < available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_one_file_runs_in_one_process_without_the_plugin() -> None:
    """The README's command for one file alone (``-p no:xdist``): the conftest's xdist hook must not break it."""
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                          "tests/unit/test_prune_masks.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"\b\d+ passed\b", out.stdout)
