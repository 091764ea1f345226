"""`invoke heads` as a user runs it: the smoke budget on the embedded model, then SQL on the store."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def invoke(*args, env=None):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def sql(store, query):
    r = invoke("sql", "--store", store, "--format", "csv", query)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()


@pytest.mark.integration
def test_heads_smoke_run(tmp_path):
    store = str(tmp_path / "heads.duckdb")
    env = {"INTERP_ROUTER_DIR": str(tmp_path / "routers")}
    r = invoke("heads", "--budget", "smoke", "--store", store, "--format", "csv", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "run 1: head study stored" in r.stdout and "router-k5" in r.stdout
    # gradient importance for all 270 heads (3 metrics), ablation of the two deepest layers (2 modes x 4 metrics)
    assert sql(store, "SELECT method, count(*) AS n FROM heads_importance GROUP BY method ORDER BY method") == \
        ["method,n", "gradient,810", "mean,72", "zero,72"]
    # per-token gradient importance over 2 sequences x 16 tokens, with standard errors
    assert sql(store, "SELECT min(n) AS n, max(n_tokens) AS n_tokens, count(stderr) AS se FROM heads_importance "
                      "WHERE method = 'gradient' AND metric = 'abs_grad'") == ["n,n_tokens,se", "2,32,270"]
    # every point evaluated, base included, and described in heads_points
    rows = sql(store, "SELECT e.point, any_value(p.kind) AS kind FROM evals e LEFT JOIN heads_points p "
                      "USING (run_id, point) WHERE e.metric = 'perplexity' GROUP BY e.point ORDER BY e.point")
    assert rows == ["point,kind", "base,", "gradient-120,prune", "gradient_layer-120,prune",
                    "random0-120,prune", "router-k5,router"]
    assert sql(store, "SELECT count(*) AS n, round(sum(frequency), 6) AS f FROM heads_router_usage WHERE top_k = 5") \
        == ["n,f", "270,150.0"]  # 5 heads active per token in each of 30 layers
    assert sql(store, "SELECT count(*) AS n FROM heads_router_steps") == ["n", "2"]
    assert sql(store, "SELECT kind, status FROM runs") == ["kind,status", "heads,complete"]
    files = sorted(p.name.split("-")[0] for p in (tmp_path / "routers").glob("*.safetensors"))
    assert len(files) == 2 and files[1] == "means"  # one router, one set of head means


@pytest.mark.parametrize("args,message", [
    (["--budget", "huge"], "budget (--budget) takes one of smoke, quick, full, not 'huge'"),
    (["--quick", "--budget", "full"], "--quick and --budget full disagree"),
    (["--router-steps", "many"], "--router-steps takes a whole number of at least 1, not 'many'"),
    (["--gradient-seq", "maybe"], "--gradient-seq takes true or false, not 'maybe'"),
    (["--model", "./no/such/dir", "--budget", "smoke"], "model directory './no/such/dir' does not exist"),
])
def test_bad_input_one_line(tmp_path, args, message):
    r = invoke("heads", *args, "--store", str(tmp_path / "s.duckdb"))
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
