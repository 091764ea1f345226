"""Where a store's data lives: one shard directory per store, copies and moves that read their own
shards (read-only opens included), paths with glob characters, and one process per run."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from interp.capture.capture import CaptureCfg, capture
from store import Store, StoreError
from store.activations import read_vectors
from store.check import check_store
from store.runs import finish_run, start_run
from store.sql import run_sql


@pytest.fixture(scope="module")
def tiny_model():
    from interp.model.loading import wrap
    from tests.conftest import byte_tokenizer, tiny_llama

    return wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")


def _prompts(path, texts):
    path.write_text("\n".join(json.dumps({"id": f"{path.stem}{i}", "text": t}) for i, t in enumerate(texts)))
    return str(path)


def _cfg(prompt_file):
    return CaptureCfg(prompts=prompt_file, hooks="resid_post:0-1", positions="last", backend="torch", batch_size=2,
                      flush_mb=0)


def _count(store):
    return int(run_sql(store, "SELECT count(*) AS n FROM activations")["n"][0])


def test_two_stores_cannot_share_a_shard_directory(tiny_model, tmp_path):
    """`--store X.duckdb` and `--store X` both map to X.shards: the second is refused, nothing mixed."""
    a, b = Store(tmp_path / "X.duckdb"), Store(tmp_path / "X")
    assert a.shard_dir == b.shard_dir
    p = _prompts(tmp_path / "p.jsonl", ["one two", "three"])
    capture(tiny_model, a, _cfg(p), progress=False)
    before = _count(a)
    with pytest.raises(StoreError, match="belongs to another store") as e:
        capture(tiny_model, b, _cfg(p), progress=False)
    assert "\n" not in str(e.value)
    assert _count(a) == before and check_store(a).ok
    with pytest.raises(StoreError, match="belongs to another store"):  # read-only opens too
        with b.connect(read_only=True):
            pass


def test_a_copied_store_reads_its_own_shards(tiny_model, tmp_path):
    base, copy = Store(tmp_path / "base.duckdb"), Store(tmp_path / "copy.duckdb")
    p = _prompts(tmp_path / "p.jsonl", ["one two", "three", "four five six"])
    capture(tiny_model, base, _cfg(p), progress=False)
    shutil.copy(base.path, copy.path)
    shutil.copytree(base.shard_dir, copy.shard_dir)
    n = _count(copy)  # read-only, before any writing task opened the copy
    assert n == _count(base) == 6
    # base grows; the copy still counts its own rows
    capture(tiny_model, base, _cfg(_prompts(tmp_path / "q.jsonl", ["more", "and more"])), progress=False)
    assert _count(base) == 10 and _count(copy) == 6
    # base's shards move away: the copy does not notice, and its check is clean
    shutil.move(base.shard_dir, tmp_path / "elsewhere")
    assert check_store(copy).ok and _count(copy) == 6
    with copy.connect(read_only=True) as con:
        meta, X = read_vectors(con, copy, 1, "resid_post", [1], "last")
    assert len(meta) == 3 and np.isfinite(X).all()


def test_a_moved_store_just_works(tiny_model, tmp_path):
    old = Store(tmp_path / "a" / "s.duckdb")
    p = _prompts(tmp_path / "p.jsonl", ["one two", "three"])
    capture(tiny_model, old, _cfg(p), progress=False)
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = Store(tmp_path / "b" / "s.duckdb")
    assert _count(moved) == 4 and check_store(moved).ok
    assert capture(tiny_model, moved, _cfg(p), progress=False) == 1  # the same run, found complete


@pytest.mark.parametrize("name", ["we[ir]d", "what?", "star*s"])
def test_store_paths_with_glob_characters(tiny_model, tmp_path, name):
    decoy = Store(tmp_path / "whatX.duckdb")  # 'what?' as a glob would also match whatX.shards
    p = _prompts(tmp_path / "p.jsonl", ["one two", "three"])
    if name == "what?":
        capture(tiny_model, decoy, _cfg(_prompts(tmp_path / "d.jsonl", ["a", "b", "c"])), progress=False)
    store = Store(tmp_path / f"{name}.duckdb")
    capture(tiny_model, store, _cfg(p), progress=False)
    assert _count(store) == 4 and check_store(store).ok


# --- one process per run -------------------------------------------------------------------

_HOLDER = """
import sys, time
from store import Store
from store.runs import start_run
store = Store(sys.argv[1])
with store.connect() as con:
    run = start_run(con, kind="eval", model={"model": "m", "revision": "r", "dtype": "float32", "device": "cpu",
                    "n_layers": 2, "d_model": 8}, backend=None, config="{}", config_hash="h", code_version="t")
print(run.run_id, flush=True)
time.sleep(60)
"""
MODEL = {"model": "m", "revision": "r", "dtype": "float32", "device": "cpu", "n_layers": 2, "d_model": 8}


def test_a_run_is_computed_by_one_process_at_a_time(tmp_path):
    store = Store(tmp_path / "claims.duckdb")
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(store.path)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "1"
        with store.connect() as con:
            with pytest.raises(StoreError, match=rf"run 1 \(eval\) of claims.duckdb is being computed by process "
                                                 rf"{holder.pid} right now: wait for it to finish") as e:
                start_run(con, kind="eval", model=MODEL, backend=None, config="{}", config_hash="h",
                          code_version="t")
        assert "\n" not in str(e.value)
        report = check_store(store)  # the live run is not reported as stuck
        assert report.ok and report.writer_pid == holder.pid
    finally:
        holder.kill()  # a crash releases the claim
        holder.wait()
    deadline = time.monotonic() + 10
    with store.connect() as con:
        while True:
            try:
                run = start_run(con, kind="eval", model=MODEL, backend=None, config="{}", config_hash="h",
                                code_version="t")
                break
            except StoreError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert (run.run_id, run.status) == (1, "running")  # resumed, not duplicated
        finish_run(con, run.run_id)
    assert {f.check for f in check_store(store).problems} == set()
