import torch

from interp.capture.backends import open_backend, transformer_bridge
from interp.capture.batching import pad
from interp.model.sites import parse_sites


def _snapshot(model):
    return ([(n, type(m), id(m)) for n, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()},
            model.config._attn_implementation)


def test_bridge_leaves_the_model_exactly_as_it_was(tiny):
    before = _snapshot(tiny.model)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ref = tiny.model(input_ids=ids).logits
    with transformer_bridge(tiny) as bridge:
        assert type(tiny.model.get_submodule("model.layers")[0]).__name__ != "LlamaDecoderLayer"
        with torch.no_grad():
            torch.testing.assert_close(bridge(ids), ref, rtol=1e-5, atol=1e-5)
    after = _snapshot(tiny.model)
    assert before[0] == after[0] and before[2] == after[2]
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.model.modules())
    with torch.no_grad():
        assert torch.equal(tiny.model(input_ids=ids).logits, ref)


def test_backends_restore_on_error(tiny):
    sites = parse_sites("resid_post", tiny.n_layers)
    batch = pad([[1, 2, 3]], 0)

    def boom(site, x):
        raise RuntimeError("sink failed")

    for name in ("torch", "tl", "nnsight"):
        try:
            with open_backend(tiny, name) as backend:
                backend.run(batch, sites, boom)
        except RuntimeError:
            pass
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.model.modules()), name
        assert type(tiny.model.get_submodule("model.layers")[0]).__name__ == "LlamaDecoderLayer"


def test_bridge_is_booted_once_and_again_when_the_module_tree_changes(tiny, monkeypatch):
    import copy

    import interp.capture.backends as backends

    boots = []
    real = backends._boot
    monkeypatch.setattr(backends, "_boot", lambda loaded: boots.append(1) or real(loaded))
    tiny.bridge_cache = None
    ids = torch.tensor([[5, 6, 7, 8]])
    before = _snapshot(tiny.model)
    outs = []
    for _ in range(2):
        with transformer_bridge(tiny) as bridge, torch.no_grad():
            outs.append(bridge(ids))
        after = _snapshot(tiny.model)
        assert before[0] == after[0] and before[2] == after[2]  # restored after each use
    assert len(boots) == 1 and torch.equal(outs[0], outs[1])
    layers = tiny.model.get_submodule("model.layers")
    old = layers[1]
    layers[1] = copy.deepcopy(old)  # an intervention swapping a block: the cached bridge wraps the old one
    try:
        with torch.no_grad():
            layers[1].mlp.down_proj.weight.mul_(3.0)
            ref = tiny.model(input_ids=ids).logits
        with transformer_bridge(tiny) as bridge, torch.no_grad():
            torch.testing.assert_close(bridge(ids), ref, rtol=1e-5, atol=1e-5)
        assert len(boots) == 2 and not torch.allclose(ref, outs[0])
    finally:
        layers[1] = old
