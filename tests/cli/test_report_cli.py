"""`invoke report` as a user runs it: from the store alone, clear errors for stores it cannot use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]


def invoke(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)


def one_error_line(r) -> str:
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_report_from_a_store_with_one_study(tmp_path):
    from store import Store
    from store.evals import write_evals
    from store.runs import finish_run, start_run

    path = tmp_path / "one.duckdb"
    model = {"model": "m", "revision": "r", "dtype": "float32", "device": "cpu", "n_layers": 2, "d_model": 4}
    with Store(path).connect() as con:
        run = start_run(con, kind="weights", model=model, backend=None, config="{}", config_hash="h",
                        code_version="test")
        write_evals(con, [{"run_id": run.run_id, "study": "weights", "point": p, "intervention": json.dumps({"kind": p}),
                               "task": "ppl", "metric": "perplexity", "value": v, "stderr": 0.1, "n": 100, "chance": None,
                               "dataset": "{}", "seconds": 0.1} for p, v in (("base", 10.0), ("x", 12.0))])
        finish_run(con, run.run_id)
    out = tmp_path / "site"
    r = invoke("report", "--store", str(path), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"report: {out / 'index.html'}" in r.stdout
    assert "missing studies (no run in the store): layers, heads, safety" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "weights.html"]
    index = (out / "index.html").read_text()
    assert "Missing studies" in index and "invoke layers" in index and "weights.html" in index


@pytest.mark.parametrize("kind,message", [
    ("missing", "no store at"),
    ("empty", "not a readable interp store"),
    ("foreign", "is a DuckDB file but not an interp store"),
])
def test_unusable_store_is_one_clear_line(tmp_path, kind, message):
    path = tmp_path / f"{kind}.duckdb"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":
        duckdb.connect(str(path)).execute("CREATE TABLE sales (x INT)").close()
    r = invoke("report", "--store", str(path), "--out", str(tmp_path / "out"))
    assert message in one_error_line(r)
    assert not (tmp_path / "out").exists()
