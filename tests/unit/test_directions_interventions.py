"""Directional ablation, weight orthogonalisation and activation addition on tiny models."""

from __future__ import annotations

import pytest
import torch

from interp.interventions import from_json, to_json
from interp.interventions.directions import (
    ActivationAddition,
    DirectionalAblation,
    DirectionError,
    OrthogonalizedWeights,
    orthogonalize_model,
    residual_writers,
)
from interp.model import ops
from interp.model.hooks import hooked
from interp.model.sites import Site


def _ids(seed: int = 0, batch: int = 3, pos: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, pos), generator=g)


def _logits(loaded, ids) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(input_ids=ids, use_cache=False).logits


def _direction(d: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3.0


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def _assert_restored(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k].detach(), v), k
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def _record(loaded, sites: list[Site]) -> tuple:
    got: dict[Site, torch.Tensor] = {}

    def make(s):
        def fn(x):
            got[s] = x.detach().clone()
        return fn
    return got, hooked(loaded.model, loaded.arch, {s: make(s) for s in sites}, loaded.n_heads)


def test_project_out_leaves_zero_component_on_random_states():
    """Property: for random states and directions of any norm, nothing is left along r and
    the orthogonal part is untouched; checked against a plain-loop reference."""
    for seed in range(25):
        g = torch.Generator().manual_seed(seed)
        d = int(torch.randint(2, 40, (1,), generator=g))
        h = torch.randn(4, 5, d, generator=g, dtype=torch.float64) * 10 ** float(torch.randint(-2, 3, (1,), generator=g))
        r = torch.randn(d, generator=g, dtype=torch.float64) * 10 ** float(torch.randint(-3, 3, (1,), generator=g))
        out = ops.project_out(h, r)
        ru = r / r.norm()
        assert torch.allclose(out @ ru, torch.zeros(4, 5, dtype=torch.float64), atol=1e-9 * h.abs().max())
        ref = torch.empty_like(h)
        for i in range(4):
            for j in range(5):
                dot = sum(float(h[i, j, k]) * float(ru[k]) for k in range(d))
                for k in range(d):
                    ref[i, j, k] = h[i, j, k] - dot * ru[k]
        assert torch.allclose(out, ref, atol=1e-9 * (1 + h.abs().max()))
        assert torch.allclose(out - h, -(h @ ru).unsqueeze(-1) * ru)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
def test_ablation_leaves_no_component_anywhere(fixture, request):
    loaded = request.getfixturevalue(fixture)
    r = _direction(loaded.d_model)
    ru = (r / r.norm()).float()
    sites = [Site(h, l) for l in range(loaded.n_layers) for h in ("resid_pre", "resid_post", "attn_out", "mlp_out")]
    base_got, rec = _record(loaded, sites)
    with rec:
        _logits(loaded, _ids())
    assert max(float((v @ ru).abs().max()) for v in base_got.values()) > 1e-2  # something to remove
    got, rec = _record(loaded, sites)
    with DirectionalAblation(r.tolist(), name="r").apply(loaded), rec:
        _logits(loaded, _ids())
    for s, v in got.items():
        assert float((v @ ru).abs().max()) < 1e-5 * (1 + float(v.abs().max())), s


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
def test_orthogonalized_weights_match_hook_ablation(fixture, request):
    loaded = request.getfixturevalue(fixture)
    r = _direction(loaded.d_model, seed=3)
    ids = _ids(seed=5)
    before = _snapshot(loaded.model)
    base = _logits(loaded, ids)
    with DirectionalAblation(r.tolist()).apply(loaded):
        hook = _logits(loaded, ids)
    with OrthogonalizedWeights(r.tolist()).apply(loaded):
        weights = _logits(loaded, ids)
    assert not torch.allclose(hook, base, atol=1e-3)  # the edit does something
    assert torch.allclose(weights, hook, atol=1e-4, rtol=1e-4), float((weights - hook).abs().max())
    _assert_restored(loaded.model, before)
    assert torch.equal(_logits(loaded, ids), base)


