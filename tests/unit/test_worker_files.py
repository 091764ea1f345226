"""The files of Ray capture workers (store.activations.write_part with a worker suffix): the driver
takes the attempt it commits, and a late attempt's file (Ray ran the chunk again after its result
was delivered) is reported by `check` and deleted by `recover()`, never renamed over the committed
shard. No Ray needed: the store side alone."""

import numpy as np
import pandas as pd
import pytest

from interp.data.prompts import Prompt
from store import Store, StoreError
from store.activations import (
    Block,
    commit_parts,
    next_part,
    read_vectors,
    recover,
    take_worker_part,
    worker_suffix,
    write_part,
)
from store.check import check_store
from store.prompts import add_prompts
from store.runs import finish_run, start_run

MODEL = {"model": "m", "revision": "r", "dtype": "float32", "device": "cpu", "n_layers": 2, "d_model": 4}


def _block(value: float) -> list[Block]:
    return [Block("resid_post", 0, "last", ["a", "b"], np.full((2, 4), value, np.float32), np.array([0, 0], np.int32))]


def test_a_late_attempt_never_replaces_the_committed_shard(tmp_path):
    store = Store(tmp_path / "w.duckdb")
    with store.connect() as con:
        add_prompts(con, [Prompt("a", "x", "neutral", "interp", "neutral"), Prompt("b", "y", "neutral", "interp", "neutral")])
        run = start_run(con, kind="cache", model=MODEL, backend="torch", config="{}", config_hash="h",
                        code_version="test").run_id
        part = next_part(con, run)
    first, late = worker_suffix(), worker_suffix()
    assert first != late and first.endswith(".tmp") and not first.endswith(".parquet.tmp")
    shards = [write_part(store, run, "resid_post", 0, part, _block(1.0), durable=False, suffix=first)]
    for s in shards:
        take_worker_part(store, s[3], first)
    tokens = pd.DataFrame({"prompt_id": ["a", "b"], "pos": [0, 0], "token_id": [1, 2], "token": ["x", "y"]})
    commit_parts(store, run, shards, [("a", 1, 0), ("b", 1, 0)], [tokens])
    with store.connect() as con:
        finish_run(con, run)
    write_part(store, run, "resid_post", 0, part, _block(2.0), durable=False, suffix=late)  # Ray ran it again
    problems = check_store(store).problems
    assert [p.check for p in problems] == ["tmp"] and problems[0].repairable
    assert recover(store) == {"renamed": 0, "deleted": 1}
    with store.connect(read_only=True) as con:
        _, X = read_vectors(con, store, run, "resid_post", [0], "last")
    np.testing.assert_array_equal(X, np.ones((2, 4), np.float32))  # the committed attempt, untouched
    assert check_store(store).ok
    with pytest.raises(StoreError, match="every worker must write to the store's shard location"):
        take_worker_part(store, shards[0][3], worker_suffix())
