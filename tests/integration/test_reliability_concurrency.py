"""A reader (SQL, the vector reader, `invoke sql`, `invoke check`) while a cache run writes:
two processes, every snapshot consistent, the writer never disturbed."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store import Store
from store.activations import read_vectors
from store.check import check_store

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
N_PROMPTS = 160


def test_read_while_a_cache_run_writes(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "tiny")
    tiny.tokenizer.save_pretrained(tmp_path / "tiny")
    words = ["river", "garden", "stone", "light", "paper", "window", "music", "field", "cloud", "number"]
    rng = random.Random(0)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"p{i:03d}", "text": " ".join(rng.choices(words, k=rng.randint(2, 40)))})
                                 for i in range(N_PROMPTS)))
    store = Store(tmp_path / "live.duckdb")
    writer = subprocess.Popen(
        [sys.executable, "-m", "invoke", "cache", "--model", str(tmp_path / "tiny"), "--store", str(store.path),
         "--prompts", str(prompts), "--hooks", "resid_post", "--positions", "last,all", "--backend", "torch",
         "--batch-size", "2", "--flush-mb", "0"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    snapshots, cli_reads, checks = [], [], []
    try:
        while writer.poll() is None:
            if not store.path.exists():
                time.sleep(0.05)
                continue
            try:
                with store.connect(read_only=True, wait_s=60) as con:  # one snapshot
                    done = con.execute("SELECT count(*) FROM run_prompts").fetchone()[0]
                    view = dict(con.execute("SELECT reduce, count(*) FROM activations WHERE hook = 'resid_post' "
                                            "AND layer = 3 GROUP BY ALL").fetchall())
                    tokens = con.execute("SELECT coalesce(sum(n_tokens), 0) FROM run_prompts").fetchone()[0]
                    meta = read_vectors(con, store, 1, "resid_post", [0], "last")[0] if done else None
            except Exception as e:  # the schema may not exist in the first instant
                if "no run 1" in str(e) or "interp store" in str(e):
                    continue
                raise
            snapshots.append((done, view.get("last", 0), view.get("all", 0), tokens,
                              None if meta is None else len(meta)))
            mid_so_far = sum(0 < s[0] < N_PROMPTS for s in snapshots)
            # the slow readers (a CLI process, a full check) start once the fast ones have seen
            # the run move: on a loaded 2-core machine they can outlast a short write otherwise
            if 0 < done < N_PROMPTS and mid_so_far >= 3 and len(cli_reads) < 2:
                r = subprocess.run([sys.executable, "-m", "invoke", "sql", "--store", str(store.path), "--format",
                                    "csv", "SELECT count(*) AS n FROM run_prompts"],
                                   cwd=REPO, env=ENV, capture_output=True, text=True)
                assert r.returncode == 0, r.stderr
                cli_reads.append(int(r.stdout.split()[-1]))
            if 0 < done < N_PROMPTS and mid_so_far >= 3 and not checks:
                checks.append(check_store(store))
            time.sleep(0.02)  # a reader that never lets go would hold the writer off
        _out, err = writer.communicate(timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err[-2000:]
    mid = [s for s in snapshots if 0 < s[0] < N_PROMPTS]
    assert len(mid) >= 3, f"too few reads during the run: {snapshots[:5]}"
    print(f"{len(snapshots)} snapshots, {len(mid)} during the run")
    for done, last, every, tokens, read in snapshots:  # each snapshot is a consistent commit boundary
        assert last == done and every == tokens and read in (None, done)
    counts = [s[0] for s in snapshots]
    assert counts == sorted(counts)  # readers never see a commit disappear
    assert cli_reads and all(0 < n <= N_PROMPTS for n in cli_reads)
    assert checks and checks[0].ok and checks[0].writer_pid is not None  # the live run was left alone
    assert check_store(store).ok
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT prompt_id), count(*) FROM run_prompts").fetchone() == \
            (N_PROMPTS, N_PROMPTS)