def test_orthogonalized_keeps_tied_lm_head_and_retie(tiny):
    model = tiny.model
    embed, head = model.get_submodule(tiny.arch.embed), model.get_submodule(tiny.arch.lm_head)
    assert head.weight is embed.weight  # the tiny Llama ties, like SmolLM2
    original = embed.weight.detach().clone()
    r = _direction(tiny.d_model)
    ru = (r / r.norm()).float()
    with OrthogonalizedWeights(r.tolist()).apply(tiny):
        assert torch.equal(head.weight, original)  # the unembedding is not edited
        assert float((embed.weight @ ru).abs().max()) < 1e-5
        for _path, m in residual_writers(tiny)[1:]:
            assert float((ru @ m.weight).abs().max()) < 1e-5  # Linear (out, in): no output along r
    assert head.weight is embed.weight and torch.equal(embed.weight, original)


def test_orthogonalize_model_permanent_unties_and_matches(tiny):
    r = _direction(tiny.d_model, seed=7)
    ids = _ids(seed=2)
    original_head = tiny.model.get_submodule(tiny.arch.lm_head).weight.detach().clone()
    with DirectionalAblation(r.tolist()).apply(tiny):
        hook = _logits(tiny, ids)
    orthogonalize_model(tiny, r.tolist())
    head, embed = tiny.model.get_submodule(tiny.arch.lm_head), tiny.model.get_submodule(tiny.arch.embed)
    assert head.weight is not embed.weight and torch.equal(head.weight, original_head)
    assert tiny.model.config.tie_word_embeddings is False
    assert torch.allclose(_logits(tiny, ids), hook, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("hook", ["resid_pre", "resid_post", "mlp_out"])
def test_activation_addition_adds_exactly_and_zero_is_identity(tiny, hook):
    r = _direction(tiny.d_model, seed=4)
    ru = (r / r.norm()).float()
    ids = _ids(seed=9)
    base = _logits(tiny, ids)
    with ActivationAddition(r.tolist(), layer=2, alpha=0.0, scale=5.0, hook=hook).apply(tiny):
        assert torch.equal(_logits(tiny, ids), base)
    site = Site(hook, 2)
    ref, rec = _record(tiny, [site])
    with rec:
        _logits(tiny, ids)
    for alpha in (-2.0, 1.5):
        got, rec = _record(tiny, [site])
        with ActivationAddition(r.tolist(), layer=2, alpha=alpha, scale=5.0, hook=hook).apply(tiny), rec:
            edited = _logits(tiny, ids)
        assert torch.allclose(got[site] - ref[site], alpha * 5.0 * ru.expand_as(ref[site]), atol=1e-5)
        assert not torch.allclose(edited, base, atol=1e-4)
    assert torch.equal(_logits(tiny, ids), base)


def test_restored_after_error_inside_block(tiny):
    r = _direction(tiny.d_model)
    before = _snapshot(tiny.model)
    for spec in (DirectionalAblation(r.tolist()), OrthogonalizedWeights(r.tolist()),
                 ActivationAddition(r.tolist(), layer=1, alpha=3.0)):
        with pytest.raises(RuntimeError, match="boom"):
            with spec.apply(tiny):
                raise RuntimeError("boom")
        _assert_restored(tiny.model, before)
    head = tiny.model.get_submodule(tiny.arch.lm_head)
    assert head.weight is tiny.model.get_submodule(tiny.arch.embed).weight


def test_specs_are_values_that_round_trip():
    r = [0.5, -1.0, 2.0, 0.25]
    specs = [DirectionalAblation(r, name="harmful@resid_pre3/last"), OrthogonalizedWeights(tuple(r), name="h"),
             ActivationAddition(r, layer=3, alpha=-1.0, scale=2.5, name="h")]
    for spec in specs:
        back = from_json(to_json(spec))
        assert back == spec and hash(back) == hash(spec) and to_json(back) == to_json(spec)
    assert [s.label() for s in specs] == ["ablate[harmful@resid_pre3/last]", "orth[h]", "actadd[h -1]"]


def test_bad_directions_are_refused(tiny):
    with pytest.raises(DirectionError, match="zero norm"):
        DirectionalAblation([0.0, 0.0])
    with pytest.raises(DirectionError, match="NaN"):
        OrthogonalizedWeights([1.0, float("nan")])
    with pytest.raises(DirectionError, match="empty"):
        DirectionalAblation([])
    with pytest.raises(DirectionError, match="hook 'z'"):
        ActivationAddition([1.0], layer=0, alpha=1.0, hook="z")
    with pytest.raises(DirectionError, match="d_model 64"):
        with DirectionalAblation([1.0, 2.0]).apply(tiny):
            pass
    with pytest.raises(DirectionError, match="layer 9 out of range"):
        with ActivationAddition([1.0] * 64, layer=9, alpha=1.0).apply(tiny):
            pass
