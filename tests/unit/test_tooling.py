"""The project passes its own type checker and linter (issue 23): mypy with ``disallow_untyped_defs``
on the package, ruff with the rule set in ``pyproject.toml`` (errors, unused code, import order, and
annotations on the package). Both read their settings from ``pyproject.toml``; CI runs this test as part
of the README's test command, so a new untyped function or unused import fails CI with the tool's own
message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "mypy")})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tooling")


def test_mypy_passes_on_the_package(cache_dir: Path) -> None:
    out = _run(["mypy"], cache_dir)
    assert out.returncode == 0, f"mypy found errors (run `.venv/bin/mypy` to see them all):\n{out.stdout[-6000:]}"


def test_ruff_passes_on_the_repository(cache_dir: Path) -> None:
    out = _run(["ruff", "check", "--no-cache", "."], cache_dir)
    assert out.returncode == 0, f"ruff found problems (`.venv/bin/ruff check .`; many fix with --fix):\n{out.stdout[-6000:]}"


def test_the_rules_cover_unused_code_import_order_and_annotations() -> None:
    """The configuration itself: a rule set that silently shrank would pass the test above vacuously."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lint = cfg["tool"]["ruff"]["lint"]
    assert {"F", "I", "ANN"} <= set(lint["select"])
    assert cfg["tool"]["mypy"]["disallow_untyped_defs"] is True
    # annotations are required in the package; tests and benchmarks are exempt from ANN only
    assert all(v == ["ANN"] for v in lint["per-file-ignores"].values())


def test_ruff_refuses_an_untyped_function_and_an_unused_import_in_the_package(cache_dir: Path) -> None:
    src = "import os\n\n\ndef f(x):\n    return x\n"
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--stdin-filename", "interp/new.py", "-"],
                         cwd=ROOT, input=src, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "F401" in out.stdout and "ANN001" in out.stdout and "ANN201" in out.stdout
