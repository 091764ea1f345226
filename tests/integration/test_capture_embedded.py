"""Capture on the real embedded model (SmolLM2-135M-Instruct), small inputs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.capture.capture import CaptureCfg, capture
from store import Store
from store.activations import read_vectors

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
HOOKS = "resid_pre:3,resid_post:3,attn_out:3,mlp_out:3,z:3,resid_post:29"


def _vectors(store, run):
    out = {}
    with store.connect(read_only=True) as con:
        for hook in ("resid_pre", "resid_post", "attn_out", "mlp_out", "z"):
            meta, X = read_vectors(con, store, run, hook, None, "all")
            out[hook] = (meta.reset_index(drop=True), X)
    return out


def _max_rel(a, b):
    return float((np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)).max())


def test_backends_agree_and_batching_is_invariant(embedded, tmp_path):
    runs = {}
    for name, backend, bs, side in [("tl-1", "tl", 1, "right"), ("nnsight-4", "nnsight", 4, "right"),
                                    ("tl-4-left", "tl", 4, "left"), ("torch-3", "torch", 3, "left")]:
        s = Store(tmp_path / f"{name}.duckdb")
        run = capture(embedded, s, CaptureCfg(prompts="harmful,toxic", limit=3, hooks=HOOKS, positions="all",
                                              backend=backend, batch_size=bs, padding_side=side), progress=False)
        runs[name] = _vectors(s, run)
    ref = runs["tl-1"]
    for name, got in runs.items():
        for hook, (meta, X) in got.items():
            assert meta.equals(ref[hook][0]), (name, hook)
            assert _max_rel(X, ref[hook][1]) < 1e-4, (name, hook, _max_rel(X, ref[hook][1]))


def test_plain_duckdb_reads_what_the_model_produced(embedded, tmp_path):
    store = Store(tmp_path / "plain.duckdb")
    run = capture(embedded, store, CaptureCfg(prompts="harmbench", limit=2, hooks="resid_post:12",
                                              positions="last", backend="tl"), progress=False)
    # No suite code in the reader: a fresh interpreter with duckdb and numpy only.
    script = f"""
import duckdb, numpy as np, json
con = duckdb.connect({str(store.path)!r}, read_only=True)
rows = con.execute("SELECT prompt_id, vec FROM activations WHERE run_id = {run} AND hook = 'resid_post' "
                   "AND layer = 12 AND reduce = 'last' ORDER BY prompt_id").fetchall()
X = np.array([r[1] for r in rows], dtype=np.float32)
sim = con.execute("SELECT list_cosine_similarity(a.vec, b.vec) FROM activations a, activations b "
                  "WHERE a.layer = 12 AND b.layer = 12 AND a.prompt_id < b.prompt_id").fetchone()[0]
ids = con.execute("SELECT list(token_id ORDER BY pos) FROM tokens WHERE prompt_id = ? GROUP BY prompt_id",
                  [rows[0][0]]).fetchone()[0]
print(json.dumps({{"ids": [r[0] for r in rows], "X": X.tolist(), "sim": sim, "tokens": ids}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                    check=True, env={**os.environ, "PYTHONPATH": ""}, cwd="/").stdout)
    X = np.array(out["X"], dtype=np.float32)
    with torch.no_grad():
        hs = embedded.model(input_ids=torch.tensor([out["tokens"]]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(X[0], hs[13][0, -1].numpy(), rtol=1e-4, atol=1e-4)
    expect = float(X[0] @ X[1] / np.linalg.norm(X[0]) / np.linalg.norm(X[1]))
    assert out["sim"] == pytest.approx(expect, rel=1e-5)


def _cache_cmd(store_path):
    return [sys.executable, "-m", "invoke", "cache", "--store", str(store_path), "--prompts", "harmful",
            "--limit", "48", "--hooks", "resid_post", "--positions", "last,all", "--batch-size", "2",
            "--flush-mb", "0", "--backend", "torch"]


def test_kill_and_resume_leaves_exactly_one_copy(tmp_path):
    """SIGKILL a real cache run at several points; each rerun resumes; no loss, no duplicates."""
    store = Store(tmp_path / "killed.duckdb")
    run_dir = store.shard_dir / "run_id=1"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills = 0
    for want_parts in (1, 4):
        proc = subprocess.Popen(_cache_cmd(store.path), cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if len(list(run_dir.glob("hook=resid_post/layer=0/part-*.parquet"))) >= want_parts:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1, "the run finished before it could be killed"
    done = subprocess.run(_cache_cmd(store.path), cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT prompt_id) FROM run_prompts").fetchone() == (48, 48)
        assert con.execute("SELECT status FROM runs WHERE run_id = 1").fetchone()[0] == "complete"
        per_layer = con.execute("SELECT layer, reduce, count(*), count(DISTINCT (prompt_id, pos)) "
                                "FROM activations GROUP BY ALL").fetchall()
        assert {r[2] for r in per_layer if r[1] == "last"} == {48}
        assert all(r[2] == r[3] for r in per_layer)
        n_tokens = con.execute("SELECT sum(n_tokens) FROM run_prompts").fetchone()[0]
        assert {r[2] for r in per_layer if r[1] == "all"} == {n_tokens}
        assert con.execute("SELECT count(*) FROM tokens").fetchone()[0] == n_tokens
    assert not list(store.shard_dir.rglob("*.tmp"))
    # the resumed store holds the same vectors as an uninterrupted run
    clean = Store(tmp_path / "clean.duckdb")
    subprocess.run(_cache_cmd(clean.path), cwd=REPO, env=env, check=True, capture_output=True)
    for s in (store, clean):
        with s.connect(read_only=True) as con:
            meta, X = read_vectors(con, s, 1, "resid_post", [20], "last")
            if s is store:
                first = (meta, X)
    assert meta.equals(first[0]) and _max_rel(first[1], X) < 1e-4
