"""The real invoke tasks, run as a user would, in subprocesses."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def invoke(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.integration
def test_cache_then_sql_and_runs(tmp_path):
    store = str(tmp_path / "cli.duckdb")
    r = invoke("cache", "--store", store, "--prompts", "harmbench,toxic", "--limit", "2", "--hooks", "resid_post:0-1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "run 1: cached" in r.stdout
    q = invoke("sql", "--store", store, "--format", "csv",
               "SELECT layer, count(*) AS n FROM activations GROUP BY layer ORDER BY layer")
    assert q.returncode == 0 and q.stdout.strip().splitlines() == ["layer,n", "0,4", "1,4"]
    r = invoke("runs", "--store", store)
    assert r.returncode == 0 and "cache" in r.stdout and "complete" in r.stdout
    again = invoke("cache", "--store", store, "--prompts", "harmbench,toxic", "--limit", "2",
                   "--hooks", "resid_post:0-1")
    assert again.returncode == 0 and "run 1: cached" in again.stdout  # nothing recomputed, no new run
    w = invoke("sql", "--store", store, "DROP TABLE prompts")
    assert w.returncode == 2 and "--write" in w.stderr


@pytest.mark.parametrize("args,message", [
    (["cache", "--hooks", "resid_postt"], "unknown hook 'resid_postt'; nearest valid names: resid_post"),
    (["cache", "--prompts", "nothing-here"], "unknown prompt set 'nothing-here'"),
    (["cache", "--model", "./no/such/dir"], "model directory './no/such/dir' does not exist"),
    (["cache", "--backend", "jax"], "unknown backend 'jax'"),
    (["sql", "SELECT 1"], "no store at"),
])
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    """Caught before any model is loaded: the user sees exactly one line."""
    r = invoke(*args, "--store", str(tmp_path / "s.duckdb"))
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


@pytest.mark.integration
def test_layer_out_of_range_after_load(tmp_path):
    r = invoke("cache", "--hooks", "resid_post:30", "--store", str(tmp_path / "s.duckdb"))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error: layer 30 out of range") and "0..29" in last


def test_empty_prompt_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = invoke("cache", "--prompts", str(empty), "--store", str(tmp_path / "s.duckdb"))
    assert r.returncode == 2 and "is empty" in r.stderr
