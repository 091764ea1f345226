"""`invoke safety` as a user runs it: the smoke budget on the embedded model, then SQL checks."""

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]


def invoke(*args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.integration
def test_safety_smoke_then_rerun(tmp_path):
    store = str(tmp_path / "safety.duckdb")
    r = invoke("safety", "--budget", "smoke", "--store", store)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "what each edit moved and what it cost" in r.stdout and "safety study stored" in r.stdout
    with duckdb.connect(store, read_only=True) as con:
        run_id, status = con.execute("SELECT run_id, status FROM runs WHERE kind = 'safety'").fetchone()
        assert status == "complete"
        probes = con.execute("SELECT count(DISTINCT layer), count(DISTINCT problem), min(permutations) FROM "
                             "safety_probes WHERE run_id = ? AND setting = 'cv'", [run_id]).fetchone()
        assert probes == (3, 4, 50)
        chosen = con.execute("SELECT layer FROM safety_selection WHERE run_id = ? AND criterion = 'chosen'",
                             [run_id]).fetchone()[0]
        assert chosen in (8, 16)
        n_dim = con.execute("SELECT len(vec) FROM safety_directions WHERE run_id = ? LIMIT 1", [run_id]).fetchone()[0]
        assert n_dim == 576
        points = dict(con.execute("SELECT point, count(*) FROM evals WHERE run_id = ? GROUP BY point",
                                  [run_id]).fetchall())
        # base, ablation, orthogonalised weights, actadd +1; 2 random unit, 2 variance-matched, 2 random additions
        assert "base" in points and len(points) == 4 + 6 and len(set(points.values())) == 1
        roles = dict(con.execute("SELECT role, count(*) FROM safety_points WHERE run_id = ? GROUP BY role",
                                 [run_id]).fetchall())
        assert roles == {"edit": 3, "baseline": 6}
        tasks = {t for (t,) in con.execute("SELECT DISTINCT task FROM evals WHERE run_id = ?", [run_id]).fetchall()}
        assert tasks == {"toxicity", "refusal", "ppl", "facts", "arith", "kl"}
        splits = dict(con.execute("SELECT split, count(*) FROM safety_prompts WHERE run_id = ? GROUP BY split",
                                  [run_id]).fetchall())
        assert splits.keys() == {"train", "test", "heldout"}
        n_evals = con.execute("SELECT count(*) FROM evals").fetchone()[0]
    again = invoke("safety", "--budget", "smoke", "--store", store)
    assert again.returncode == 0 and f"run {run_id}: safety study stored" in again.stdout
    with duckdb.connect(store, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM evals").fetchone()[0] == n_evals


@pytest.mark.parametrize("args,message", [
    (["--budget", "huge"], "budget (--budget) takes one of smoke, quick, full, not 'huge'"),
    (["--quick", "--budget", "full"], "--quick and --budget full disagree"),
    (["--alphas", "one,two"], "--alphas (item 1) takes a number, not 'one'"),
    (["--per-set", "3"], "per_set (--per-set) takes a whole number of at least 8"),
    (["--pairs", "pairs.jsonl", "--harmful", "pairs.jsonl"], "pairs (--pairs) gives both the harmful and the harmless"),
])
def test_bad_flags_fail_before_loading(tmp_path, args, message):
    r = invoke("safety", *args, "--store", str(tmp_path / "s.duckdb"))
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
