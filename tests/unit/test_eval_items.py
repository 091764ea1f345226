"""Per-item scores: every mean metric returns the items it averages, the sweep stores them with the
point's evals rows (eval_items) and compares each point with the base on the same items (eval_deltas,
view eval_vs_base), resumably and without duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from interp.evals import EvalCfg, evaluate, make_reference
from tests.unit.test_evals import ScaleMlp

MEAN_METRICS = {("ppl", "nll"), ("ppl", "norm_loss"), ("facts", "accuracy"), ("facts", "accuracy_norm"),
                ("arith", "accuracy"), ("toxicity", "toxicity"), ("toxicity", "toxic_rate"),
                ("refusal", "refusal_rate"), ("kl", "kl")}


@pytest.fixture(scope="module")
def tiny():
    from interp.model.loading import wrap
    from tests.conftest import byte_tokenizer, tiny_llama

    return wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")


def test_every_mean_metric_returns_the_items_it_averages(tiny):
    cfg = EvalCfg(tasks=("ppl", "facts", "arith", "toxicity", "refusal", "kl"), budget="smoke", window=64)
    scores = evaluate(tiny, cfg, reference=make_reference(tiny, cfg))
    with_items = {(s.task, s.metric): s for s in scores if s.items}
    assert set(with_items) == MEAN_METRICS  # perplexity is compared through nll
    for s in with_items.values():
        ids = [i for i, _ in s.items]
        assert len(ids) == len(set(ids)) and s.value == pytest.approx(np.mean([v for _, v in s.items]), abs=1e-9)
    assert len(with_items[("ppl", "nll")].items) == 512 // 64 and with_items[("ppl", "nll")].items[0][0].startswith(
        "window-")
    ppl = next(s for s in scores if s.metric == "perplexity")
    assert ppl.value == pytest.approx(np.exp(with_items[("ppl", "nll")].value)) and not ppl.items
    assert {i for i, _ in with_items[("kl", "kl")].items} == set(make_reference(tiny, cfg).prompt_ids)


def test_sweep_pairs_every_point_with_the_base(tiny, store):
    from interp.studies.sweep import run_sweep
    from store.evals import vs_base

    cfg = EvalCfg(tasks=("ppl", "facts", "kl"), budget={"ppl": 1024, "facts": 8, "kl": 4}, window=64)
    points = [ScaleMlp(1.0), ScaleMlp(3.0)]
    run = run_sweep(tiny, store, study="eval", config={"study": "items"}, points=points, eval_cfg=cfg, progress=False)
    with store.connect(read_only=True) as con:
        cmp = vs_base(con, run).set_index(["point", "task", "metric"])
        items = con.execute("SELECT point, task, metric, item, value FROM eval_items WHERE run_id = ?", [run]).df()
    same = cmp.loc["scale1"]  # an edit that changes nothing: every item equal, no detectable change
    assert (same["delta"] == 0).all() and same["noise"].all() and (same["p"] == 1).all()
    big = cmp.loc["scale3"]
    nll = big.loc[("ppl", "nll")]
    base = items[(items.point == "base") & (items.metric == "nll")].set_index("item")["value"]
    edited = items[(items.point == "scale3") & (items.metric == "nll")].set_index("item")["value"]
    assert nll["delta"] == pytest.approx((edited - base).mean()) and len(base) == 16
    assert nll["lo"] <= nll["delta"] <= nll["hi"] and nll["method"] == "sign-flip / bootstrap-bca"
    ppl = big.loc[("ppl", "perplexity")]
    assert ppl["delta"] == pytest.approx(ppl["value"] - ppl["base_value"])
    assert ppl["lo"] == pytest.approx(ppl["base_value"] * np.expm1(nll["lo"]))
    assert big.loc[("facts", "accuracy"), "method"].startswith("mcnemar")
    kl = big.loc[("kl", "kl")]
    assert kl["delta"] == pytest.approx(kl["value"]) and kl["delta"] > 0
    # a resumed sweep recomputes only what is missing, from the base items already stored
    with store.connect() as con:
        n_items = con.execute("SELECT count(*) FROM eval_items").fetchone()[0]
        con.execute("DELETE FROM evals WHERE run_id = ? AND point = 'scale3'", [run])
        con.execute("DELETE FROM eval_deltas WHERE run_id = ? AND point = 'scale3'", [run])
        con.execute("UPDATE runs SET status = 'running' WHERE run_id = ?", [run])
    assert run_sweep(tiny, store, study="eval", config={"study": "items"}, points=points, eval_cfg=cfg,
                     progress=False) == run
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM eval_items").fetchone()[0] == n_items
        again = vs_base(con, run).set_index(["point", "task", "metric"]).loc["scale3"]
    assert again.loc[("ppl", "nll"), "delta"] == pytest.approx(nll["delta"])
    assert again.loc[("ppl", "nll"), "lo"] == pytest.approx(nll["lo"])
