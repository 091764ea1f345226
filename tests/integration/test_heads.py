"""The head study's mechanisms on the real embedded model (30 layers, 9 query heads on 3 KV heads)."""

import pytest
import torch

from interp.heads.gating import LayerGate, Suffix, head_gates
from interp.heads.importance import final_hidden, gradient_importance, row_metrics
from interp.heads.router import HeadRouter, routed
from interp.heads.text import lm_batch
from interp.interventions.heads import HeadMask

pytestmark = pytest.mark.integration

TEXT = "The old lighthouse keeper climbed the stairs every evening to light the lamp."


@pytest.fixture(scope="module")
def batch(embedded):
    ids = embedded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    return lm_batch([ids, ids[:9]], embedded.tokenizer.pad_token_id)


def _logits(loaded, b):
    with torch.no_grad():
        return loaded.model(**b.kwargs).logits


def test_query_head_mask_equals_zeroed_o_proj_columns(embedded, batch):
    assert embedded.n_heads == 9 and embedded.config.num_key_value_heads == 3
    heads = ((3, 4), (3, 5), (17, 0))  # two query heads that share a KV head, and another layer
    base = _logits(embedded, batch)
    with HeadMask(heads).apply(embedded):
        masked = _logits(embedded, batch)
    assert torch.equal(_logits(embedded, batch), base)  # restored
    dh = embedded.d_head
    saved = {}
    try:
        for layer, head in heads:
            w = embedded.model.get_submodule(embedded.arch.layers)[layer].get_submodule(embedded.arch.o_proj).weight
            saved.setdefault(layer, w.detach().clone())
            w.data[:, head * dh:(head + 1) * dh] = 0
        by_weights = _logits(embedded, batch)
    finally:
        for layer, w in saved.items():
            embedded.model.get_submodule(embedded.arch.layers)[layer].get_submodule(embedded.arch.o_proj).weight.data.copy_(w)
    assert torch.equal(_logits(embedded, batch), base)
    assert torch.allclose(masked, by_weights, atol=1e-4, rtol=1e-4)
    assert (masked - base).abs().max() > 1e-3


def test_all_head_uniform_router_and_suffix_reproduce_base(embedded, batch):
    base = _logits(embedded, batch)
    router = HeadRouter(embedded.n_layers, embedded.d_model, embedded.n_heads)
    with routed(embedded, router, embedded.n_heads):
        assert torch.allclose(_logits(embedded, batch), base, atol=1e-4, rtol=1e-5)
    s = Suffix(embedded, batch.kwargs)
    for layer in (0, 29):
        assert torch.allclose(s.run(layer, 2), s.final.repeat(2, 1, 1), atol=1e-4)


def test_gradient_importance_matches_finite_differences(embedded, batch):
    one = lm_batch([batch.kwargs["input_ids"][0].tolist()], embedded.tokenizer.pad_token_id)
    got = gradient_importance(embedded, [one])["mean"]
    head = embedded.model.get_submodule(embedded.arch.lm_head)
    layer = 1
    for h in sorted(range(embedded.n_heads), key=lambda i: -got[layer, i])[:2]:  # the two largest: clear signal
        vals = []
        for sign in (1, -1):
            gates = torch.ones(embedded.n_heads)
            gates[h] += sign * 0.02
            with head_gates(embedded, {layer: LayerGate(gates)}), torch.no_grad():
                vals.append(row_metrics(head, final_hidden(embedded, one), one.targets)[0].double().item())
        fd = abs(vals[0] - vals[1]) / 0.04
        assert got[layer, h] == pytest.approx(fd, rel=0.05)
