"""Mixture-of-Head router on tiny models: base reproduction, gates, load balance, training, resume."""

import pandas as pd
import pytest
import torch

from interp.interventions import from_json, to_json
from interp.interventions.heads import HeadMask, HeadRouting
from interp.interventions.router import (
    HeadRouter,
    RouterError,
    load_balance,
    load_router,
    route,
    routed,
    save_router,
)
from interp.studies.heads_text import lm_batch
from interp.studies.heads_train import RouterCfg, schedule, train_router, usage


def _batch(seed=0, lengths=(12, 12, 9)):
    g = torch.Generator().manual_seed(seed)
    return lm_batch([torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths], 256)


def _logits(loaded, b):
    with torch.no_grad():
        return loaded.model(**b.kwargs).logits


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
def test_all_heads_uniform_router_reproduces_base(fixture, request):
    loaded = request.getfixturevalue(fixture)
    b = _batch()
    base = _logits(loaded, b)
    router = HeadRouter(loaded.n_layers, loaded.d_model, loaded.n_heads)  # zero init = uniform
    with routed(loaded, router, loaded.n_heads):
        out = _logits(loaded, b)
    assert torch.allclose(out, base, atol=1e-6, rtol=1e-6)
    # a router that is uniform only through its bias does the same
    with torch.no_grad():
        router.bias.fill_(3.0)
    with routed(loaded, router, loaded.n_heads):
        assert torch.allclose(_logits(loaded, b), base, atol=1e-6, rtol=1e-6)
    assert torch.equal(_logits(loaded, b), base)  # hooks gone


def test_route_gates_against_loop():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 6)
    for k in (1, 3, 6):
        gates, probs, chosen = route(scores, k)
        assert torch.allclose(probs.sum(-1), torch.ones(2, 3))
        for b in range(2):
            for t in range(3):
                top = sorted(range(6), key=lambda h: -scores[b, t, h].item())[:k]
                p = torch.softmax(scores[b, t], 0)
                for h in range(6):
                    want = k * p[h] / p[top].sum() if h in top else 0.0
                    assert gates[b, t, h].item() == pytest.approx(float(want), abs=1e-6)
                    assert bool(chosen[b, t, h]) == (h in top)
        assert torch.allclose(gates.sum(-1), torch.full((2, 3), float(k)))  # active gates average 1
    with pytest.raises(RouterError, match="between 1 and"):
        route(scores, 7)


def test_top_k_router_equals_per_token_mask(tiny):
    """With equal probabilities among the chosen heads, routing is per-token static masking."""
    b = _batch(lengths=(10, 10))
    router = HeadRouter(tiny.n_layers, tiny.d_model, tiny.n_heads)
    with torch.no_grad():
        router.bias[:, [0, 2]] = 5.0  # heads 0 and 2 win every token; their probabilities are equal
    with routed(tiny, router, 2):
        out = _logits(tiny, b)
    off = tuple((l, h) for l in range(tiny.n_layers) for h in (1, 3))
    with HeadMask(off).apply(tiny):
        assert torch.allclose(out, _logits(tiny, b), atol=1e-6)


