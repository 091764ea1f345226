"""Head-study analyses and store on synthetic data, and the whole study on a tiny model (with resume)."""

import itertools

import numpy as np
import pandas as pd
import pytest

from analyses import head_agreement, head_pruning
from interp.interventions import from_json
from interp.studies.heads_config import HeadsCfg
from interp.studies.parts import EvalPart, RouterPart
from store import heads as db


def _importance(L=3, H=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    grad = rng.random((L, H))
    for (l, h) in itertools.product(range(L), range(H)):
        rows.append(("gradient", "abs_grad", l, h, grad[l, h]))
        rows.append(("gradient", "abs_grad_layer_l2", l, h, grad[l, h] / np.linalg.norm(grad[l])))
        rows.append(("zero", "delta_loss", l, h, 2 * grad[l, h] + 1))  # same ranking as gradient
        rows.append(("mean", "delta_loss", l, h, -grad[l, h]))  # reversed ranking
        rows.append(("zero", "delta_task_nll", l, h, rng.random()))
    return pd.DataFrame(rows, columns=["method", "metric", "layer", "head", "value"])


def test_pruning_orders():
    imp = _importance()
    zero = head_pruning.order(imp, "zero")
    sel = imp[(imp["metric"] == "delta_loss") & (imp["method"] == "zero")]
    values = {(r.layer, r.head): r.value for r in sel.itertuples()}
    assert [values[h] for h in zero] == sorted(values.values())  # least important first
    assert head_pruning.order(imp, "mean") == zero[::-1]
    assert head_pruning.least_important(zero, 3) == tuple(sorted(zero[:3]))
    per = head_pruning.per_layer(imp, "gradient", 1)
    assert len(per) == 3 and {l for l, _ in per} == {0, 1, 2}
    g = imp[imp["metric"] == "abs_grad"]
    for l, h in per:
        assert g[(g.layer == l)]["value"].min() == g[(g.layer == l) & (g["head"] == h)]["value"].item()
    r = head_pruning.random_order(3, 4, seed=1)
    assert sorted(r) == sorted(itertools.product(range(3), range(4))) and r == head_pruning.random_order(3, 4, 1)
    assert r != head_pruning.random_order(3, 4, 2)
    assert [head_pruning.keep_count(f, 9) for f in (0.5, 0.75, 1.0, 0.01)] == [5, 7, 9, 1]
    with pytest.raises(ValueError, match="no 'zero' importance"):
        head_pruning.order(imp[imp.method != "zero"], "zero")
    with pytest.raises(ValueError, match="unknown pruning method"):
        head_pruning.order(imp, "magic")


def test_agreement_against_direct_computation():
    imp = _importance()
    ag = head_agreement.agreement(imp, top_frac=0.25).set_index(["score_a", "score_b"])
    assert ag.loc[("gradient:abs_grad", "zero:delta_loss"), "spearman"] == pytest.approx(1.0)
    assert ag.loc[("gradient:abs_grad", "mean:delta_loss"), "kendall"] == pytest.approx(-1.0)
    assert ag.loc[("gradient:abs_grad", "zero:delta_loss"), "top_overlap"] == 1.0
    assert ag.loc[("gradient:abs_grad", "mean:delta_loss"), "top_overlap"] == 0.0
    # Spearman by hand: Pearson correlation of ranks
    a = imp[(imp.method == "gradient") & (imp.metric == "abs_grad")].sort_values(["layer", "head"])["value"]
    b = imp[(imp.method == "zero") & (imp.metric == "delta_task_nll")].sort_values(["layer", "head"])["value"]
    ra, rb = a.rank().to_numpy(), b.rank().to_numpy()
    assert ag.loc[("gradient:abs_grad", "zero:delta_task_nll"), "spearman"] == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    top = head_agreement.top_heads(imp, 2)
    best = top[(top.score == "zero:delta_loss") & (top["rank"] == 1)].iloc[0]
    assert best.value == imp[(imp.method == "zero") & (imp.metric == "delta_loss")]["value"].max()
    prof = head_agreement.layer_profile(imp)
    positive = prof[prof.score != "mean:delta_loss"]  # mean:delta_loss is negative everywhere here
    assert positive.groupby("score")["share"].sum().round(6).eq(1.0).all()
    assert prof[prof.score == "mean:delta_loss"]["share"].isna().all()  # no share of nothing


def test_store_round_trips_and_replaces(store):
    imp = _importance().query("method == 'zero'").assign(stderr=0.1, n=4, dataset="text")
    with store.connect() as con:
        for _ in range(2):  # writing twice replaces, never duplicates
            db.write_importance(con, 7, "zero", imp.drop(columns="method"))
        got = db.read_importance(con, 7)
        assert len(got) == len(imp) and db.importance_methods(con, 7) == {"zero"}
        assert got["n_tokens"].isna().all()  # not given: NULL
        db.write_importance(con, 7, "zero", imp.drop(columns="method").assign(n_tokens=96))
        assert db.read_importance(con, 7)["n_tokens"].eq(96).all()
        # a store made before n_tokens existed gets the column on its next write-open
        con.execute("CREATE TABLE old AS SELECT * EXCLUDE (n_tokens) FROM heads_importance")
        con.execute("DROP TABLE heads_importance")
        con.execute("ALTER TABLE old RENAME TO heads_importance")
        con.execute("DELETE FROM meta WHERE key = 'schema_digest'")  # as older code left it
    with store.connect() as con:
        got = db.read_importance(con, 7)
        assert len(got) == len(imp) and got["n_tokens"].isna().all()
        means = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
        db.write_means(con, 7, means, 100)
        db.write_means(con, 7, means, 100)
        np.testing.assert_array_equal(db.read_means(con, 7), means)
        assert db.read_means(con, 8) is None
        steps = pd.DataFrame({"step": [0, 1], "lm_loss": [3.0, 2.9], "lb_loss": [1.1, 1.0], "loss": [3.0, 2.9],
                              "seconds": [0.1, 0.1]})
        db.save_checkpoint(con, 7, 2, 2, b"state-2", steps)
        db.save_checkpoint(con, 7, 2, 2, b"state-2", steps)  # a resumed run rewriting the same steps
        assert db.load_checkpoint(con, 7, 2) == (2, b"state-2") and db.load_checkpoint(con, 7, 3) is None
        assert len(db.read_steps(con, 7)) == 2
        w, b = np.ones((3, 4, 6), np.float32), np.zeros((3, 4), np.float32)
        use = pd.DataFrame({"layer": [0], "head": [0], "frequency": [1.0], "mean_gate": [1.0], "mean_prob": [0.5],
                            "n_tokens": [10]})
        summary = {"steps": 2, "heldout_tokens": 10, "base_nll": 1.0, "router_nll": 1.1, "uniform_nll": 1.5, "static_nll": 1.2,
                       "router_lb": 1.0}
        for _ in range(2):
            db.write_router(con, 7, 2, "abc", w, b, use, summary)
        assert db.router_digest(con, 7, 2) == "abc" and len(db.read_router_summary(con, 7)) == 1
        w2, b2 = db.read_router_params(con, 7, 2)
        np.testing.assert_array_equal(w2, w) and np.testing.assert_array_equal(b2, b)


def test_config_validation():
    assert HeadsCfg(budget="smoke").router.keep == (0.5,)
    assert HeadsCfg(budget="quick", router=RouterPart(steps=3)).router.steps == 3
    assert HeadsCfg(budget="full").gradient_seq and not HeadsCfg(budget="smoke").gradient_seq
    assert HeadsCfg(budget="smoke", gradient_seq=True).gradient_seq
    assert HeadsCfg(budget="quick").grad_seqs == 32 and HeadsCfg(budget="quick", text_seqs=40).grad_seqs == 40
    assert HeadsCfg(budget="quick", text_seqs=2, grad_seqs=3).grad_seqs == 3
    with pytest.raises(ValueError, match=r"grad_seqs \(--grad-seqs\) \(3\) must be at least text_seqs \(--text-seqs\) \(5\)"):
        HeadsCfg(budget="quick", text_seqs=5, grad_seqs=3)
    with pytest.raises(ValueError, match=r"budget \(--budget\) takes one of smoke, quick, full, not 'huge'"):
        HeadsCfg(budget="huge")
    with pytest.raises(ValueError, match=r"methods \(--methods\) takes some of .*, not 'magic'"):
        HeadsCfg(methods=("gradient", "magic"))
    with pytest.raises(ValueError, match="every layer"):
        HeadsCfg(budget="smoke", methods=("zero",)).ablated_layers(30)
    assert HeadsCfg(budget="smoke").ablated_layers(30) == range(28, 30)
    assert HeadsCfg(budget="quick").ablated_layers(30) == range(30)
    with pytest.raises(ValueError, match=r"\[heads.router\] steps \(--router-steps\)"):
        HeadsCfg(router=RouterPart(steps=-1))
    with pytest.raises(ValueError, match=r"\[heads.router\] keep \(--router-keep\) takes fractions above 0 and at "
                                         r"most 1"):
        HeadsCfg(router=RouterPart(keep=(0.0,)))
    d = HeadsCfg(budget="smoke").describe()
    assert "batch_size" not in d and d["eval"]["tasks"] == ["ppl", "facts"]


def test_study_on_tiny_model_resumes(tiny, store, tmp_path, monkeypatch):
    from interp.studies.heads import run_heads

    monkeypatch.setenv("INTERP_ROUTER_DIR", str(tmp_path / "routers"))
    cfg = HeadsCfg(budget="smoke", ablation_layers=0, methods=("gradient", "zero", "mean", "mean_zero", "random"),
                   gradient_seq=True, grad_seqs=3, router=RouterPart(keep=(0.5, 1.0), steps=3), prune_fracs=(0.25,),
                   eval=EvalPart(tasks=("ppl",)))
    run = run_heads(tiny, store, cfg, progress=False)
    L, H = tiny.n_layers, tiny.n_heads

    def counts(con):
        return {t: con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run]).fetchone()[0]
                for t in ("heads_importance", "heads_router_steps", "heads_router_usage", "heads_points", "evals")}

    with store.connect() as con:
        first = counts(con)
        points = con.execute("SELECT point FROM heads_points WHERE run_id = ? ORDER BY point", [run]).df()["point"]
        evaluated = set(con.execute("SELECT DISTINCT point FROM evals WHERE run_id = ?", [run]).df()["point"])
        digests = db.read_router_summary(con, run).set_index("top_k")["digest"].to_dict()
    # gradient per token and per sequence 3 metrics each, zero/mean 4 metrics each, every head
    assert first["heads_importance"] == L * H * (3 + 3 + 4 + 4)
    with store.connect() as con:
        imp = db.read_importance(con, run)
        agree = db.read_agreement(con, run)
    grad = imp[imp.method.str.startswith("gradient")]
    assert grad["n_tokens"].eq(3 * 16).all() and grad["n"].eq(3).all()  # 3 sequences of 16 tokens
    ablated = imp[~imp.method.str.startswith("gradient") & (imp.dataset == "text")]
    assert ablated["n_tokens"].eq(2 * 16).all() and ablated["n"].eq(2).all()  # the first 2 of them
    assert imp["n_tokens"].notna().all() and grad[grad.metric == "abs_grad"]["stderr"].notna().all()
    assert ((agree.score_a == "gradient:abs_grad") & (agree.score_b == "gradient_seq:abs_grad")).any()
    assert first["heads_router_steps"] == 2 * 3 and first["heads_router_usage"] == 2 * L * H
    assert evaluated == set(points) | {"base"}
    # budgets: 25% of 16 heads = 4, router k=2 -> 8 off; k=4 keeps all (re-weighting only)
    assert {"gradient-4", "gradient-8", "zero-8", "mean-4", "mean_zero-8", "random0-8", "gradient_layer-8",
            "router-k2", "router-k4"} <= set(points)
    with store.connect() as con:
        specs = dict(con.execute("SELECT DISTINCT point, intervention::VARCHAR FROM evals WHERE run_id = ?",
                                 [run]).fetchall())
    mean_spec, mean_zero_spec = from_json(specs["mean-8"]), from_json(specs["mean_zero-8"])
    assert mean_spec.heads == mean_zero_spec.heads and mean_spec.means and not mean_zero_spec.means
    assert (tmp_path / "routers" / f"means-{mean_spec.means}.safetensors").exists()
    # interrupt: lose a router's results and half the sweep, then run again
    with store.connect() as con:
        con.execute("DELETE FROM heads_router_summary WHERE run_id = ? AND top_k = 2", [run])
        con.execute("DELETE FROM heads_router_usage WHERE run_id = ? AND top_k = 2", [run])
        con.execute("DELETE FROM evals WHERE run_id = ? AND point LIKE 'zero%'", [run])
        con.execute("DELETE FROM heads_importance WHERE run_id = ? AND method = 'mean'", [run])
        con.execute("UPDATE runs SET status = 'running' WHERE run_id = ?", [run])
    (tmp_path / "routers" / f"{digests[4]}.safetensors").unlink()  # restored from the store
    (tmp_path / "routers" / f"means-{mean_spec.means}.safetensors").unlink()
    assert run_heads(tiny, store, cfg, progress=False) == run
    with store.connect() as con:
        assert counts(con) == first
        assert db.read_router_summary(con, run).set_index("top_k")["digest"].to_dict() == digests
    assert (tmp_path / "routers" / f"{digests[4]}.safetensors").exists()
    assert (tmp_path / "routers" / f"means-{mean_spec.means}.safetensors").exists()
