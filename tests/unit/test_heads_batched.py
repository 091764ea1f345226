"""Batched head ablation (all edits of a layer in wide passes that start at that layer) against a plain
loop of full forward passes, from the loss up to the head study's stored numbers."""

import numpy as np
import pytest
import torch

from interp.interventions.gating import LayerGate, head_gates
from interp.model.loading import Loaded, wrap
from interp.studies import heads_importance as imp
from interp.studies.heads_text import IGNORE, Scored, answer_batch, lm_batch
from tests.conftest import byte_tokenizer, tiny_gpt2, tiny_llama


@pytest.fixture(scope="module")
def gqa() -> Loaded:
    """Llama with grouped-query attention: 4 query heads share 2 key/value heads."""
    return wrap(tiny_llama(n_layers=3, seed=3), byte_tokenizer(), name="tiny-gqa", revision="seed3")


@pytest.fixture(scope="module")
def mha() -> Loaded:
    """Llama with one key/value head per query head."""
    return wrap(tiny_llama(n_layers=3, n_kv=4, seed=4), byte_tokenizer(), name="tiny-mha", revision="seed4")


@pytest.fixture(scope="module")
def gpt() -> Loaded:
    return wrap(tiny_gpt2(n_layers=2, seed=5), byte_tokenizer(chat=False), name="tiny-gpt2", revision="seed5")


def _seqs(lengths: list[int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]


def _reference(loaded: Loaded, batch: Scored) -> dict[str, np.ndarray]:
    """Per row NLL / token accuracy / exact match from Hugging Face's own logits over every position,
    in float64 (whatever head gates are active): the oracle, sharing no code with ``row_metrics``."""
    with torch.no_grad():
        logits = loaded.model(**batch.kwargs).logits.double()
    out: dict[str, list[float]] = {"nll": [], "acc": [], "exact": []}
    for i in range(batch.rows):
        pos = [p for p in range(batch.targets.shape[1]) if batch.targets[i, p] != IGNORE]
        tgt = batch.targets[i, pos]
        lp = torch.log_softmax(logits[i, pos], -1)
        hits = (logits[i, pos].argmax(-1) == tgt).double()
        out["nll"].append(-lp[range(len(pos)), tgt].mean().item())
        out["acc"].append(hits.mean().item())
        out["exact"].append(float(hits.all()))
    return {k: np.array(v) for k, v in out.items()}


def test_loss_without_autograd_equals_float64_and_the_differentiated_path():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 1000, generator=g) * 4
    logits[:50, 7] = logits[:50, 3] = 40.0  # ties: the first maximal index wins, as argmax's
    tgt = torch.randint(0, 1000, (300,), generator=g)
    tgt[:25] = 3
    tgt[25:50] = 7
    truth = torch.logsumexp(logits.double(), -1) - logits.double().gather(-1, tgt[:, None])[:, 0]
    hits = (logits.argmax(-1) == tgt).float()
    with torch.no_grad():
        nll, hit = imp._nll_hits(logits.clone(), tgt)
    leaf = logits.clone().requires_grad_(True)
    nll_grad, hit_grad = imp._nll_hits(leaf, tgt)
    assert nll_grad.requires_grad and torch.equal(leaf.detach(), logits)  # differentiated: not in place
    for got, hit_got in ((nll, hit), (nll_grad.detach(), hit_grad)):
        torch.testing.assert_close(got.double(), truth, rtol=1e-6, atol=1e-6)
        assert torch.equal(hit_got, hits)
    assert hits[:25].eq(1).all() and hits[25:50].eq(0).all()


