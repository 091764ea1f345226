"""`invoke layers` as a user runs it: a smoke-budget study on the embedded model into a temporary
store, then the README question answered with `invoke sql`."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def invoke(*args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.integration
def test_layers_smoke_then_sql(tmp_path):
    store = str(tmp_path / "layers.duckdb")
    r = invoke("layers", "--budget", "smoke", "--store", store, "--format", "csv")
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"run (\d+): layer study \((\d+) points incl. base", r.stdout)
    assert m, r.stdout[-2000:]
    n_points = int(m.group(2))
    assert 4 <= n_points <= 6  # base, layers 0 and 29, three strategies' blocks of 10 (fewer if two coincide)
    q = invoke("sql", "--store", store, "--format", "csv",
               "SELECT strategy, n, point, value > base_value AS worse FROM layer_drops "
               "WHERE n = 10 AND metric = 'perplexity' AND heal_steps = 0 ORDER BY value")
    assert q.returncode == 0, q.stderr
    rows = q.stdout.strip().splitlines()
    assert rows[0] == "strategy,n,point,worse" and len(rows) == 1 + 3  # angular, deepest, random
    assert all(r.lower().endswith(",true") for r in rows[1:])  # dropping 10 of 30 layers always costs perplexity
    assert {r.split(",")[0] for r in rows[1:]} == {"angular", "deepest", "random"}
    q = invoke("sql", "--store", store, "--format", "csv",
               "SELECT (SELECT count(DISTINCT point) FROM evals) AS points, "
               "(SELECT count(*) FROM layer_influence WHERE position = 'last') AS influence, "
               "(SELECT count(*) FROM layer_angular WHERE best AND position = 'last') AS best, "
               "(SELECT count(*) FROM evals WHERE point = 'base') AS base_rows, "
               "(SELECT count(*) FROM layer_similarity WHERE position = 'tokens') AS token_pairs, "
               "(SELECT count(*) FROM layer_influence WHERE position = 'tokens') AS token_influence")
    # base: perplexity, nll, norm_loss; per-token similarity of all 31 x 31 states and its Block Influence
    assert q.stdout.strip().splitlines()[1] == f"{n_points},30,30,3,961,30"


@pytest.mark.parametrize("args,message", [
    (["--budget", "huge"], "budget (--budget) takes one of smoke, quick, full, not 'huge'"),
    (["--sizes", "2,x"], "--sizes (item 2) takes a whole number of at least 1, not 'x'"),
    (["--prompts", "nothing-here"], "unknown prompt set 'nothing-here'"),
    (["--quick", "--budget", "full"], "--quick and --budget full disagree"),
])
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    """Caught before the model loads: one line, exit status 2."""
    r = invoke("layers", *args, "--store", str(tmp_path / "s.duckdb"))
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
