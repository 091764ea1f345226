"""Layer skipping and layer statistics on the real embedded model (SmolLM2-135M-Instruct), small inputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from analyses import layer_similarity
from interp.capture.batching import encode
from interp.capture.capture import CaptureCfg, capture
from interp.interventions.layers import LayerDrop, skip_layers

pytestmark = pytest.mark.integration


def _checksums(model) -> dict[str, float]:
    return {k: float(v.double().sum()) for k, v in model.state_dict().items()}


def _pruned_copy(loaded, drop):
    """The obvious reference: a deep copy with the dropped blocks deleted and the config shrunk."""
    ref = copy.deepcopy(loaded.model)
    layers = ref.get_submodule(loaded.arch.layers)
    kept = [layers[i] for i in range(len(layers)) if i not in drop]
    for j, blk in enumerate(kept):
        blk.self_attn.layer_idx = j
    ref.model.layers = torch.nn.ModuleList(kept)
    ref.config.num_hidden_layers = len(kept)
    if getattr(ref.config, "layer_types", None):
        ref.config.layer_types = [t for i, t in enumerate(ref.config.layer_types) if i not in drop]
    return ref


def test_skip_on_the_embedded_model_matches_a_pruned_copy_and_generates(embedded):
    tok = embedded.tokenizer
    ids = torch.tensor([encode(tok, ["The capital of France is"], False, 64)[0].ids])
    before_sums = _checksums(embedded.model)
    with torch.no_grad():
        base = embedded.model(input_ids=ids).logits
    drop = [0, 24, 25, 26]
    ref = _pruned_copy(embedded, drop)
    prompt = torch.tensor([encode(tok, ["Name a large animal that lives in the sea."], True, 64)[0].ids])
    gen = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with torch.no_grad():
        with LayerDrop(tuple(drop)).apply(embedded):
            got = embedded.model(input_ids=ids).logits
            cached = embedded.model.generate(input_ids=prompt, **gen)
            uncached = embedded.model.generate(input_ids=prompt, use_cache=False, **gen)
        want = ref(input_ids=ids).logits
        ref_gen = ref.generate(input_ids=prompt, **gen)
        after = embedded.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert torch.equal(cached, uncached) and torch.equal(cached, ref_gen)
    assert cached.shape[1] > prompt.shape[1]
    assert not torch.allclose(got, base, atol=1e-3)
    assert torch.equal(after, base)  # restored exactly
    assert _checksums(embedded.model) == before_sums
    assert embedded.n_layers == 30 and embedded.model.config.num_hidden_layers == 30


def test_dropping_the_first_layer_hurts_more_than_a_middle_one(embedded):
    """The literature's first finding, on a few hundred tokens: layer 0 is indispensable."""
    from interp.data.prompts import book_corpus

    text = " ".join(book_corpus()[:6])
    ids = torch.tensor([embedded.tokenizer(text)["input_ids"][:192]])
    losses = {}
    with torch.no_grad():
        for drop in ([], [0], [15]):
            with skip_layers(embedded, drop):
                losses[tuple(drop)] = float(embedded.model(input_ids=ids, labels=ids).loss)
    assert losses[(0,)] > losses[(15,)] > losses[()]
    assert losses[(0,)] - losses[()] > 3 * (losses[(15,)] - losses[()])


def test_layer_statistics_from_real_activations(embedded, store):
    run = capture(embedded, store, CaptureCfg(prompts="book", hooks="resid_pre,resid_post:29",
                                              positions="last,mean,all", backend="torch", limit=6, chat=False,
                                              max_tokens=48), progress=False)
    with store.connect(read_only=True) as con:
        tables = layer_similarity.run(con, store, run)
    sim = tables["similarity"]
    assert set(sim["position"]) == {"last", "mean", "tokens"}
    mats = {p: sim[sim["position"] == p].pivot(index="layer_a", columns="layer_b", values="cosine").to_numpy()
            for p in ("last", "mean", "tokens")}
    for m in mats.values():
        assert m.shape == (31, 31)
        np.testing.assert_allclose(m, m.T, atol=1e-12)
        np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
    last = mats["last"]
    ang = tables["angular"]
    assert ang["distance"].between(0, 1).all()
    assert len(ang[ang["best"]]) == 2 * 30  # last and mean: Gromov's rule takes one vector per prompt
    # a residual stream drifts: neighbouring states are more alike than states 10 layers apart
    for m in (last, mats["tokens"]):
        near = np.mean([m[l, l + 1] for l in range(1, 20)])
        far = np.mean([m[l, l + 10] for l in range(1, 20)])
        assert near > far
    # the per-token average (tokens) is a different statistic from the cosine of token means (mean)
    assert np.abs(mats["mean"] - mats["tokens"]).max() > 1e-3
    bi = tables["influence"]
    assert bi["block_influence"].between(0, 2).all() and len(bi) == 90


def test_healing_the_embedded_model_changes_it_only_inside(embedded):
    from interp.interventions.heal import HealCfg
    from interp.interventions.layers import HealedDrop

    ids = torch.tensor([embedded.tokenizer("It was a dark and stormy night; the rain fell")["input_ids"]])
    before = _checksums(embedded.model)
    spec = HealedDrop((20, 21), HealCfg(steps=2, batch=1, window=64, lr=1e-3, holdout_tokens=256))
    with torch.no_grad():
        with LayerDrop((20, 21)).apply(embedded):
            dropped = embedded.model(input_ids=ids).logits
        with spec.apply(embedded) as made:
            healed = embedded.model(input_ids=ids).logits
        after = embedded.model(input_ids=ids).logits
    log = made.log
    assert list(log["step"]) == [1, 2] and log["loss"].notna().all()
    assert not torch.allclose(healed, dropped, atol=1e-4)
    assert _checksums(embedded.model) == before
    assert not any(p.requires_grad for p in embedded.model.parameters())
    assert "lora" not in " ".join(n for n, _ in embedded.model.named_modules())
    assert after.shape == healed.shape
