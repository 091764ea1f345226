"""Head gates and head masks on tiny models: the op, the hooks, and equality with weight edits."""

import copy

import pytest
import torch

from interp.interventions import from_json, to_json
from interp.interventions.gating import LayerGate, head_gates
from interp.interventions.heads import HeadMask, HeadSpecError
from interp.model import ops


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # one padded row
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


def _logits(loaded, batch):
    with torch.no_grad():
        return loaded.model(**batch).logits


def test_gate_heads_op_properties():
    torch.manual_seed(0)
    z = torch.randn(2, 5, 4, 3)
    fill = torch.randn(4, 3)
    ones, zeros = torch.ones(4), torch.zeros(4)
    assert torch.equal(ops.gate_heads(z, ones), z)
    assert torch.equal(ops.gate_heads(z, ones, fill), z)
    assert torch.equal(ops.gate_heads(z, zeros), torch.zeros_like(z))
    assert torch.equal(ops.gate_heads(z, zeros, fill), fill.expand_as(z))
    g = torch.tensor([1.0, 0.0, 1.0, 0.0])
    out = ops.gate_heads(z, g, fill)
    for h in range(4):  # plain loop oracle
        assert torch.equal(out[:, :, h], z[:, :, h] if g[h] else fill[h].expand_as(z[:, :, h]))
    half = ops.gate_heads(z, torch.full((4,), 0.5), fill)
    assert torch.allclose(half, 0.5 * z + 0.5 * fill)
    per_row = torch.rand(2, 1, 4)
    assert torch.allclose(ops.gate_heads(z, per_row), z * per_row[..., None])


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
def test_masking_no_heads_changes_nothing(fixture, request):
    loaded = request.getfixturevalue(fixture)
    batch = _batch()
    base = _logits(loaded, batch)
    with HeadMask(()).apply(loaded):
        assert torch.equal(_logits(loaded, batch), base)
    with head_gates(loaded, {l: LayerGate(torch.ones(loaded.n_heads)) for l in range(loaded.n_layers)}):
        assert torch.equal(_logits(loaded, batch), base)
    assert torch.equal(_logits(loaded, batch), base)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
def test_mask_equals_zeroed_output_projection_slice(fixture, request):
    """Masking head h of layer l == zeroing the d_head input columns of that layer's o_proj, by hand."""
    loaded = request.getfixturevalue(fixture)
    batch = _batch()
    heads = ((0, 1), (1, 0), (1, 3), (loaded.n_layers - 1, 2))
    with HeadMask(heads).apply(loaded):
        masked = _logits(loaded, batch)
    edited = copy.deepcopy(loaded.model)
    dh = loaded.d_head
    for layer, head in heads:
        proj = edited.get_submodule(loaded.arch.layers)[layer].get_submodule(loaded.arch.o_proj)
        with torch.no_grad():
            if loaded.arch.conv1d:  # GPT-2 Conv1D: weight is (in, out)
                proj.weight[head * dh:(head + 1) * dh, :] = 0
            else:  # nn.Linear: weight is (out, in)
                proj.weight[:, head * dh:(head + 1) * dh] = 0
    with torch.no_grad():
        expected = edited(**batch).logits
    assert torch.allclose(masked, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(masked, _logits(loaded, batch), atol=1e-4)  # the mask did something
    # and the model is restored exactly
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in loaded.model.modules())


def test_mask_restores_on_error(tiny):
    batch = _batch()
    base = _logits(tiny, batch)
    with pytest.raises(RuntimeError, match="boom"), HeadMask(((0, 0),)).apply(tiny):
        raise RuntimeError("boom")
    assert torch.equal(_logits(tiny, batch), base)


def test_head_mask_value_semantics(tiny):
    a = HeadMask(((2, 1), (0, 3), (2, 1)), name="gradient")
    assert a.heads == ((0, 3), (2, 1))
    assert a.label() == "gradient-2"
    back = from_json(to_json(a))
    assert back == a and isinstance(back.heads[0], tuple)
    assert hash(back) == hash(a)
    with pytest.raises(HeadSpecError, match="does not exist"), HeadMask(((4, 0),)).apply(tiny):
        pass
    with pytest.raises(HeadSpecError, match="negative"):
        HeadMask(((0, -1),))
    with pytest.raises(HeadSpecError, match="pair"):
        HeadMask((("a", 1),))


def test_gates_validate_shapes(tiny):
    with pytest.raises(ValueError, match="out of range"), head_gates(tiny, {9: LayerGate(torch.ones(4))}):
        pass
    with pytest.raises(ValueError, match="heads"), head_gates(tiny, {0: LayerGate(torch.ones(3))}):
        pass


def test_mean_mask_equals_folding_the_mean_into_the_output_bias(tiny_gpt, tmp_path, monkeypatch):
    """Mean pruning: z of a head replaced by its mean == its W_O rows zeroed and W_O^h mu_h added to the bias."""
    from interp.interventions.gating import load_means, save_means
    from interp.interventions.heads import router_dir

    monkeypatch.setenv("INTERP_ROUTER_DIR", str(tmp_path))
    loaded = tiny_gpt
    torch.manual_seed(3)
    means = torch.randn(loaded.n_layers, loaded.n_heads, loaded.d_head)
    digest = save_means(means, router_dir())
    assert torch.equal(load_means(digest, router_dir()), means) and save_means(means, router_dir()) == digest
    heads = ((0, 2), (2, 1))
    spec = HeadMask(heads, name="mean", means=digest)
    assert from_json(to_json(spec)) == spec
    batch = _batch()
    with spec.apply(loaded):
        got = _logits(loaded, batch)
    edited = copy.deepcopy(loaded.model)
    dh = loaded.d_head
    for layer, head in heads:
        proj = edited.get_submodule(loaded.arch.layers)[layer].get_submodule(loaded.arch.o_proj)
        with torch.no_grad():
            rows = proj.weight[head * dh:(head + 1) * dh, :].clone()  # Conv1D (in, out)
            proj.bias += means[layer, head] @ rows
            proj.weight[head * dh:(head + 1) * dh, :] = 0
    with torch.no_grad():
        assert torch.allclose(got, edited(**batch).logits, atol=1e-5, rtol=1e-5)
    with HeadMask(heads, name="zero").apply(loaded):
        assert not torch.allclose(got, _logits(loaded, batch), atol=1e-4)  # not the same as zeroing
    (tmp_path / f"means-{digest}.safetensors").unlink()
    with pytest.raises(ValueError, match="not found"), spec.apply(loaded):
        pass


def test_mean_mask_shape_is_checked(tiny, tmp_path, monkeypatch):
    from interp.interventions.gating import save_means

    monkeypatch.setenv("INTERP_ROUTER_DIR", str(tmp_path))
    digest = save_means(torch.zeros(2, 4, 16), tmp_path)
    with pytest.raises(HeadSpecError, match="shape"), HeadMask(((0, 0),), means=digest).apply(tiny):
        pass
