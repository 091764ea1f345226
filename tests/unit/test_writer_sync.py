"""When the shard writer fsyncs (ActivationWriter ``sync``, CaptureCfg ``sync``): before each
commit by default, once per shard at close with ``end``, never with ``off``; stored vectors and
the run's identity do not depend on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import store.activations as acts
from interp.capture.capture import CaptureCfg
from store.activations import ActivationWriter, Block, read_vectors
from store.runs import start_run

MODEL = {"model": "m", "revision": "r", "dtype": "float32", "device": "cpu", "n_layers": 2, "d_model": 4}


@pytest.mark.parametrize("sync", ["commit", "end", "off"])
def test_sync_modes_fsync_when_they_say(store, monkeypatch, sync):
    synced = []
    monkeypatch.setattr(acts, "_fsync", lambda path: synced.append(path.name))
    with store.connect() as con:
        run = start_run(con, kind="cache", model=MODEL, backend="torch", config="{}", config_hash=sync,
                        code_version="test").run_id
    X = np.arange(24, dtype=np.float32).reshape(6, 4)
    with ActivationWriter(store, run, sync=sync, flush_bytes=1) as w:  # one commit per add
        for i in range(3):
            ids = [f"p{i}a", f"p{i}b"]
            w.add([(p, 1, 0) for p in ids], pd.DataFrame({"prompt_id": ids, "pos": 0, "token_id": 0, "token": "t"}),
                  [Block("resid_post", l, "last", ids, X[2 * i:2 * i + 2] + l, np.zeros(2, np.int32)) for l in range(2)])
        if sync == "end":
            assert synced == []  # nothing before close
    names = sorted(f"part-{p:06d}.parquet" for p in range(3) for _ in range(2))
    want = {"commit": sorted(n + ".tmp" for n in names), "end": names, "off": []}[sync]
    assert sorted(synced) == want
    with store.connect(read_only=True) as con:
        meta, got = read_vectors(con, store, run, "resid_post", [1])
    assert np.array_equal(got, X + 1)


def test_sync_is_checked_and_not_part_of_the_identity():
    with pytest.raises(ValueError, match="unknown sync 'sometimes'"):
        CaptureCfg(sync="sometimes")
    with pytest.raises(ValueError, match="unknown sync"):
        ActivationWriter(None, 1, sync="never")
    assert CaptureCfg(sync="off").identity() == CaptureCfg().identity()
