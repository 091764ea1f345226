"""Every supported family, on a tiny random-init model of each built once for this module.

Per family: the site table read from transformer-lens's adapter; the three backends agree
with each other and with ``output_hidden_states``, and the sublayer sites add up to the
residual stream; the logits come back from final hidden states; skipping layers keeps KV-cache
generation equal to a no-cache forward; 50% Wanda reaches 50% on every projection, fused ones
included, and a selector prunes only its rows; zero-ablating one head removes exactly that
head's term of the output projection; directional ablation and the weight edit leave no
component along the direction in any residual state.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from interp.capture.backends import open_backend
from interp.capture.batching import pad
from interp.interventions.directions import DirectionalAblation, OrthogonalizedWeights
from interp.interventions.heads import HeadMask
from interp.interventions.layers import skip_layers
from interp.interventions.prune import PruneSpec
from interp.interventions.pruning.calibdata import CalibData
from interp.interventions.pruning.targets import all_targets
from interp.model.families import FAMILIES
from interp.model.sites import Site, parse_sites
from tests.tiny_families import VARIANTS, build

FAMILY_LIST = [*FAMILIES, *VARIANTS]
BATCH = pad([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24]], 256, side="right")
MASK = BATCH.attention_mask.bool()


@pytest.fixture(scope="module", params=FAMILY_LIST)
def loaded(request):
    return build(request.param)


def _capture(loaded, backend: str, spec: str) -> dict[Site, torch.Tensor]:
    out: dict[Site, torch.Tensor] = {}
    with open_backend(loaded, backend) as be:
        be.run(BATCH, parse_sites(spec, loaded.n_layers), lambda s, x: out.__setitem__(s, x.detach().clone()))
    return out


def _logits(loaded, ids=None):
    kwargs = BATCH.model_kwargs() if ids is None else {"input_ids": ids}
    with torch.no_grad():
        return loaded.model(**kwargs, use_cache=False).logits


def test_table_comes_from_the_adapter(loaded):
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    arch = loaded.arch
    assert arch.adapter == SUPPORTED_ARCHITECTURES[type(loaded.model).__name__].__name__
    assert arch.family in FAMILIES
    blk = loaded.model.get_submodule(arch.layers)[0]
    for name, path in arch.proj.items():
        module = blk.get_submodule(path)
        if name in arch.slices:  # a fused matrix: its projections partition its rows
            sibling = [p for p, q in arch.proj.items() if q == path]
            rows = sorted(r for p in sibling for a, b in arch.slices[p] for r in range(a, b))
            n_out = module.weight.shape[1 if arch.conv1d else 0]
            assert rows == list(range(n_out)), (name, path)


def _hooks(model) -> list:
    return [(n, list(m._forward_hooks), list(m._forward_pre_hooks), vars(m).get("forward"))
            for n, m in model.named_modules()]


def test_backends_agree_and_sites_add_up(loaded):
    ref = _logits(loaded)
    spec = "resid_pre,resid_post,attn_out,mlp_out,z"
    torch_out = _capture(loaded, "torch", spec)
    with torch.no_grad():
        hs = loaded.model(**BATCH.model_kwargs(), output_hidden_states=True, use_cache=False).hidden_states
    for layer in range(loaded.n_layers):
        pre, post = torch_out[Site("resid_pre", layer)], torch_out[Site("resid_post", layer)]
        added = torch_out[Site("attn_out", layer)] + torch_out[Site("mlp_out", layer)]
        torch.testing.assert_close(pre[MASK], hs[layer][MASK], rtol=0, atol=1e-5)
        torch.testing.assert_close((pre + added)[MASK], post[MASK], rtol=1e-5, atol=1e-5)
        assert torch_out[Site("z", layer)].shape[-2:] == (loaded.n_heads, loaded.d_head)
    hooks = _hooks(loaded.model)  # transformers keeps its own output-capturing hooks once used
    for backend in ("tl", "nnsight"):
        if backend == "tl" and getattr(loaded.config, "new_decoder_architecture", False):
            with pytest.raises(ValueError, match="tl backend cannot capture .* use --backend nnsight"):
                _capture(loaded, backend, spec)
            continue
        got = _capture(loaded, backend, spec)
        assert got.keys() == torch_out.keys()
        for site, x in got.items():
            torch.testing.assert_close(x[MASK], torch_out[site][MASK], rtol=1e-5, atol=1e-5, msg=f"{backend} {site}")
    assert torch.equal(_logits(loaded), ref)  # every backend left the model as it was
    assert _hooks(loaded.model) == hooks  # and took its hooks and patched forwards away


def test_logits_from_final_hidden_states(loaded):
    seen = {}
    norm = loaded.model.get_submodule(loaded.arch.final_norm)
    h = norm.register_forward_hook(lambda _m, _a, out: seen.setdefault("h", out))
    try:
        ref = _logits(loaded)
    finally:
        h.remove()
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(seen["h"]), ref, rtol=1e-5, atol=1e-5)


def test_skipping_layers_keeps_kv_cache_generation_exact(loaded):
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])  # longer than the sliding windows
    gen = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 256, "output_scores": True, "return_dict_in_generate": True}
    base = _logits(loaded, prompt)
    with torch.no_grad(), skip_layers(loaded, [0]):
        assert loaded.n_layers == 2
        cached = loaded.model.generate(input_ids=prompt, use_cache=True, **gen)
        plain = loaded.model.generate(input_ids=prompt, use_cache=False, **gen)
        full = _logits(loaded, cached.sequences[:, :-1])[0, prompt.shape[1] - 1:]
    assert torch.equal(cached.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(cached.scores)[:, 0], full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full[0], base[0, -1], atol=1e-3)  # the skip did change the model
    assert loaded.n_layers == 3 and torch.equal(_logits(loaded, prompt), base)


def test_wanda_half_nm_and_selectors_hit_their_rows(loaded):
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    with PruneSpec("wanda", 0.5, calib=CalibData(windows=2, length=16)).apply(loaded) as report:
        frame = report.frame()
        assert set(frame["module"]) == set(loaded.arch.proj)
        assert (frame["sparsity"] == 0.5).all() and (frame["n_pruned"] * 2 == frame["n_params"]).all()
        for t in all_targets(loaded.model, loaded.arch):  # the zeros are where the report says
            assert int((t.weight == 0).sum()) * 2 == t.n_params, (t.layer, t.name)
    selected = "k" if "k" in loaded.arch.slices else "up"
    with PruneSpec("magnitude", 0.5, (selected,)).apply(loaded):
        for t in all_targets(loaded.model, loaded.arch):
            zeros = int((t.weight == 0).sum())
            assert zeros == (t.n_params // 2 if t.name == selected else 0), (t.layer, t.name)
    with PruneSpec("magnitude", None, structure="2:4").apply(loaded):  # N:M on every projection, fused too
        for t in all_targets(loaded.model, loaded.arch):
            groups = (t.weight == 0).reshape(t.weight.shape[0], -1, 4).sum(-1)
            assert (groups == 2).all(), (t.layer, t.name)
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_zero_ablating_one_head_removes_exactly_its_term(loaded):
    layer, head, dh = 1, 2, loaded.d_head
    o_proj = loaded.model.get_submodule(loaded.arch.layers)[layer].get_submodule(loaded.arch.o_proj)
    seen: list = []
    hook = o_proj.register_forward_hook(lambda _m, args, out: seen.append((args[0].clone(), out.clone())))
    try:
        _logits(loaded)
        with HeadMask(((layer, head),)).apply(loaded):
            _logits(loaded)
    finally:
        hook.remove()
    (z, out), (z_masked, out_masked) = seen
    cols = slice(head * dh, (head + 1) * dh)
    expect = z.clone()
    expect[..., cols] = 0
    assert torch.equal(z_masked, expect)  # same input: only this head's columns of z changed
    w = o_proj.weight.detach()
    w = w.t() if loaded.arch.conv1d else w  # (d_model, heads * d_head)
    term = z[..., cols] @ w[:, cols].t()
    torch.testing.assert_close(out - out_masked, term, rtol=1e-4, atol=1e-5)


def _max_component(states: dict, r: torch.Tensor) -> float:
    return max(((x @ r)[MASK].abs().max() / x[MASK].norm(dim=-1).max()).item() for x in states.values())


def test_direction_edits_leave_no_component_in_any_residual_state(loaded, monkeypatch):
    r = torch.randn(loaded.d_model, generator=torch.Generator().manual_seed(1))
    ru = r / r.norm()
    spec = "resid_pre,resid_post"
    assert _max_component(_capture(loaded, "torch", spec), ru) > 0.05
    for edit in (DirectionalAblation(r.tolist()), OrthogonalizedWeights(r.tolist())):
        with edit.apply(loaded):
            assert _max_component(_capture(loaded, "torch", spec), ru) < 1e-6, edit.kind
    if loaded.arch.post_attn_norm:  # projecting r itself out of o_proj/down_proj is not enough here
        monkeypatch.setattr(loaded, "arch", dataclasses.replace(loaded.arch, post_attn_norm=None, post_mlp_norm=None))
        with OrthogonalizedWeights(r.tolist()).apply(loaded):
            monkeypatch.undo()  # read the states through the real table
            assert _max_component(_capture(loaded, "torch", spec), ru) > 1e-3


def test_suffix_runs_equal_the_full_forward(loaded):
    """Blocks replayed from a cached input get their own call (Gemma 3's sliding layers have
    their own mask and rotary embeddings), so every suffix reproduces the clean pass."""
    from interp.interventions.gating import Suffix

    kwargs = pad([list(range(5, 17)), list(range(30, 42))], 256, side="right").model_kwargs()
    suffix = Suffix(loaded, kwargs)
    for layer in range(loaded.n_layers):
        torch.testing.assert_close(suffix.run(layer, 2), suffix.final.repeat(2, 1, 1), rtol=1e-5, atol=1e-5)


def test_wanda_norms_replayed_block_by_block_equal_a_plain_forward(loaded):
    from interp.interventions.pruning.calibrate import input_norms, layerwise_norms

    windows = [list(range(5 + i, 21 + i)) for i in range(3)]  # 16 tokens: past the sliding windows
    targets = all_targets(loaded.model, loaded.arch)
    norms = layerwise_norms(loaded.model, loaded.model.get_submodule(loaded.arch.layers), targets, windows)
    modules = {f"{t.layer}:{t.name}": t.module for t in targets}
    with input_norms(modules) as acc, torch.no_grad():
        loaded.model(input_ids=torch.tensor(windows), use_cache=False)
    ref = acc.norms()
    for t in targets:
        torch.testing.assert_close(norms[(t.layer, t.name)], ref[f"{t.layer}:{t.name}"], rtol=1e-5, atol=1e-6)


def test_eval_logprobs_unembed_only_the_scored_positions(loaded):
    from interp.evals.lm import last_logprobs, token_logprobs

    seqs, starts = [[5, 6, 7, 8, 9, 10], [20, 21, 22], [30, 31, 32, 33, 34, 35, 36, 37]], [3, 1, 5]
    got = token_logprobs(loaded.model, seqs, starts, 256)
    last = last_logprobs(loaded.model, seqs, 256)
    for seq, start, lp, lp_last in zip(seqs, starts, got, last):
        full = torch.log_softmax(_logits(loaded, torch.tensor([seq]))[0].float(), dim=-1)  # one sequence, no padding
        ref = full[start - 1:-1].gather(-1, torch.tensor(seq[start:]).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lp_last, full[-1], rtol=1e-5, atol=1e-5)


def test_head_router_reads_each_attention_input(loaded):
    from interp.interventions.router import HeadRouter, routed

    router = HeadRouter(loaded.n_layers, loaded.d_model, loaded.n_heads).requires_grad_(False)
    base = _logits(loaded)
    with routed(loaded, router, loaded.n_heads):  # uniform router, every head kept: gates are all 1
        torch.testing.assert_close(_logits(loaded), base, rtol=1e-5, atol=1e-5)
    torch.nn.init.normal_(router.weight, generator=torch.Generator().manual_seed(0))
    record: dict = {}
    with routed(loaded, router, 1, record):
        one = _logits(loaded)
    assert not torch.allclose(one, base, atol=1e-3)
    for layer, (gates, _probs, chosen) in record.items():  # one head per real token, gate 1
        assert gates.shape == (*BATCH.input_ids.shape, loaded.n_heads)
        assert (chosen.sum(-1) == 1).all() and torch.equal(gates, chosen.to(gates.dtype))


def test_head_gate_gradients_reach_every_head(loaded):
    """Gradient importance (Michel et al.): d loss / d gate exists for every head of every layer."""
    from interp.interventions.gating import LayerGate, head_gates

    xi = torch.ones(loaded.n_layers, loaded.n_heads, requires_grad=True)
    with head_gates(loaded, {layer: LayerGate(xi[layer]) for layer in range(loaded.n_layers)}):
        out = loaded.model(**BATCH.model_kwargs(), use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(out[:, :-1][MASK[:, 1:]], BATCH.input_ids[:, 1:][MASK[:, 1:]])
        loss.backward()
    assert torch.isfinite(xi.grad).all() and (xi.grad != 0).all()
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_lora_healing_trains_the_mlps_and_restores_the_model(loaded):
    from interp.interventions.heal import HealCfg, healed

    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    base = _logits(loaded)
    cfg = HealCfg(steps=2, rank=2, lr=1e-2, batch=2, window=16, holdout_tokens=64, log_every=1)
    with healed(loaded, cfg) as made:
        assert len(made.log) == 2 and made.log["loss"].notna().all() and made.adapters
        assert not torch.allclose(_logits(loaded), base, atol=1e-6)  # the adapters changed the MLPs
    after = loaded.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(_logits(loaded), base)
