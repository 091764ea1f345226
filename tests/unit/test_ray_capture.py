"""`invoke cache --workers N` on a local Ray: the same store as one process (identity, prompts,
vectors to 1e-5), a killed worker restarted without loss, a killed driver resumed without loss or
duplicates, and every Ray process gone afterwards (found and, if need be, ended by pid).

Ray runs in a private temporary directory per test (TMPDIR): short, because Ray's socket paths
must fit in 107 bytes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'interp[ray]'")
psutil = pytest.importorskip("psutil")

# after the importorskip above on purpose: these modules need Ray
from interp.capture.capture import CaptureCfg, _capture_prompts, capture  # noqa: E402
from interp.capture.ray_capture import capture_ray, plan_chunks  # noqa: E402
from interp.capture.ray_session import RayCfg, _reachable, end_orphans, placement  # noqa: E402
from interp.model.loading import ModelCfg, load_model  # noqa: E402
from store import Store, StoreError  # noqa: E402
from store.activations import read_vectors  # noqa: E402
from store.check import check_store  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
N_PROMPTS = 64
HOOKS, POSITIONS = "resid_post,z:2", "last,all"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The tiny model saved to a directory (every worker loads it), a prompt file, and the store
    one process writes from them: the reference every Ray run is compared with."""
    from interp.model.loading import wrap
    from tests.conftest import byte_tokenizer, tiny_llama, word_prompts

    d = tmp_path_factory.mktemp("ray")
    tiny = wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")
    tiny.model.save_pretrained(d / "tiny")
    tiny.tokenizer.save_pretrained(d / "tiny")
    word_prompts(d / "p.jsonl", N_PROMPTS)
    ref = Store(d / "one.duckdb")
    capture(load_model(str(d / "tiny")), ref, _cfg(d, batch_size=8), progress=False)
    return d, ref


def _cfg(d: Path, batch_size: int = 2) -> CaptureCfg:
    return CaptureCfg(prompts=str(d / "p.jsonl"), hooks=HOOKS, positions=POSITIONS, backend="torch",
                      batch_size=batch_size, flush_mb=0)


