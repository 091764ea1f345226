"""Two identical study commands at once on one store (the issue's reproduction: two `invoke eval
--budget smoke` stored 12 rows instead of 6): the second is refused in one line, the first stores
each score once, and rerunning the command reuses it."""

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def test_two_identical_evals_at_once(tmp_path):
    store = tmp_path / "twice.duckdb"
    args = [sys.executable, "-m", "invoke", "eval", "--model", "smollm2-135m-instruct", "--tasks", "ppl,facts,arith",
            "--budget", "ppl=4096,facts=40,arith=20", "--store", str(store)]  # long enough to overlap
    first = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    claims = tmp_path / "twice.duckdb.claims"
    deadline = time.monotonic() + 300
    while not (claims.exists() and any(claims.iterdir())):  # the first has claimed its run
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.05)
    second = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    lines = [ln for ln in second.stderr.splitlines() if ln.strip() and not ln.startswith(("Loading", "\r"))]
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-2000:]
    assert lines[-1].startswith("error: run 1 (eval) of twice.duckdb is being computed by process "), lines
    con = duckdb.connect(str(store), read_only=True)
    n, distinct = con.execute("SELECT count(*), count(DISTINCT (point, task, metric)) FROM evals").fetchone()
    con.close()
    assert n == distinct == 6
    again = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "run 1: 6 scores stored" in again.stdout, again.stderr[-2000:]
    check = subprocess.run([sys.executable, "-m", "invoke", "check", "--store", str(store)], cwd=REPO, env=ENV,
                           capture_output=True, text=True)
    assert check.returncode == 0 and "is consistent" in check.stdout, check.stdout + check.stderr
