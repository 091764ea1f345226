"""The layer study end to end on a tiny model: tables, sweep points, base in the same run,
healing, agreement, resume without duplicates, and the README query."""

from __future__ import annotations

import pytest
import torch

from interp.evals import evaluate
from interp.interventions.layers import LayerDrop
from interp.studies.layers import run_layers
from interp.studies.layers_config import LayersCfg, LayersCfgError
from interp.studies.parts import EvalPart, HealPart


@pytest.fixture
def cfg():
    return LayersCfg(budget="quick", limit=4, max_tokens=32, sizes=(1, 2), seeds=(0, 1),
                     heal=HealPart(steps=1, sizes=(2,), batch=1), eval=EvalPart(budget="ppl=128,facts=3,arith=2"))


def _count(con, table, run_id):
    return con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]).fetchone()[0]


def test_study_end_to_end_and_resume(tiny, store, cfg):
    torch.manual_seed(0)
    result = run_layers(tiny, store, cfg, progress=False)
    L = tiny.n_layers
    with store.connect(read_only=True) as con:
        kinds = dict(con.execute("SELECT run_id, kind FROM runs").fetchall())
        assert kinds == {result.cache_run_id: "cache", result.run_id: "layers"}
        status = con.execute("SELECT status FROM runs WHERE run_id = ?", [result.run_id]).fetchone()[0]
        assert status == "complete"
        points = con.execute("SELECT strategy, n, seed, heal_steps, layers, point FROM layer_points "
                             "WHERE run_id = ?", [result.run_id]).df()
        # every layer alone, and each strategy at each size
        singles = points[points["strategy"] == "single"]
        assert sorted(tuple(x) for x in singles["layers"]) == [(l,) for l in range(L)]
        blocks = points[(points["strategy"] != "single") & (points["heal_steps"] == 0)]
        assert set(blocks["strategy"]) == {"angular", "deepest", "shallowest", "random", "influence"}
        assert set(blocks["n"]) == {1, 2}
        assert (points["layers"].map(len) == points["n"]).all()
        healed = points[points["heal_steps"] > 0]
        assert set(healed["strategy"]) == {"angular"} and list(healed["n"]) == [2]
        deepest2 = points[(points["strategy"] == "deepest") & (points["n"] == 2)]["layers"].iloc[0]
        assert list(deepest2) == [L - 3, L - 2]  # the last layer stays
        evals = con.execute("SELECT point, task, metric, value FROM evals WHERE run_id = ?", [result.run_id]).df()
        assert set(evals["point"]) == set(points["point"]) | {"base"}
        assert evals["point"].nunique() == result.n_points
        assert _count(con, "layer_heal", result.run_id) > 0
        # similarity and Block Influence at last, mean and tokens; Gromov's distances at last and mean
        assert _count(con, "layer_similarity", result.run_id) == 3 * (L + 1) ** 2
        assert _count(con, "layer_angular", result.run_id) == 2 * L * (L + 1) // 2
        assert _count(con, "layer_influence", result.run_id) == 3 * L
        positions = con.execute("SELECT DISTINCT position FROM layer_similarity WHERE run_id = ?",
                                [result.run_id]).fetchall()
        assert {p for (p,) in positions} == {"last", "mean", "tokens"}
        agreement = con.execute("SELECT * FROM layer_agreement WHERE run_id = ?", [result.run_id]).df()
        single = agreement[(agreement["scope"] == "single") & (agreement["metric"] == "nll")]
        assert set(single["proxy"]) == {"angular", "cosine", "influence"} and (single["n_points"] == L).all()
        assert single["spearman"].between(-1, 1).all()
        # the README question: which block of 2 layers costs least perplexity
        best = con.execute("SELECT strategy, layers, value, delta FROM layer_drops WHERE run_id = ? AND n = 2 "
                           "AND metric = 'perplexity' AND heal_steps = 0 ORDER BY value LIMIT 1",
                           [result.run_id]).fetchone()
        ppl = evals[(evals["metric"] == "perplexity") & evals["point"].str.match(r"drop\[\d+-\d+\]$")]
        assert best[2] == pytest.approx(ppl["value"].min())
        base = evals[(evals["point"] == "base") & (evals["metric"] == "perplexity")]["value"].iloc[0]
        assert best[3] == pytest.approx(best[2] - base)
        before = {t: _count(con, t, result.run_id) for t in
                  ("evals", "layer_points", "layer_similarity", "layer_agreement", "layer_heal")}
    # a stored point equals evaluating the same drop directly
    with LayerDrop((0,)).apply(tiny):
        direct = {(s.task, s.metric): s.value for s in evaluate(tiny, cfg.eval_cfg())}
    stored = evals[evals["point"] == "drop[0]"].set_index(["task", "metric"])["value"]
    assert stored[("ppl", "nll")] == pytest.approx(direct[("ppl", "nll")], rel=1e-6)
    # re-running resumes: nothing recomputed or duplicated
    again = run_layers(tiny, store, cfg, progress=False)
    assert again.run_id == result.run_id and again.cache_run_id == result.cache_run_id
    with store.connect(read_only=True) as con:
        assert {t: _count(con, t, result.run_id) for t in before} == before


def test_budgets_and_bad_settings(tmp_path):
    L = 30
    smoke, quick, full = LayersCfg(budget="smoke"), LayersCfg(budget="quick"), LayersCfg()
    assert smoke.single_layers(L) == [0, 29] and smoke.block_sizes(L) == [10]
    assert quick.single_layers(L) == list(range(30)) and quick.block_sizes(L) == [1, 2, 4, 8, 12, 16]
    assert full.block_sizes(L) == list(range(1, 30)) and full.random_seeds == (0, 1, 2, 3, 4)
    assert quick.block_sizes(5) == [1, 2, 4]
    assert quick.eval_cfg().tasks == ("ppl", "facts", "arith") and full.eval_cfg().tasks == ("ppl", "facts", "arith")
    assert [quick.eval_cfg().count(t) for t in ("ppl", "facts", "arith")] == [1024, 24, 16]
    (tmp_path / "mmlu.jsonl").write_text("")
    assert "mmlu" in LayersCfg(eval=EvalPart(mmlu_path=str(tmp_path / "mmlu.jsonl"))).eval_cfg().tasks
    assert quick.heal_cfg  # healing off by default, still constructible on demand
    with pytest.raises(LayersCfgError, match=r"\[layers.heal\] sizes \(--heal-sizes\) \[4\] are not among the swept sizes"):
        LayersCfg(sizes=(1, 2), heal=HealPart(sizes=(2, 4), steps=5))
    with pytest.raises(LayersCfgError, match=r"budget \(--budget\) takes one of smoke, quick, full, not 'huge'"):
        LayersCfg(budget="huge")
    with pytest.raises(LayersCfgError, match=r"strategies \(--strategies\) takes some of .*, not 'best'"):
        LayersCfg(strategies=("best",))
    with pytest.raises(LayersCfgError, match=r"\[layers.heal\] steps \(--heal-steps\)"):
        LayersCfg(heal=HealPart(steps=-1))
    with pytest.raises(LayersCfgError, match="too big: this model has 30 layers"):
        LayersCfg(sizes=(30,)).block_sizes(30)
    with pytest.raises(LayersCfgError, match=r"\[layers.eval\] tasks \(--tasks\): unknown task 'vibes'"):
        LayersCfg(eval=EvalPart(tasks=("vibes",)))
