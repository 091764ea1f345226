"""Crash safety with real processes: SIGKILL a cache run and a sweep at random points, rerun,
and find every row exactly once and `invoke check` clean."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from interp.capture.capture import CaptureCfg, capture
from store import Store
from store.activations import read_vectors
from tests.conftest import word_prompts

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
N_PROMPTS = 120


@pytest.fixture
def tiny_dir(tiny, tmp_path):
    """The tiny model saved (fast to load in each subprocess) and a prompt file."""
    d = tmp_path / "crash"
    tiny.model.save_pretrained(d / "tiny")
    tiny.tokenizer.save_pretrained(d / "tiny")
    word_prompts(d / "p.jsonl", N_PROMPTS)
    return d


def _invoke(*args):
    return [sys.executable, "-m", "invoke", *args]


def _cache_cmd(d, store):
    return _invoke("cache", "--model", str(d / "tiny"), "--store", str(store), "--prompts", str(d / "p.jsonl"),
                   "--hooks", "resid_post,z:2", "--positions", "last,all", "--backend", "torch",
                   "--batch-size", "2", "--flush-mb", "0")


def _check(store):
    r = subprocess.run(_invoke("check", "--store", str(store)), cwd=REPO, env=ENV, capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def test_cache_killed_at_random_points_resumes_exactly(tiny, tiny_dir, tmp_path):
    store = Store(tmp_path / "killed.duckdb")
    layer0 = store.shard_dir / "run_id=1" / "hook=resid_post" / "layer=0"
    rng = random.Random(1234)
    kills = []
    for target in sorted(rng.sample(range(1, 50), 3)):  # commits made before the kill
        proc = subprocess.Popen(_cache_cmd(tiny_dir, store.path), cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if len(list(layer0.glob("part-*.parquet"))) >= target:
                time.sleep(rng.uniform(0, 0.05))  # somewhere inside the next commit
                break
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(target)
        proc.wait()
    assert len(kills) >= 2, f"the run finished before most kills: {kills}"
    done = subprocess.run(_cache_cmd(tiny_dir, store.path), cwd=REPO, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    code, out = _check(store.path)
    assert code == 0 and "is consistent" in out, out
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT prompt_id) FROM run_prompts").fetchone() == \
            (N_PROMPTS, N_PROMPTS)
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        n_tokens = con.execute("SELECT sum(n_tokens) FROM run_prompts").fetchone()[0]
        rows = {(h, l, r): n for h, l, r, n in con.execute(
            "SELECT hook, layer, reduce, count(*) FROM activations GROUP BY ALL").fetchall()}
    assert {n for (h, _, r), n in rows.items() if h == "resid_post" and r == "last"} == {N_PROMPTS}
    assert {n for (h, _, r), n in rows.items() if h == "resid_post" and r == "all"} == {n_tokens}
    assert rows[("z", 2, "all")] == 4 * n_tokens  # 4 heads
    # the same vectors as an uninterrupted run (in-process, same weights and settings)
    clean = Store(tmp_path / "clean.duckdb")
    capture(tiny, clean, CaptureCfg(prompts=str(tiny_dir / "p.jsonl"), hooks="resid_post,z:2", positions="last,all",
                                    backend="torch", batch_size=2), progress=False)
    for hook in ("resid_post", "z"):
        with store.connect(read_only=True) as con:
            meta, X = read_vectors(con, store, 1, hook, None, "all")
        with clean.connect(read_only=True) as con:
            meta2, X2 = read_vectors(con, clean, 1, hook, None, "all")
        assert meta.equals(meta2)
        np.testing.assert_allclose(X, X2, rtol=1e-5, atol=1e-6)


SWEEP = """
import sys
from interp.evals import EvalCfg
from interp.interventions.layers import LayerDrop
from interp.model.loading import load_model
from interp.studies.sweep import run_sweep
from store import Store

loaded = load_model(sys.argv[1])
points = [LayerDrop(layers=(i,)) for i in range(4)] + [LayerDrop(layers=(i, i + 1)) for i in range(3)]
run = run_sweep(loaded, Store(sys.argv[2]), study="layers", config={"test": "crash"}, points=points,
                eval_cfg=EvalCfg(tasks=("ppl", "kl"), budget="ppl=256,kl=2"), progress=False,
                on_point=lambda spec, scores: print("point", spec.label(), flush=True))
print("done", run)
"""
POINTS = ["base", "drop[0]", "drop[1]", "drop[2]", "drop[3]", "drop[0-1]", "drop[1-2]", "drop[2-3]"]


def test_sweep_killed_at_random_points_resumes_exactly(tiny_dir, tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP)
    store = tmp_path / "sweep.duckdb"
    cmd = [sys.executable, str(script), str(tiny_dir / "tiny"), str(store)]
    rng = random.Random(99)
    kills = []
    for _ in range(2):
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        wait_for = rng.randint(1, 2)  # points finished in this attempt before the kill
        seen = 0
        for line in proc.stdout:
            if line.startswith("point"):
                seen += 1
                if seen >= wait_for:
                    time.sleep(rng.uniform(0, 0.4))  # inside the next point's evaluation or its write
                    break
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(seen)
        proc.wait()
    assert kills, "the sweep finished before it could be killed"
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0 and "done 1" in done.stdout, done.stderr[-2000:]
    resumed = [l.split()[1] for l in done.stdout.splitlines() if l.startswith("point")]
    assert "base" not in resumed and len(resumed) < len(POINTS)  # earlier work was kept, not redone
    code, out = _check(store)
    assert code == 0, out
    with Store(store).connect(read_only=True) as con:
        per_point = dict(con.execute("SELECT point, count(*) FROM evals WHERE run_id = 1 GROUP BY point").fetchall())
        dup = con.execute("SELECT count(*) FROM (SELECT point, task, metric FROM evals GROUP BY ALL "
                          "HAVING count(*) > 1)").fetchone()[0]
        status = con.execute("SELECT status FROM runs WHERE run_id = 1").fetchone()[0]
        base_rows = per_point["base"]
    assert sorted(per_point) == sorted(POINTS) and dup == 0 and status == "complete"
    assert set(per_point.values()) == {base_rows}  # every point has every (task, metric) once