@pytest.fixture
def ray_tmp(monkeypatch):
    """A private, short temporary directory for Ray (checked empty and removed afterwards)."""
    path = tempfile.mkdtemp(prefix="r", dir="/tmp")
    monkeypatch.setenv("TMPDIR", path)
    monkeypatch.setattr(tempfile, "tempdir", None)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _same_store(store: Store, ref: Store) -> None:
    """One run with the reference's identity and prompts, every vector once and equal to 1e-5."""
    with store.connect(read_only=True) as con, ref.connect(read_only=True) as rcon:
        q = "SELECT run_id, config_hash, status FROM runs"
        assert con.execute(q).fetchall() == rcon.execute(q).fetchall()
        q = "SELECT prompt_id, n_tokens, truncated FROM run_prompts ORDER BY prompt_id"
        assert con.execute(q).fetchall() == rcon.execute(q).fetchall()
        q = "SELECT count(*) FROM tokens"
        assert con.execute(q).fetchone() == rcon.execute(q).fetchone()
        dups = con.execute("SELECT count(*) FROM (SELECT hook, layer, prompt_id, reduce, pos, head FROM activations "
                           "GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
        assert dups == 0
        for hook in ("resid_post", "z"):
            for reduce in ("last", "all"):
                meta, X = read_vectors(con, store, 1, hook, None, reduce)
                meta2, X2 = read_vectors(rcon, ref, 1, hook, None, reduce)
                assert meta.equals(meta2)
                np.testing.assert_allclose(X, X2, rtol=1e-5, atol=1e-5)


def _capture_prompts_first(n, loaded, store, cfg, config, sites, run_id, todo, total, progress):
    _capture_prompts(loaded, store, cfg, config, sites, run_id, todo[:n], total, progress)


def _descendants(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _end(procs: list, timeout: float = 30.0) -> list:
    """Wait for ``procs`` to exit; end the survivors by pid. Returns the survivors' command lines."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    survivors = []
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            survivors.append(" ".join(p.cmdline())[:80])
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    return survivors


def _invoke(*args) -> list[str]:
    return [sys.executable, "-m", "invoke", *args]


def _cache_cmd(d: Path, store: Path) -> list[str]:
    return _invoke("cache", "--model", str(d / "tiny"), "--store", str(store), "--prompts", str(d / "p.jsonl"),
                   "--hooks", HOOKS, "--positions", POSITIONS, "--backend", "torch", "--batch-size", "2",
                   "--flush-mb", "0", "--workers", "2")


def _check(store: Store) -> list[str]:
    """What `invoke check` prints as problems (the same function, in this process)."""
    return [f"{f.check}: {f.message}" for f in check_store(store).problems]


def _start(d: Path, store: Store, env: dict) -> subprocess.Popen:
    """`invoke cache --workers 2` in a child process, its output in ``<store>.log``."""
    with open(store.path.with_suffix(".log"), "w") as log:
        return subprocess.Popen(_cache_cmd(d, store.path), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _output(store: Store) -> str:
    return store.path.with_suffix(".log").read_text()[-2000:]


def _wait_for_commit(proc, store: Store, timeout: float = 150.0) -> None:
    layer0 = store.shard_dir / "run_id=1" / "hook=resid_post" / "layer=0"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if list(layer0.glob("part-*.parquet")):
            return
        time.sleep(0.05)
    raise AssertionError(f"no commit within {timeout} s (exit status {proc.poll()}): {_output(store)}")


def test_plan_and_placement():
    # whole batches, about flush_bytes each, at least two chunks per worker
    chunks = plan_chunks([10] * 100, 4, 1000.0, 0.0, 10_000, 2)
    assert all(len(c) % 4 == 0 for c in chunks[:-1]) and sum(map(len, chunks)) == 100
    assert len(chunks[0]) == 12 and len(chunks) == 9
    assert len(plan_chunks([10] * 100, 4, 1.0, 0.0, 1 << 30, 2)[0]) == 28  # ceil(100 / 4) up to whole batches
    assert placement({"CPU": 2.0}, RayCfg(workers=2), local=True) == (0.5, 0.0)
    assert placement({"CPU": 16.0, "GPU": 4.0}, RayCfg(workers=4), local=False) == (1.0, 1.0)
    with pytest.raises(ValueError, match="needs 4 GPUs"):
        placement({"CPU": 16.0, "GPU": 2.0}, RayCfg(workers=4), local=False)
    with pytest.raises(ValueError, match="leave Ray Data no CPU"):
        placement({"CPU": 2.0}, RayCfg(workers=2, cpus=1.0), local=True)
    with pytest.raises(RuntimeError, match="no Ray cluster answers at 127.0.0.1:9"):
        _reachable("127.0.0.1:9", timeout=2.0)  # at once, where ray.init would retry for minutes


def test_two_workers_write_the_store_one_process_writes(work, ray_tmp):
    d, ref = work
    store = Store(d / "two.duckdb")
    # one process stores the first 30 prompts and is stopped; the pool resumes the same run
    half = partial(_capture_prompts_first, 30)
    with pytest.raises(StoreError, match="missing prompts"):
        capture(load_model(str(d / "tiny")), store, _cfg(d), progress=False, loop=half)
    run = capture_ray(ModelCfg(str(d / "tiny")), store, _cfg(d, batch_size=4), RayCfg(workers=2), progress=False)
    assert run == 1
    _same_store(store, ref)
    assert os.listdir(ray_tmp) == []  # Ray's session directory removed
    assert not [p for p in _descendants(os.getpid()) if "ray" in " ".join(p.cmdline())]


def test_killed_worker_is_restarted_and_nothing_is_lost(work, ray_tmp):
    d, ref = work
    store = Store(d / "worker.duckdb")
    env = {**os.environ, "TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    proc = _start(d, store, env)
    try:
        _wait_for_commit(proc, store)
        workers = [p for p in _descendants(proc.pid) if "CaptureWorker" in " ".join(p.cmdline())]
        assert workers, "no Ray worker found while the run was going"
        os.kill(workers[0].pid, signal.SIGKILL)
        proc.wait(timeout=180)
    finally:
        rest = _descendants(proc.pid)
        proc.kill()
        _end(rest, timeout=5)
    assert proc.returncode == 0, _output(store)
    assert _check(store) == []
    _same_store(store, ref)


def test_killed_driver_leaves_a_store_check_accepts_and_a_rerun_completes(work, ray_tmp):
    d, ref = work
    store = Store(d / "driver.duckdb")
    env = {**os.environ, "TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    proc = _start(d, store, env)
    _wait_for_commit(proc, store)
    ray_procs = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(ray_procs, timeout=10)  # Ray's core processes end with their driver
    assert all("gcs_server" not in " ".join(p.cmdline()) for p in alive if p.is_running())
    ended = end_orphans(ray_tmp)  # what the next local Ray session does first: Ray's agents, by pid
    assert not _end(alive, timeout=10), f"Ray processes outlived their driver and end_orphans: {ended}"
    assert not list(Path(ray_tmp).glob("ray-*"))
    # what the kill left: an interrupted run and perhaps uncommitted .tmp files, nothing else
    problems = _check(store)
    assert problems and all(p.split(":")[0] in ("runs", "tmp") for p in problems), problems
    with store.connect(read_only=True) as con:
        assert 0 < con.execute("SELECT count(*) FROM run_prompts").fetchone()[0] < N_PROMPTS
    # the same capture in one process resumes it: --workers is not part of the run's identity
    assert capture(load_model(str(d / "tiny")), store, _cfg(d), progress=False) == 1
    assert _check(store) == []
    _same_store(store, ref)
