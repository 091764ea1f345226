"""Head importance on tiny models, each fast path against a slow, obviously-correct loop."""

import itertools

import numpy as np
import pytest
import torch

from interp.capture.batching import pad
from interp.interventions.gating import LayerGate, Suffix, head_gates
from interp.model.hooks import hooked
from interp.model.loading import wrap
from interp.model.sites import Site
from interp.studies.heads_importance import (
    cluster_mean,
    final_hidden,
    gradient_importance,
    head_means,
    normalise_global,
    normalise_layers,
    row_metrics,
    token_gradients,
)
from interp.studies.heads_text import IGNORE, Scored, answer_batch, held_out_chunks, lm_batch, split


def _seqs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]


def _head(loaded):
    return loaded.model.get_submodule(loaded.arch.lm_head)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
def test_suffix_runs_equal_the_full_forward(fixture, request):
    loaded = request.getfixturevalue(fixture)
    b = lm_batch(_seqs([12, 7, 12]), 256)  # one padded row
    s = Suffix(loaded, b.kwargs)
    full = final_hidden(loaded, b)
    assert torch.equal(s.final, full)
    for layer in range(loaded.n_layers):
        assert torch.allclose(s.run(layer, 3), full.repeat(3, 1, 1), atol=1e-6)


def test_row_metrics_against_loop(tiny):
    b = answer_batch([[5, 6, 7], [8, 9]], [[10, 11], [12]], 256)
    assert b.targets[0].tolist()[:5] == [IGNORE, IGNORE, 10, 11, IGNORE]
    assert b.targets[1].tolist()[:3] == [IGNORE, 12, IGNORE]
    hidden = final_hidden(tiny, b)
    nll, acc, exact = row_metrics(_head(tiny), hidden, b.targets)
    logits = tiny.model(**b.kwargs).logits.detach()
    for i in range(2):
        pos = [p for p in range(b.targets.shape[1]) if b.targets[i, p] != IGNORE]
        lp = torch.log_softmax(logits[i, pos], -1)
        tg = b.targets[i, pos]
        assert nll[i].item() == pytest.approx(-lp[range(len(pos)), tg].mean().item(), abs=1e-5)
        hits = (logits[i, pos].argmax(-1) == tg).float()
        assert acc[i].item() == pytest.approx(hits.mean().item())
        assert exact[i].item() == float(hits.all())


def test_head_means_against_captured_z(tiny):
    b = lm_batch(_seqs([9, 5]), 256)
    means = head_means(tiny, [b])
    got = {}

    def grab(z):
        got["z"] = z.clone()

    with hooked(tiny.model, tiny.arch, {Site("z", 2): grab}, tiny.n_heads), torch.no_grad():
        tiny.model(**b.kwargs)
    z = got["z"]  # (batch, pos, head, d_head)
    real = torch.cat([z[0, :9], z[1, :5]])  # only real tokens count
    assert torch.allclose(means[2], real.mean(0), atol=1e-6)


def _float64(gpt):
    """A tiny model in float64 (Llama: grouped-query, 4 query heads on 2 KV heads, no head_mask
    argument). Llama's RMSNorm computes in float32 whatever the input dtype: hence eps = 1e-3
    below (truncation error ~eps^2, rounding ~1e-7 / eps) unless ``exact_rmsnorm`` is used."""
    from tests.conftest import byte_tokenizer, tiny_gpt2, tiny_llama

    return wrap((tiny_gpt2() if gpt else tiny_llama()).double(), byte_tokenizer())


@pytest.fixture
def exact_rmsnorm(monkeypatch):
    """Llama's RMSNorm in the input's dtype (float64 here), so finite differences can be tight."""
    from transformers.models.llama import modeling_llama

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


EPS = 1e-4
"""Finite-difference step of the float64 per-token check (truncation error ~EPS^2)."""