@pytest.mark.parametrize("fixture", ["gqa", "mha", "gpt"])
def test_batched_ablation_equals_one_full_forward_per_head(fixture, request, one_thread):
    loaded = request.getfixturevalue(fixture)
    samples = [lm_batch(_seqs([10, 10, 7], 1), 256),  # a padded row
               answer_batch([[5, 6, 7], [8, 9, 30, 31]], [[10, 11], [12]], 256)]  # scored answers only
    means = imp.head_means(loaded, samples[:1])
    L, H = loaded.n_layers, loaded.n_heads
    for max_tokens in (40, 10_000):  # several passes per layer, and every edit of a layer in one
        ab = imp.ablation_importance(loaded, samples, means, max_tokens=max_tokens)
        clean = [_reference(loaded, b) for b in samples]
        for k in ("nll", "acc", "exact"):
            np.testing.assert_allclose(ab.clean[k], np.concatenate([c[k] for c in clean]), rtol=1e-5)
        for mi, mode in enumerate(imp.MODES):
            for layer in range(L):
                for head in range(H):
                    gates = torch.ones(H)
                    gates[head] = 0
                    with head_gates(loaded, {layer: LayerGate(gates, means[layer] if mode == "mean" else None)}):
                        ref = [_reference(loaded, b) for b in samples]
                    for k in ("nll", "acc", "exact"):
                        np.testing.assert_allclose(ab.edited[k][mi, layer, head], np.concatenate([r[k] for r in ref]),
                                                   rtol=1e-5, err_msg=f"{mode} {layer}.{head} {k}")
    d, se = ab.delta("nll")
    assert d.shape == (2, L, H) and np.isfinite(se).all() and np.abs(d).max() > 1e-3


def _one_at_a_time(loaded: Loaded, batches: list[Scored], means: torch.Tensor | None, modes: tuple[str, ...] = imp.MODES,
                   max_tokens: int = 2048, layers: range | None = None, progress: bool = False) -> imp.Ablation:
    """``ablation_importance`` as a plain loop: one full forward pass per (batch, mode, layer, head)."""
    metrics = ("nll", "acc", "exact")
    rows = sum(b.rows for b in batches)
    L, H = loaded.n_layers, loaded.n_heads
    edited = {k: np.full((len(modes), L, H, rows), np.nan) for k in metrics}

    def scored() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        with torch.no_grad():
            return [imp.row_metrics(loaded.logits, imp.final_hidden(loaded, b), b.targets) for b in batches]

    clean = {k: torch.cat([m[i] for m in scored()]).numpy() for i, k in enumerate(metrics)}
    for mi, mode in enumerate(modes):
        for layer in range(L) if layers is None else layers:
            for head in range(H):
                gates = torch.ones(H)
                gates[head] = 0
                fill = None if means is None or mode == "zero" else means[layer]
                with head_gates(loaded, {layer: LayerGate(gates, fill)}):
                    out = scored()
                for i, k in enumerate(metrics):
                    edited[k][mi, layer, head] = torch.cat([m[i] for m in out]).numpy()
    return imp.Ablation(clean, edited)


def test_head_study_stores_the_same_importance_as_one_forward_per_head(gqa, tmp_path, monkeypatch, one_thread):
    from interp.studies import heads
    from interp.studies.heads_config import HeadsCfg
    from interp.studies.parts import EvalPart
    from interp.studies.sweep import start_study_run
    from store import Store

    cfg = HeadsCfg(budget="smoke", ablation_layers=0, methods=("zero", "mean"), eval=EvalPart(tasks=("ppl",)))
    tables = {}
    for name in ("batched", "loop"):
        if name == "loop":
            monkeypatch.setattr(imp, "ablation_importance", _one_at_a_time)
        store = Store(tmp_path / f"{name}.duckdb")
        run, _ = start_study_run(gqa, store, "heads", cfg.describe())
        heads.compute_importance(gqa, store, run, cfg, heads.prepare(gqa, cfg), progress=False)
        with store.connect(read_only=True) as con:
            tables[name] = heads.db.read_importance(con, run).sort_values(["method", "dataset", "metric", "layer", "head"])
    a, b = tables["batched"], tables["loop"]
    ablated = a.method.isin(imp.MODES)
    assert ablated.sum() == 2 * 4 * gqa.n_layers * gqa.n_heads  # zero and mean, 4 metrics, every head
    for col in ("method", "dataset", "metric", "layer", "head", "n", "n_tokens"):
        assert a[col].tolist() == b[col].tolist()
    np.testing.assert_allclose(a["value"].to_numpy(float), b["value"].to_numpy(float), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(a["stderr"].to_numpy(float), b["stderr"].to_numpy(float), rtol=1e-5, atol=1e-9)
    assert np.abs(a[ablated]["value"].to_numpy(float)).max() > 1e-3

    # resumed with everything stored: nothing is ablated again
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("stored ablations were recomputed")

    monkeypatch.setattr(imp, "ablation_importance", refuse)
    store = Store(tmp_path / "batched.duckdb")
    run, _ = start_study_run(gqa, store, "heads", cfg.describe())
    heads.compute_importance(gqa, store, run, cfg, heads.prepare(gqa, cfg), progress=False)
