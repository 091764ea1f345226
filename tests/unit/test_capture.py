import json

import numpy as np
import pytest
import torch

from interp.capture.batching import encode
from interp.capture.capture import CaptureCfg, capture
from store.activations import read_vectors

TEXTS = ["the cat sat on the mat", "hi", "a somewhat longer prompt about gardens and rivers",
         "numbers 1 2 3", "x", "what is the capital of France?", "tell me a story", "end"]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q{i}", "text": t, "label": "a" if i % 2 else "b"})
                              for i, t in enumerate(TEXTS)))
    return str(path)


def _direct(loaded, text, layer):
    """resid_post of ``layer`` for one prompt, by a plain HF forward: the oracle."""
    ids = encode(loaded.tokenizer, [text], loaded.is_chat, 10_000)[0].ids
    with torch.no_grad():
        hs = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    return hs[layer + 1][0].numpy()  # (pos, d)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
@pytest.mark.parametrize("backend", ["torch", "tl", "nnsight"])
def test_vectors_equal_a_plain_forward(request, fixture, backend, store, prompt_file):
    loaded = request.getfixturevalue(fixture)
    run = capture(loaded, store, CaptureCfg(prompts=prompt_file, hooks="resid_post", positions="last,mean,all",
                                            backend=backend, batch_size=3), progress=False)
    with store.connect(read_only=True) as con:
        last_meta, last = read_vectors(con, store, run, "resid_post", [1], "last")
        _, mean = read_vectors(con, store, run, "resid_post", [1], "mean")
        all_meta, every = read_vectors(con, store, run, "resid_post", [1], "all")
    texts = {f"q{i}": t for i, t in enumerate(TEXTS)}
    for i, pid in enumerate(last_meta["prompt_id"]):
        ref = _direct(loaded, texts[pid], 1)
        np.testing.assert_allclose(last[i], ref[-1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(mean[i], ref.mean(0), rtol=1e-4, atol=1e-5)
        rows = every[(all_meta["prompt_id"] == pid).to_numpy()]
        np.testing.assert_allclose(rows, ref, rtol=1e-4, atol=1e-5)


def _all_vectors(store, run, hook="resid_post"):
    with store.connect(read_only=True) as con:
        meta, X = read_vectors(con, store, run, hook, None, "all")
    return meta.reset_index(drop=True), X


def test_batching_padding_and_backend_do_not_change_results(tiny, tmp_path, prompt_file):
    from store import Store

    results = []
    for i, (bs, side, backend) in enumerate([(1, "right", "torch"), (8, "right", "tl"), (3, "left", "nnsight"),
                                             (5, "left", "torch")]):
        s = Store(tmp_path / f"s{i}.duckdb")
        run = capture(tiny, s, CaptureCfg(prompts=prompt_file, hooks="resid_pre,z", positions="all",
                                          backend=backend, batch_size=bs, padding_side=side), progress=False)
        results.append([_all_vectors(s, run, h) for h in ("resid_pre", "z")])
    (ref_pre, ref_z) = results[0]
    for pre, z in results[1:]:
        assert pre[0].equals(ref_pre[0]) and z[0].equals(ref_z[0])
        for (_, a), (_, b) in ((pre, ref_pre), (z, ref_z)):
            rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
            assert rel.max() < 1e-4


def test_z_is_stored_per_head(tiny, store, prompt_file):
    run = capture(tiny, store, CaptureCfg(prompts=prompt_file, hooks="z:2", positions="last", backend="torch"),
                  progress=False)
    with store.connect(read_only=True) as con:
        meta, X = read_vectors(con, store, run, "z", [2], "last")
    assert X.shape == (len(TEXTS) * tiny.n_heads, tiny.d_head)
    assert sorted(meta["head"].unique().tolist()) == list(range(tiny.n_heads))


def test_interrupted_run_resumes_without_duplicates(tiny, store, prompt_file, monkeypatch):
    import interp.capture.capture as cap

    cfg = CaptureCfg(prompts=prompt_file, hooks="resid_post", positions="last", backend="torch", batch_size=2)
    calls = {"n": 0}
    real = cap._Collector.__call__

    def flaky(self, site, x):
        if site.layer == 0:
            calls["n"] += 1
            if calls["n"] == 3:  # third batch: Ctrl-C in the middle of a forward pass
                raise KeyboardInterrupt
        real(self, site, x)

    monkeypatch.setattr(cap._Collector, "__call__", flaky)
    with pytest.raises(KeyboardInterrupt):
        capture(tiny, store, cfg, progress=False)
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM run_prompts").fetchone()[0] == 4  # two batches kept
        assert con.execute("SELECT status FROM runs").fetchone()[0] == "running"
    monkeypatch.setattr(cap._Collector, "__call__", real)
    run = capture(tiny, store, cfg, progress=False)
    again = capture(tiny, store, cfg, progress=False)  # complete: nothing to do
    assert run == again == 1
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT prompt_id) FROM run_prompts").fetchone() == (8, 8)
        n, distinct = con.execute("SELECT count(*), count(DISTINCT (prompt_id, layer)) FROM activations").fetchone()
        assert n == distinct == 8 * tiny.n_layers
        assert con.execute("SELECT status FROM runs").fetchone()[0] == "complete"


def test_bad_capture_config():
    with pytest.raises(ValueError, match="unknown backend"):
        CaptureCfg(backend="jax")
    with pytest.raises(ValueError, match="unknown position"):
        CaptureCfg(positions="first")