def _total_losses(loaded, b, layer, perturbed):
    """Central-difference reference: for each (row, pos, head) in ``perturbed``, the batch's summed
    token NLL with that one gate at ``layer`` set to 1 + eps and to 1 - eps. Each perturbation runs
    on its own copy of the batch (rows are independent), so one wide forward pass per sign."""
    rows, width = b.kwargs["input_ids"].shape
    H, P = loaded.n_heads, len(perturbed)
    wide = Scored({k: v.repeat(P, 1) for k, v in b.kwargs.items()}, b.targets.repeat(P, 1))
    counts = (b.targets != IGNORE).sum(1).double().repeat(P)
    out = []
    for sign in (1, -1):
        gates = torch.ones(P * rows, width, H, dtype=torch.float64)
        for i, (r, t, h) in enumerate(perturbed):
            gates[i * rows + r, t, h] += sign * EPS
        with head_gates(loaded, {layer: LayerGate(gates)}), torch.no_grad():
            nll = row_metrics(_head(loaded), final_hidden(loaded, wide), wide.targets)[0].double()
        out.append((nll * counts).view(P, rows).sum(1))
    return out


@pytest.mark.parametrize("gpt", [False, True])
def test_token_gradient_importance_equals_finite_differences(gpt, exact_rmsnorm):
    """Per-token gates: perturb one head's gate at one position of one row, central differences of
    the batch's total loss; then I_h = mean over real tokens of |dL/dxi_{h,t}|. All in float64."""
    loaded = _float64(gpt)
    batches = [lm_batch(_seqs([6, 4], seed=3), 256), lm_batch(_seqs([5], seed=4), 256)]
    L, H = loaded.n_layers, loaded.n_heads
    abs_sum, real = np.zeros((L, H)), 0
    per_seq = []  # (tokens, |grad| summed over them (L, H)) of each sequence
    for b in batches:
        rows, width = b.kwargs["input_ids"].shape
        got = token_gradients(loaded, b)
        assert got.shape == (L, rows, width, H)
        fd = np.zeros((L, rows, width, H))
        units = list(itertools.product(range(rows), range(width), range(H)))
        for layer in range(L):
            plus, minus = _total_losses(loaded, b, layer, units)
            for (r, t, h), d in zip(units, ((plus - minus) / (2 * EPS)).tolist()):
                fd[layer, r, t, h] = d
        np.testing.assert_allclose(got.numpy(), fd, rtol=1e-5, atol=1e-9)
        mask = b.kwargs["attention_mask"].numpy()
        if (mask == 0).any():
            assert np.abs(fd[:, mask == 0]).max() < 1e-12  # padding reaches nothing
        for r in range(rows):
            n = int(mask[r].sum())
            per_seq.append((n, np.abs(fd[:, r, :n]).sum(1)))
            abs_sum += per_seq[-1][1]
            real += n
    out = gradient_importance(loaded, batches)  # per token is the default
    np.testing.assert_allclose(out["mean"], abs_sum / real, rtol=1e-5, atol=1e-10)
    assert out["n"] == 3 and out["n_tokens"] == real == 15
    # standard error over sequences as clusters, by the delta-method formula written out
    m, tbar = abs_sum / real, real / 3
    ref = np.sqrt(sum((n / tbar) ** 2 * (s / n - m) ** 2 for n, s in per_seq) / (3 * 2))
    np.testing.assert_allclose(out["stderr"], ref, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("gpt", [False, True])
def test_sequence_gradient_importance_equals_finite_differences(gpt):
    """E_x |dL(x)/dxi_h|, one gate per sequence, checked against central differences."""
    loaded = _float64(gpt)
    batches = [lm_batch(_seqs([9, 9, 6], seed=3), 256), lm_batch(_seqs([7], seed=4), 256)]
    got = gradient_importance(loaded, batches, per="sequence")
    L, H, eps = loaded.n_layers, loaded.n_heads, 1e-3
    fd = np.zeros((4, L, H))
    for layer in range(L):
        for head in range(H):
            vals = []
            for sign in (1, -1):
                gates = torch.ones(H, dtype=torch.float64)
                gates[head] += sign * eps
                with head_gates(loaded, {layer: LayerGate(gates)}), torch.no_grad():
                    vals.append(torch.cat([row_metrics(_head(loaded), final_hidden(loaded, b), b.targets)[0]
                                           for b in batches]))
            fd[:, layer, head] = ((vals[0] - vals[1]) / (2 * eps)).numpy()
    np.testing.assert_allclose(got["mean"], np.abs(fd).mean(0), rtol=1e-3, atol=1e-8)
    # per-sequence |.| is not |batch mean|: the two differ whenever signs disagree
    assert got["n"] == 4 and got["n_tokens"] == 31 and not np.allclose(got["mean"], np.abs(fd.mean(0)))
    np.testing.assert_allclose(got["stderr"], np.abs(fd).std(0, ddof=1) / 2, rtol=1e-2, atol=1e-8)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
def test_token_and_sequence_gradients_agree_on_one_token_sequences(fixture, request):
    loaded = request.getfixturevalue(fixture)
    b = pad([[5], [70], [9], [130]], 256).model_kwargs()
    one = Scored(b, torch.tensor([[12], [40], [99], [7]]))  # each sequence: one token, one target
    tok = gradient_importance(loaded, [one], per="token")
    seq = gradient_importance(loaded, [one], per="sequence")
    np.testing.assert_allclose(tok["mean"], seq["mean"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(tok["stderr"], seq["stderr"], rtol=1e-4, atol=1e-9)
    assert tok["n_tokens"] == seq["n_tokens"] == 4 and tok["mean"].max() > 0
    longer = [lm_batch(_seqs([8, 8]), 256)]  # several tokens: shared gates let signs cancel, so they differ
    assert not np.allclose(normalise_layers(gradient_importance(loaded, longer)["mean"]),
                           normalise_layers(gradient_importance(loaded, longer, per="sequence")["mean"]), rtol=1e-2)
    with pytest.raises(ValueError, match="unknown gradient importance variant 'word'"):
        gradient_importance(loaded, [one], per="word")


def test_cluster_mean_against_loops():
    rng = np.random.default_rng(0)
    counts = np.array([3, 5, 5, 1])
    tokens = [rng.random((n, 2)) for n in counts]  # units of each cluster, 2 outputs
    sums = np.stack([t.sum(0) for t in tokens])
    mean, se = cluster_mean(sums, counts)
    np.testing.assert_allclose(mean, np.concatenate(tokens).mean(0))
    m_b = np.stack([t.mean(0) for t in tokens])
    tbar = counts.mean()
    ref = np.sqrt(sum((counts[i] / tbar) ** 2 * (m_b[i] - mean) ** 2 for i in range(4)) / (4 * 3))
    np.testing.assert_allclose(se, ref)
    same = np.array([2, 2, 2, 2])  # equal clusters: the standard error of the cluster means
    _, se2 = cluster_mean(sums, same)
    np.testing.assert_allclose(se2, (sums / 2).std(0, ddof=1) / 2)
    assert np.isnan(cluster_mean(sums[:1], counts[:1])[1]).all()


def test_normalisation():
    s = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    n = normalise_layers(s)
    np.testing.assert_allclose(n, [[0.6, 0.8], [1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(np.sqrt((n[:2] ** 2).sum(1)), 1.0)
    g = normalise_global(n)
    assert g.min() == 0 and g.max() == 1
    np.testing.assert_allclose(normalise_global(np.ones((2, 2))), 0)


def test_held_out_chunks_avoid_excluded_windows():
    ids = list(range(100))
    window = 10
    excluded = {tuple(range(20, 30)), tuple(range(50, 60))}
    chunks = held_out_chunks(ids, 4, excluded, window)
    used = [t for c in chunks for t in c]
    assert not set(used) & set(range(20, 30)) | (set(used) & set(range(50, 60)))
    assert all(len(c) == 4 and c == list(range(c[0], c[0] + 4)) for c in chunks)  # contiguous, unbroken
    assert len(chunks) == 5 + 5 + 10  # runs [0,20), [30,50), [60,100)
    parts = split(chunks, {"a": 3, "b": 5}, seed=1)
    assert len(parts["a"]) == 3 and len(parts["b"]) == 5
    assert not {tuple(c) for c in parts["a"]} & {tuple(c) for c in parts["b"]}
    assert parts == split(chunks, {"a": 3, "b": 5}, seed=1)
    with pytest.raises(ValueError, match="asked for 30"):
        split(chunks, {"a": 30}, seed=0)
