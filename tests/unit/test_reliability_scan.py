"""Streaming a run part by part (store.scan) gives exactly what the whole-run reader gives."""

import json

import numpy as np
import pytest

from interp.capture.capture import CaptureCfg, capture
from store import StoreError
from store.activations import read_vectors
from store.scan import iter_parts

TEXTS = [f"prompt number {i} " + "word " * (i % 7) for i in range(11)]


@pytest.fixture
def run(tiny, store, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q{i:02d}", "text": t}) for i, t in enumerate(TEXTS)))
    run = capture(tiny, store, CaptureCfg(prompts=str(path), hooks="resid_pre,resid_post:3,z:1", positions="last,mean",
                                          backend="torch", batch_size=3, flush_mb=0), progress=False)
    return store, run


@pytest.mark.parametrize("reduce", ["last", "mean"])
def test_parts_line_up_and_match_the_reader(run, reduce):
    store, run_id = run
    sites = [("resid_pre", l) for l in range(4)] + [("resid_post", 3)]
    got: dict[tuple[str, int], dict[str, np.ndarray]] = {s: {} for s in sites}
    n_parts = 0
    with store.connect(read_only=True) as con:
        for ids, X in iter_parts(con, store, run_id, sites, reduce):
            n_parts += 1
            assert X.shape == (len(sites), len(ids), 64) and len(ids) <= 3
            for k, site in enumerate(sites):  # plain loops: every row to its (site, prompt)
                for i, pid in enumerate(ids):
                    assert pid not in got[site]
                    got[site][pid] = X[k, i]
        assert n_parts == 4  # 11 prompts in batches of 3, one commit each
        for hook, layer in sites:
            meta, ref = read_vectors(con, store, run_id, hook, [layer], reduce)
            np.testing.assert_array_equal(np.stack([got[(hook, layer)][p] for p in meta["prompt_id"]]), ref)


def test_bad_streams_are_refused(run):
    store, run_id = run
    with store.connect(read_only=True) as con:
        with pytest.raises(StoreError, match="one vector per prompt"):
            next(iter_parts(con, store, run_id, [("resid_pre", 0)], "all"))
        with pytest.raises(StoreError, match="has none of the sites"):
            next(iter_parts(con, store, run_id, [("mlp_out", 0)]))
        with pytest.raises(StoreError, match="lacks"):
            next(iter_parts(con, store, run_id, [("resid_pre", 0), ("resid_post", 0)]))


def test_streamed_similarity_equals_the_in_memory_analysis(run):
    """The scaling benchmark's streamed layer similarity against the layer study's analysis."""
    import importlib.util
    from pathlib import Path

    from analyses import layer_similarity

    spec = importlib.util.spec_from_file_location("scaling", Path(__file__).parents[2] / "bench" / "scaling.py")
    scaling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scaling)
    store, run_id = run
    for position in ("last", "mean"):
        cos, ang, n = scaling.stream_similarity(store, run_id, 4, position)
        with store.connect(read_only=True) as con:
            sim = layer_similarity.run(con, store, run_id, positions=(position,))["similarity"]
        assert n == len(TEXTS)
        np.testing.assert_allclose(cos[sim["layer_a"], sim["layer_b"]], sim["cosine"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ang[sim["layer_a"], sim["layer_b"]], sim["angular"], rtol=0, atol=1e-12)
