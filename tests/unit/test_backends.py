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


def test_no_backend_runs_the_unembedding_and_all_agree_at_the_last_layer(tiny):
    """Capturing the last block stops there in every backend (TransformerLens's stop_at_layer did
    not: the tl backend ran the final norm and the unembedding) and gives the same vectors."""
    sites = parse_sites(f"resid_post:{tiny.n_layers - 1},z:{tiny.n_layers - 1}", tiny.n_layers)
    batch = pad([[1, 2, 3, 4], [5, 6]], 0)
    calls = []
    got = {}
    for name in ("torch", "tl", "nnsight"):
        handle = tiny.model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(name))
        try:
            with open_backend(tiny, name) as backend:
                out = {}
                backend.run(batch, sites, lambda s, x: out.__setitem__(s, x.clone()))
        finally:
            handle.remove()
        got[name] = out
    assert calls == []
    real = batch.attention_mask.bool()
    for name in ("tl", "nnsight"):
        for s in sites:
            torch.testing.assert_close(got[name][s][real], got["torch"][s][real], rtol=1e-5, atol=1e-5)


def test_nnsight_backend_works_after_a_users_own_nnsight_wrapper(tiny):
    from nnsight import TransformersModel

    from interp.capture.backends import own_forwards

    sites = parse_sites("resid_post", tiny.n_layers)
    batch = pad([[1, 2, 3]], 0)
    with own_forwards(tiny.model):  # the user's wrapper, then its forwards put back
        lm = TransformersModel(tiny.model, tokenizer=tiny.tokenizer, task="text-generation")
        with torch.no_grad(), lm.trace(batch.model_kwargs(), use_cache=False):
            mine = lm.model.layers[0].output.save()
    out = {}
    with open_backend(tiny, "nnsight") as backend:  # raised OutOfOrderError on every site before
        backend.run(batch, sites, lambda s, x: out.__setitem__(s, x.clone()))
    with open_backend(tiny, "torch") as backend:
        ref = {}
        backend.run(batch, sites, lambda s, x: ref.__setitem__(s, x.clone()))
    torch.testing.assert_close(out[sites[0]], mine if not isinstance(mine, tuple) else mine[0])
    for s in sites:
        torch.testing.assert_close(out[s], ref[s], rtol=1e-5, atol=1e-5)
