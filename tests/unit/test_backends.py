import torch

from interp.backends import open_backend, transformer_bridge
from interp.batching import pad
from interp.sites import parse_sites


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
