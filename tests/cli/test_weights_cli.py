"""`invoke weights` as a user runs it, into a temporary store."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def invoke(*args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def sql(store, query):
    r = invoke("sql", "--store", store, "--format", "csv", query)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()


@pytest.mark.integration
def test_weights_smoke_run_fills_the_tables(tmp_path):
    store = str(tmp_path / "w.duckdb")
    r = invoke("weights", "--budget", "smoke", "--store", store)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "run 1: weight-pruning study stored" in r.stdout and "wanda k=50%" in r.stdout
    points = sql(store, "SELECT point, n_pruned, CASE WHEN sparsity >= 0.5 THEN 1 ELSE 0 END AS half "
                        "FROM prune_points ORDER BY point")
    assert points[1:] == ["base,0,0", "magnitude k=50%,1658880,1", "wanda k=50%,1658880,1"]
    assert sql(store, "SELECT count(DISTINCT point) FROM evals WHERE study = 'weights'")[1:] == ["3"]
    assert sql(store, "SELECT count(*), min(n_in), max(n_in) FROM input_norms")[1:] == ["30,576,576"]
    assert sql(store, "SELECT count(*) FROM prune_stats WHERE point = 'wanda k=50%' AND n_pruned = 55296")[1:] == ["30"]
    curve = sql(store, "SELECT point, n_pruned FROM prune_curve WHERE metric = 'perplexity' ORDER BY n_pruned, point")
    assert curve[1:] == ["base,0", "magnitude k=50%,1658880", "wanda k=50%,1658880"]


@pytest.mark.parametrize("args,message", [
    (["--methods", "magnitude,obs"], "methods (--methods) takes magnitude and/or wanda, not 'obs'"),
    (["--calibration", "twice"], "[weights.calib] order (--calibration) takes sequential or oneshot, not 'twice'"),
    (["--calib-corpus", "wikitext"], ("--calib-corpus takes one of book, wikitext2, c4, text, not 'wikitext' "
                                      "(did you mean wikitext2?)")),
    (["--calib-corpus", "text", "--calib-path", "/no/such.txt"], "calibration file '/no/such.txt' does not exist"),
    (["--quick", "--budget", "full"], "--quick and --budget full disagree"),
    (["--budget", "tiny"], "budget (--budget) takes one of smoke, quick, full, not 'tiny'"),
    (["--tasks", "ppl,vibes"], "[weights.eval] tasks (--tasks): unknown task 'vibes'"),
])
def test_bad_flags_give_one_clear_line_before_loading(tmp_path, args, message):
    r = invoke("weights", *args, "--store", str(tmp_path / "s.duckdb"))
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
