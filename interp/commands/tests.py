"""`invoke test`: the test suite, as CI runs it."""

from __future__ import annotations

import os
import sys

from invoke import Context, task


@task(help={"quick": "unit tests only (tiny models, no embedded model)", "k": "pytest -k expression"})
def test(c: Context, quick: bool = False, k: str | None = None) -> None:
    """Run the test suite (what CI runs)."""
    args = [sys.executable, "-m", "pytest", "-q"]
    if quick:
        args += ["-m", "not integration"]
    if k:
        args += ["-k", k]
    c.run(" ".join(args), pty=False, env={"PYTHONUNBUFFERED": "1", **os.environ})
