"""Layer skipping on tiny Llama and GPT-2 models: against hand-built pruned models, with and
without the KV cache, and the model restored bit-identically."""

from __future__ import annotations

import copy

import pytest
import torch

from interp.interventions import from_json, to_json
from interp.interventions.layers import LayerDrop, LayerDropError, layer_label, skip_layers


def hand_built(loaded, drop: list[int]):
    """The slow, obvious reference: a fresh model of the same class with fewer layers and the
    kept layers' weights copied in order."""
    model = loaded.model
    cfg = copy.deepcopy(model.config)
    kept = [i for i in range(loaded.n_layers) if i not in drop]
    cfg.num_hidden_layers = len(kept)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    new = type(model)(cfg)
    prefix = loaded.arch.layers + "."
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith(prefix):
            i, rest = k[len(prefix):].split(".", 1)
            if int(i) in drop:
                continue
            k = f"{prefix}{kept.index(int(i))}.{rest}"
        state[k] = v
    new.load_state_dict(state, strict=True)
    return new.eval()


def _ids(seed: int = 0, batch: int = 3, pos: int = 9) -> torch.Tensor:
    return torch.randint(0, 256, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _generate(model, ids, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                              do_sample=False, pad_token_id=256, **kw)


def _snapshot(loaded) -> dict:
    m = loaded.model
    return {
        "state": {k: v.detach().clone() for k, v in m.state_dict().items()},
        "layers": m.get_submodule(loaded.arch.layers),
        "blocks": list(m.get_submodule(loaded.arch.layers)),
        "idx": [(mod, mod.layer_idx) for mod in m.modules() if isinstance(getattr(mod, "layer_idx", None), int)],
        "config": m.config.to_dict(),
    }


def _assert_restored(loaded, snap: dict) -> None:
    m = loaded.model
    state = m.state_dict()
    assert state.keys() == snap["state"].keys()
    for k, v in snap["state"].items():
        assert torch.equal(state[k], v), k
    assert m.get_submodule(loaded.arch.layers) is snap["layers"]
    assert list(m.get_submodule(loaded.arch.layers)) == snap["blocks"]
    assert all(mod.layer_idx == idx for mod, idx in snap["idx"])
    assert m.config.to_dict() == snap["config"]
    assert loaded.n_layers == len(snap["blocks"])


def tiny_qwen3_sliding():
    """A 4-layer Qwen3 whose last two layers use sliding-window attention: per-layer cache types."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from interp.model.loading import wrap
    from tests.conftest import byte_tokenizer

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      use_sliding_window=True, sliding_window=4, max_window_layers=2, pad_token_id=256,
                      bos_token_id=257, eos_token_id=258, tie_word_embeddings=True)
    return wrap(Qwen3ForCausalLM(cfg), byte_tokenizer(), name="tiny-qwen3", revision="seed0")


@pytest.fixture(params=["llama", "gpt2", "qwen3"])
def model(request, tiny, tiny_gpt):
    return {"llama": tiny, "gpt2": tiny_gpt}.get(request.param) or tiny_qwen3_sliding()


def test_sliding_window_layer_types_follow_the_kept_layers():
    loaded = tiny_qwen3_sliding()
    assert loaded.model.config.layer_types == ["full_attention", "full_attention", "sliding_attention",
                                               "sliding_attention"]
    with skip_layers(loaded, [1, 2]):
        assert loaded.model.config.layer_types == ["full_attention", "sliding_attention"]
    assert loaded.model.config.layer_types[1:3] == ["full_attention", "sliding_attention"]


def test_skipping_no_layers_leaves_logits_unchanged(model):
    ids = _ids()
    before = _logits(model.model, ids)
    with skip_layers(model, []):
        inside = _logits(model.model, ids)
    with LayerDrop(()).apply(model):
        inside2 = _logits(model.model, ids)
    assert torch.equal(before, inside) and torch.equal(before, inside2)


def test_skipping_each_layer_equals_a_hand_built_model_without_it(model):
    ids = _ids(1)
    for k in range(model.n_layers):
        ref = _logits(hand_built(model, [k]), ids)
        with skip_layers(model, [k]):
            got = _logits(model.model, ids)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
        assert not torch.allclose(got, _logits(model.model, ids), atol=1e-4), "dropping a layer changed nothing"


@pytest.mark.parametrize("drop", [[0, 1], [1, 2], [0, 2]])
def test_skipping_several_layers_equals_hand_built(model, drop):
    ids = _ids(2)
    with skip_layers(model, drop):
        got = _logits(model.model, ids)
    torch.testing.assert_close(got, _logits(hand_built(model, drop), ids), rtol=0, atol=1e-6)


def test_generation_with_kv_cache_matches_hand_built_and_no_cache(model):
    """Layer indices are renumbered for the cache: with layer 0 dropped, a cache indexed by the
    old numbers would report length 0 and shift every position after the prompt."""
    ids = _ids(3, batch=2, pos=6)
    n_layers = model.n_layers
    for drop in ([0], [n_layers - 1], [0, n_layers - 2]):
        ref = hand_built(model, drop)
        with skip_layers(model, drop):
            cached = _generate(model.model, ids)
            uncached = _generate(model.model, ids, use_cache=False)
            with torch.no_grad():
                out = model.model(input_ids=ids, use_cache=True)
            assert model.n_layers == n_layers - len(drop)  # the pruned stack, while inside
            assert len(out.past_key_values.layers) == n_layers - len(drop)
            assert out.past_key_values.get_seq_length() == ids.shape[1]
        assert torch.equal(cached, _generate(ref, ids))
        assert torch.equal(cached, uncached)
        assert cached.shape[1] == ids.shape[1] + 8


def test_model_restored_bit_identically_also_after_an_error(model):
    snap = _snapshot(model)
    before = _logits(model.model, _ids(4))
    with skip_layers(model, [1]):
        _generate(model.model, _ids(4, batch=1))
    _assert_restored(model, snap)
    with pytest.raises(RuntimeError, match="boom"), LayerDrop((0, 2)).apply(model):
        assert model.n_layers == model.model.config.num_hidden_layers
        raise RuntimeError("boom")
    _assert_restored(model, snap)
    assert torch.equal(_logits(model.model, _ids(4)), before)


def test_nested_skips_compose_and_restore(tiny):
    snap = _snapshot(tiny)
    ids = _ids(5)
    # the second skip enters inside the first: its index 0 is the pruned stack's, i.e. original layer 1
    with skip_layers(tiny, [0]), skip_layers(tiny, [0]):
        got = _logits(tiny.model, ids)
    torch.testing.assert_close(got, _logits(hand_built(tiny, [0, 1]), ids), rtol=0, atol=1e-6)
    _assert_restored(tiny, snap)


def test_layer_drop_is_a_stored_value():
    spec = LayerDrop([27, 20, 21, 22, 21])
    assert spec.layers == (20, 21, 22, 27)
    assert spec.label() == "drop[20-22,27]"
    assert from_json(to_json(spec)) == spec
    assert to_json(spec) == '{"kind":"layer_drop","layers":[20,21,22,27]}'
    assert layer_label([5]) == "5" and layer_label([0, 1, 2, 3]) == "0-3" and layer_label([]) == ""


def test_bad_layer_sets_are_refused_with_a_clear_message(tiny):
    with pytest.raises(LayerDropError, match="out of range: this model has layers 0..3"), skip_layers(tiny, [4]):
        pass
    with pytest.raises(LayerDropError, match="cannot drop all 4 layers"), skip_layers(tiny, [0, 1, 2, 3]):
        pass
    with pytest.raises(LayerDropError, match="not a whole number"):
        LayerDrop((1.5,))
    with pytest.raises(LayerDropError, match="not a whole number"):
        LayerDrop((True,))
    with pytest.raises(LayerDropError, match="list of layer indices"):
        LayerDrop("3")
    with pytest.raises(LayerDropError, match="out of range"):
        LayerDrop((-1,))
    assert tiny.n_layers == 4
