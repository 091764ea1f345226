"""`invoke check` and `invoke export` as a user runs them, on the embedded model."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

REPO = Path(__file__).resolve().parents[2]


def invoke(*args):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.integration
def test_check_repair_and_export(tmp_path):
    store = tmp_path / "cli.duckdb"
    r = invoke("cache", "--store", str(store), "--prompts", "harmbench", "--limit", "3", "--hooks", "resid_post:0-1",
               "--positions", "last,all", "--batch-size", "1", "--flush-mb", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    ok = invoke("check", "--store", str(store))
    assert ok.returncode == 0 and "is consistent" in ok.stdout and "ok   manifest" in ok.stdout, ok.stdout + ok.stderr
    # what a kill leaves: a committed shard not yet renamed, an uncommitted one, a run marked running
    shards = sorted((tmp_path / "cli.shards" / "run_id=1").rglob("*.parquet"))
    shards[0].rename(shards[0].with_name(shards[0].name + ".tmp"))
    (shards[1].parent / "part-000042.parquet.tmp").write_bytes(b"PAR1 half")
    r = invoke("sql", "--store", str(store), "--write", "UPDATE runs SET status = 'running'")
    assert r.returncode == 0, r.stderr
    bad = invoke("check", "--store", str(store))
    assert bad.returncode == 1
    assert "BAD  tmp" in bad.stdout and "BAD  runs" in bad.stdout and "BAD  manifest" in bad.stdout
    assert re.search(r"BAD  coverage +run 1 resid_post layer", bad.stdout)  # the renamed-away shard's rows are missing
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: store {store} has ") and "`invoke check --repair` fixes the repairable" in last
    fixed = invoke("check", "--store", str(store), "--repair", "--quiet")
    assert "1 committed shard(s) renamed, 1 uncommitted removed" in fixed.stdout
    assert fixed.returncode == 1 and "BAD  runs" in fixed.stdout and "BAD  tmp" not in fixed.stdout
    r = invoke("cache", "--store", str(store), "--prompts", "harmbench", "--limit", "3", "--hooks", "resid_post:0-1",
               "--positions", "last,all", "--batch-size", "1", "--flush-mb", "0")  # resume marks it complete
    assert r.returncode == 0 and invoke("check", "--store", str(store)).returncode == 0
    out = tmp_path / "export"
    e = invoke("export", "--store", str(store), "--out", str(out))
    assert e.returncode == 0 and "exported 6 shard(s)" in e.stdout, e.stdout + e.stderr
    data = ds.dataset(out / "activations", format="parquet", partitioning="hive")
    assert data.to_table(filter=(ds.field("layer") == 1) & (ds.field("reduce") == "last")).num_rows == 3


def test_check_of_a_missing_or_broken_store(tmp_path):
    r = invoke("check", "--store", str(tmp_path / "none.duckdb"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: no store at")
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"\0" * 5000)
    r = invoke("check", "--store", str(junk))
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "junk.duckdb" in lines[0], r.stderr
