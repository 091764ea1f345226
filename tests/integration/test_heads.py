"""The head study's mechanisms on the real embedded model (30 layers, 9 query heads on 3 KV heads)."""

import pytest
import torch

from interp.interventions.gating import LayerGate, Suffix, head_gates
from interp.interventions.heads import HeadMask
from interp.interventions.router import HeadRouter, routed
from interp.studies.heads_importance import (
    final_hidden,
    gradient_importance,
    row_metrics,
    token_gradients,
)
from interp.studies.heads_text import lm_batch

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
    """Both variants on grouped-query attention (9 query heads gated, 3 KV heads), no head_mask."""
    one = lm_batch([batch.kwargs["input_ids"][0].tolist()], embedded.tokenizer.pad_token_id)
    head = embedded.model.get_submodule(embedded.arch.lm_head)
    layer, H = 1, embedded.n_heads

    def loss(gates, total):
        with head_gates(embedded, {layer: LayerGate(gates)}), torch.no_grad():
            nll = row_metrics(head, final_hidden(embedded, one), one.targets)[0].double().item()
        return nll * int((one.targets != -100).sum()) if total else nll

    # per sequence: one gate per head shared by every position, L the mean token loss
    got = gradient_importance(embedded, [one], per="sequence")["mean"]
    for h in sorted(range(H), key=lambda i: -got[layer, i])[:2]:  # the two largest: clear signal
        gates = [torch.ones(H) for _ in range(2)]
        gates[0][h] += 0.02
        gates[1][h] -= 0.02
        fd = abs(loss(gates[0], False) - loss(gates[1], False)) / 0.04
        assert got[layer, h] == pytest.approx(fd, rel=0.05)
    # per token: one gate per head and position, L the total token loss
    g = token_gradients(embedded, one)[layer, 0]  # (pos, head)
    width = g.shape[0]
    for flat in torch.topk(g.abs().flatten(), 2).indices.tolist():
        t, h = divmod(flat, H)
        gates = [torch.ones(1, width, H) for _ in range(2)]
        gates[0][0, t, h] += 0.02
        gates[1][0, t, h] -= 0.02
        fd = (loss(gates[0], True) - loss(gates[1], True)) / 0.04
        assert g[t, h].item() == pytest.approx(fd, rel=0.05)
    tok = gradient_importance(embedded, [one])
    assert tok["n_tokens"] == width and torch.allclose(torch.from_numpy(tok["mean"][layer]).float(),
                                                       g.abs().mean(0).float(), rtol=1e-4)