def test_load_balance_minimal_when_uniform():
    H, T = 6, 600
    uniform = torch.full((T, H), 1 / H)
    _, _, chosen = route(torch.zeros(T, H), 2)
    assert load_balance(uniform, chosen).item() == pytest.approx(1.0, abs=1e-6)
    # routers whose probabilities match their dispatch (confident top-1): LB = H * sum f^2 >= 1
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        heads = torch.randint(0, H, (T,), generator=g) if trial else torch.arange(T) % H
        probs = torch.nn.functional.one_hot(heads, H).float()
        lb = load_balance(probs, probs.bool()).item()
        f = probs.mean(0)
        assert lb == pytest.approx(H * (f ** 2).sum().item(), rel=1e-5)
        assert lb >= 1 - 1e-6
        assert (lb == pytest.approx(1.0, abs=1e-6)) == bool(torch.allclose(f, torch.full((H,), 1 / H)))
    skewed = torch.softmax(torch.tensor([3.0, 0, 0, 0, 0, 0]).expand(T, H), -1)
    assert load_balance(skewed, route(torch.log(skewed), 2)[2]).item() > 1.5
    # padded tokens do not count
    mask = torch.zeros(T, dtype=torch.bool)
    mask[: T // 2] = True
    mixed = torch.cat([uniform[: T // 2], skewed[T // 2:]])
    assert load_balance(mixed.view(2, T // 2, H), chosen.view(2, T // 2, H), mask.view(2, T // 2)).item() \
        == pytest.approx(1.0, abs=1e-6)


def test_load_balance_can_dip_below_one_when_probs_disagree_with_choices():
    """The documented caveat: LB is a regulariser, not a bound (2/3 tokens p=(.51,.49), 1/3 p=(0,1))."""
    probs = torch.tensor([[0.51, 0.49]] * 2 + [[0.0, 1.0]])
    chosen = torch.tensor([[True, False]] * 2 + [[False, True]])
    assert load_balance(probs, chosen).item() < 0.9


def test_router_training_lowers_loss_and_resumes_exactly(tiny):
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(0, 256, (16,), generator=g).tolist() for _ in range(6)]
    cfg = RouterCfg(top_k=2, steps=6, batch_size=2, lr=3e-2, lb_coef=0.1, ckpt_every=3)
    saved = []
    full = train_router(tiny, cfg, seqs, checkpoint=lambda s, state, rows: saved.append((s, state, rows)))
    assert [s for s, _, _ in saved] == [3, 6]
    curve = pd.concat([r for _, _, r in saved])
    assert curve["step"].tolist() == list(range(6)) and curve["lb_loss"].gt(0).all()
    resumed = train_router(tiny, cfg, seqs, resume=(saved[0][0], saved[0][1]))
    assert torch.equal(resumed.weight, full.weight) and torch.equal(resumed.bias, full.bias)
    assert full.weight.abs().sum() > 0
    # more steps on the same text lower the training objective
    long = RouterCfg(top_k=2, steps=25, batch_size=6, lr=3e-2, lb_coef=0.1, ckpt_every=25)
    rows = []
    train_router(tiny, long, seqs, checkpoint=lambda s, state, r: rows.append(r))
    loss = rows[0]["loss"].to_numpy()
    assert loss[-5:].mean() < loss[:5].mean()


def test_schedule_is_a_permutation_per_epoch():
    seen = [i for s in range(5) for i in schedule(s, 2, 5, seed=3)]
    assert sorted(seen[:5]) == list(range(5)) and sorted(seen[5:10]) == list(range(5))
    assert schedule(4, 2, 5, 3) == schedule(4, 2, 5, 3)


def test_usage_counts_real_tokens(tiny):
    router = HeadRouter(tiny.n_layers, tiny.d_model, tiny.n_heads)
    with torch.no_grad():
        router.bias[:, 1] = 4.0
    b = _batch(lengths=(10, 6))
    df, nll, lb = usage(tiny, router, 2, [b])
    assert len(df) == tiny.n_layers * tiny.n_heads and (df["n_tokens"] == 16).all()
    assert df.groupby("layer")["frequency"].sum().round(6).eq(2.0).all()  # k heads per token
    assert df.groupby("layer")["mean_gate"].sum().round(5).eq(2.0).all()
    assert (df.loc[df["head"] == 1, "frequency"] == 1.0).all() and nll > 0 and lb > 1


def test_save_load_and_routing_intervention(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_ROUTER_DIR", str(tmp_path))
    from interp.interventions.heads import router_dir

    router = HeadRouter(tiny.n_layers, tiny.d_model, tiny.n_heads)
    with torch.no_grad():
        router.weight.normal_(0, 0.1)
    digest, path = save_router(router, router_dir())
    assert path.exists() and load_router(digest, router_dir()).digest() == digest
    spec = HeadRouting(router=digest, top_k=2)
    assert from_json(to_json(spec)) == spec and spec.label() == "router-k2"
    b = _batch()
    with routed(tiny, router, 2):
        want = _logits(tiny, b)
    with spec.apply(tiny):
        assert torch.allclose(_logits(tiny, b), want)
    assert not torch.allclose(_logits(tiny, b), want)
    with pytest.raises(RouterError, match="not found"), HeadRouting(router="0" * 16, top_k=2).apply(tiny):
        pass
    big = HeadRouter(tiny.n_layers + 1, tiny.d_model, tiny.n_heads)
    with pytest.raises(RouterError, match="layers"), routed(tiny, big, 2):
        pass
    path.write_bytes(path.read_bytes())  # unchanged content still loads
    other = HeadRouter(tiny.n_layers, tiny.d_model, tiny.n_heads)
    from safetensors.torch import save_file
    save_file({"weight": other.weight.detach(), "bias": other.bias.detach()}, str(path))
    with pytest.raises(RouterError, match="does not match"):
        load_router(digest, router_dir())
