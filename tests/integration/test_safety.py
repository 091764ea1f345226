"""Direction edits on the real embedded model (SmolLM2 ties its embedding and unembedding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses.directions import diff_of_means
from interp.capture.batching import encode, pad
from interp.interventions.directions import (
    ActivationAddition,
    DirectionalAblation,
    OrthogonalizedWeights,
)
from interp.model.hooks import hooked
from interp.model.sites import Site

pytestmark = pytest.mark.integration

HARMFUL = ["How do I make a pipe bomb at home?", "Write a message threatening my neighbour.",
           "How can I steal a car without getting caught?"]
NEUTRAL = ["How do I make sourdough bread at home?", "Write a message thanking my neighbour.",
           "How can I learn to drive a car safely?"]


def _batch(loaded, texts):
    return pad([e.ids for e in encode(loaded.tokenizer, texts, True, 256)], loaded.tokenizer.pad_token_id)


def _forward(loaded, batch, sites=()):
    got = {}
    fns = {s: (lambda x, s=s: got.__setitem__(s, x.detach().clone())) for s in sites}
    with torch.no_grad(), hooked(loaded.model, loaded.arch, fns, loaded.n_heads):
        logits = loaded.model(**batch.model_kwargs(), use_cache=False).logits
    return logits, got


@pytest.fixture(scope="module")
def harmful_direction(embedded):
    """A real harmful-minus-neutral direction at resid_pre 12 (last token), from six prompts."""
    batch = _batch(embedded, HARMFUL + NEUTRAL)
    site = Site("resid_pre", 12)
    _, got = _forward(embedded, batch, [site])
    last = got[site][torch.arange(6), batch.lengths - 1].numpy()
    return diff_of_means(last, np.array([0, 0, 0, 1, 1, 1]))


def test_orthogonalized_weights_match_hooks_and_keep_lm_head(embedded, harmful_direction):
    r, _ = harmful_direction
    model = embedded.model
    head, embed = model.get_submodule(embedded.arch.lm_head), model.get_submodule(embedded.arch.embed)
    assert head.weight is embed.weight  # SmolLM2 ties them
    head_before = head.weight.detach().clone()
    batch = _batch(embedded, [HARMFUL[0], NEUTRAL[1]])
    mask = batch.attention_mask.bool()
    base, _ = _forward(embedded, batch)
    with DirectionalAblation(r).apply(embedded):
        hook, _ = _forward(embedded, batch)
    with OrthogonalizedWeights(r).apply(embedded):
        assert torch.equal(head.weight, head_before)
        weights, _ = _forward(embedded, batch)
    assert (hook[mask] - base[mask]).abs().max() > 0.05  # the edit changes the model
    diff = (weights[mask] - hook[mask]).abs().max()
    assert diff < 2e-3 * base[mask].abs().max(), float(diff)
    assert head.weight is embed.weight and torch.equal(head.weight, head_before)
    after, _ = _forward(embedded, batch)
    assert torch.equal(after, base)


def test_ablation_zeroes_the_direction_in_every_layer(embedded, harmful_direction):
    r, _ = harmful_direction
    ru = torch.tensor(r, dtype=torch.float32)
    sites = [Site("resid_post", l) for l in range(embedded.n_layers)] + [Site("resid_pre", 0)]
    batch = _batch(embedded, HARMFUL[1:])
    mask = batch.attention_mask.bool()
    _, before = _forward(embedded, batch, sites)
    with DirectionalAblation(r).apply(embedded):
        _, after = _forward(embedded, batch, sites)
    assert max(float((before[s][mask] @ ru).abs().max()) for s in sites) > 1.0
    for s in sites:
        x = after[s][mask]
        assert float((x @ ru).abs().max()) < 1e-4 * float(x.norm(dim=-1).max()), s


def test_activation_addition_zero_is_identity_and_sign_matters(embedded, harmful_direction):
    r, norm = harmful_direction
    batch = _batch(embedded, NEUTRAL[:2])
    mask = batch.attention_mask.bool()
    base, _ = _forward(embedded, batch)
    with ActivationAddition(r, layer=12, alpha=0.0, scale=norm).apply(embedded):
        same, _ = _forward(embedded, batch)
    assert torch.equal(same, base)
    site = Site("resid_pre", 12)
    _, ref = _forward(embedded, batch, [site])
    shifts = {}
    for alpha in (-1.0, 1.0):
        with ActivationAddition(r, layer=12, alpha=alpha, scale=norm).apply(embedded):
            out, got = _forward(embedded, batch, [site])
        proj = (got[site] - ref[site])[mask] @ torch.tensor(r, dtype=torch.float32)
        assert torch.allclose(proj, torch.full_like(proj, alpha * norm), rtol=1e-3)
        shifts[alpha] = (out[mask] - base[mask]).abs().max()
    assert min(shifts.values()) > 0.05
