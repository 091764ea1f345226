"""The weight-pruning study on a tiny model: tables, the prune_curve view, resume, stored norms reused."""

import dataclasses

import numpy as np
import pytest

from interp.interventions.prune import PruneSpec
from interp.interventions.pruning.calibdata import CalibData
from interp.interventions.pruning.stored import StoreNorms
from interp.studies import weights as study
from interp.studies.config_file import build
from interp.studies.parts import EvalPart
from interp.studies.weights import Plan, WeightsCfg, plan_points, run_weights
from store.weights import curve, read_norms, read_prune_stats, write_norms

TINY_PLAN = Plan(uniform=(0.5,), global_rates=(), nm=("2:4",), group_rates=(), group_methods=(), single_rates=(0.5,),
                 single_methods=("magnitude",), single_modules=("down",), mixed=((("attn", 0.2), ("mlp", 0.6)),),
                 mixed_methods=("wanda",), oneshot_rates=(), nm_methods=("wanda",), tasks=("ppl",),
                 eval_budget="ppl=256", calib_windows=2, calib_length=32)


@pytest.fixture
def tiny_plan(monkeypatch):
    monkeypatch.setitem(study.PLANS, "smoke", TINY_PLAN)
    return WeightsCfg(budget="smoke")


def test_run_stores_points_stats_norms_and_the_curve(tiny, store, tiny_plan):
    from interp.commands.demo import STUDIES

    phases: list[str] = []
    run_id = run_weights(tiny, store, tiny_plan, progress=False, on_phase=phases.append)
    assert phases == [key for key, _ in next(s for s in STUDIES if s.name == "weights").phases]  # the demo's steps
    points = [s.label() for s in plan_points(tiny, tiny_plan)]
    assert points == ["magnitude all=50%", "wanda all=50%", "wanda all 2:4", "magnitude down=50%",
                      "wanda attn=20%,mlp=60%"]
    with store.connect(read_only=True) as con:
        pp = con.execute("SELECT point, method, modules, target_rate, n_pruned, n_params, sparsity, total_params "
                         "FROM prune_points WHERE run_id = ? ORDER BY point", [run_id]).df().set_index("point")
        evals = con.execute("SELECT DISTINCT point FROM evals WHERE run_id = ?", [run_id]).df()
        cv = curve(con, run_id, "ppl", "perplexity")
        stats = read_prune_stats(con, run_id, "magnitude down=50%")
        calibs = con.execute("SELECT calib_id, mode, n_tokens, run_id FROM calibrations").df()
        n_norm_rows = con.execute("SELECT count(*) FROM input_norms").fetchone()[0]
        status = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]
    assert set(pp.index) == {"base", *points} == set(evals["point"]) == set(cv["point"])
    assert status == "complete"
    total = pp.loc["base", "n_params"]
    assert (pp["total_params"] == total).all() and pp.loc["base", "n_pruned"] == 0
    assert pp.loc["magnitude all=50%", "n_pruned"] == total // 2 and pp.loc["wanda all 2:4", "sparsity"] == 0.5
    down = pp.loc["magnitude down=50%"]
    assert down["n_params"] == total * 2 // 9 and down["target_rate"] == 0.5  # down: 8192 of 36864 per layer
    mixed = pp.loc["wanda attn=20%,mlp=60%"]
    assert mixed["modules"] == "attn,mlp" and 0.2 < mixed["target_rate"] < 0.6
    assert list(stats["layer"]) == [0, 1, 2, 3] and (stats["module"] == "down").all()
    assert (stats["n_pruned"] == 4096).all()
    # one sequential calibration per Wanda point, each storing a norm vector per pruned module
    assert len(calibs) == 3 and set(calibs["mode"]) == {"sequential"} and (calibs["n_tokens"] == 64).all()
    assert n_norm_rows == 3 * 4 * 7
    # metric against rate and against weights removed, straight from the view
    row = cv.set_index("point").loc["magnitude down=50%"]
    assert row["n_pruned"] == down["n_pruned"] and row["value"] > 0


def test_rerun_skips_everything_and_resume_fills_only_the_gap(tiny, store, tiny_plan):
    run_id = run_weights(tiny, store, tiny_plan, progress=False)
    with store.connect() as con:
        before = con.execute("SELECT count(*) FROM evals").fetchone()[0]
    assert run_weights(tiny, store, tiny_plan, progress=False) == run_id
    # simulate an interruption: one point's evals and stats lost, run not complete
    with store.connect() as con:
        con.execute("DELETE FROM evals WHERE point = 'wanda all=50%'")
        con.execute("DELETE FROM prune_points WHERE point = 'magnitude all=50%'")
        con.execute("UPDATE runs SET status = 'running'")
    assert run_weights(tiny, store, tiny_plan, progress=False) == run_id
    with store.connect(read_only=True) as con:
        after = con.execute("SELECT count(*) FROM evals").fetchone()[0]
        dup = con.execute("SELECT count(*) FROM (SELECT point, task, metric FROM evals "
                          "GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
        points = con.execute("SELECT count(*) FROM prune_points WHERE run_id = ?", [run_id]).fetchone()[0]
        calibs = con.execute("SELECT count(*) FROM calibrations").fetchone()[0]
    assert after == before and dup == 0 and points == 6 and calibs == 3


def test_a_new_run_reuses_stored_norms(tiny, store, tiny_plan):
    run_a = run_weights(tiny, store, tiny_plan, progress=False)
    other = dataclasses.replace(tiny_plan, eval=EvalPart(budget="ppl=256,facts=4"))  # a different run identity
    run_b = run_weights(tiny, store, other, progress=False)
    assert run_b != run_a
    with store.connect(read_only=True) as con:
        made_by = con.execute("SELECT DISTINCT run_id FROM calibrations").fetchall()
        ids = con.execute("SELECT DISTINCT calib_id FROM prune_points WHERE run_id = ? AND calib_id IS NOT NULL",
                          [run_b]).fetchall()
    assert made_by == [(run_a,)] and len(ids) == 3


def test_norms_round_trip_and_are_written_once(store):
    norms = {(0, "q"): np.arange(4, dtype=np.float32), (1, "down"): np.array([0.5, 2.0], np.float32)}
    info = {"mode": "oneshot", "spec": None, "dataset": "{}", "n_tokens": 10, "seconds": 0.1}
    with store.connect() as con:
        write_norms(con, calib_id="abc", run_id=1, model="m", revision="r", info=info, norms=norms)
        write_norms(con, calib_id="abc", run_id=2, model="m", revision="r", info=info,
                    norms={(0, "q"): np.zeros(4, np.float32)})
        got = read_norms(con, "abc")
        assert read_norms(con, "nope") is None
        n = con.execute("SELECT count(*) FROM input_norms").fetchone()[0]
        feature = con.execute("SELECT norms[3] FROM input_norms WHERE layer = 0 AND module = 'q'").fetchone()[0]
    assert n == 2 and feature == 2.0
    assert got.keys() == norms.keys() and all(np.array_equal(got[k], norms[k]) for k in norms)


def test_a_sweep_calibrates_once_and_shared_norms_change_no_number(tiny, store, monkeypatch):
    """Two one-shot Wanda points share one calibration: the sweep's norms source computes it once, and
    the second point's stored masks and perplexity equal that point applied alone (norms computed)."""
    from interp.evals import evaluate
    from interp.interventions.pruning import apply as prune_apply

    calls: list[int] = []
    real = prune_apply.layerwise_norms

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(prune_apply, "layerwise_norms", counted)
    plan = dataclasses.replace(TINY_PLAN, uniform=(), nm=(), single_rates=(), mixed=(), oneshot_rates=(0.3, 0.5))
    monkeypatch.setitem(study.PLANS, "smoke", plan)
    cfg = WeightsCfg(budget="smoke", methods=("wanda",))
    points = plan_points(tiny, cfg)
    assert [p.label() for p in points] == ["wanda-oneshot all=30%", "wanda-oneshot all=50%"]
    run_id = run_weights(tiny, store, cfg, progress=False)
    assert len(calls) == 1  # once per sweep, not once per point
    with store.connect(read_only=True) as con:
        stats = read_prune_stats(con, run_id, points[1].label())
        ppl = con.execute("SELECT value FROM evals WHERE run_id = ? AND point = ? AND metric = 'perplexity'",
                          [run_id, points[1].label()]).fetchone()[0]
    with points[1].apply(tiny) as alone:  # no source: its own calibration
        scores = evaluate(tiny, cfg.eval_cfg())
    assert len(calls) == 2 and alone.norms is not None
    key = ["layer", "module", "n_pruned"]
    assert sorted(map(tuple, stats[key].values.tolist())) == sorted(map(tuple, alone.frame()[key].values.tolist()))
    assert ppl == pytest.approx(next(s.value for s in scores if s.metric == "perplexity"), rel=1e-5)


def test_the_yielded_report_stores_each_applied_spec_once_and_the_norms_it_computed(tiny, store):
    spec = PruneSpec("wanda", 0.5, calibration="oneshot", calib=CalibData(windows=2, length=32))
    sess = StoreNorms(store)
    for _ in range(2):
        with spec.apply(tiny, norms=sess) as report, store.connect() as con:
            report.save(con, 7, spec.label())
    again = StoreNorms(store)
    with spec.apply(tiny, norms=again) as report:
        assert report.norms is None and again.loaded_from_store == [report.calib_id]  # found in the store
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM prune_points").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM prune_stats").fetchone()[0] == 4 * 7
        # one-shot calibration covers every projection of every layer
        assert con.execute("SELECT count(*) FROM input_norms").fetchone()[0] == 4 * 7
    assert len(sess.computed) == 1


@pytest.mark.parametrize("kwargs,msg", [({"budget": "huge"}, r"budget \(--budget\) takes one of"),
                                        ({"methods": "magnitude,sparsegpt"}, r"methods \(--methods\) takes"),
                                        ({"calibration": "twice"}, r"\[weights.calib\] order \(--calibration\) takes"),
                                        ({"tasks": ("ppl", "vibes")}, r"\[weights.eval\] tasks \(--tasks\): unknown task 'vibes'")])
def test_bad_study_config_fails_before_any_model(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        build(WeightsCfg, kwargs)


def test_plans_cover_the_issue(tiny, tiny_gpt):
    full = [s.label() for s in plan_points(tiny, WeightsCfg(budget="full"))]
    for label in ("magnitude all=10%", "wanda all=90%", "magnitude all=50% global", "wanda all 2:4",
                  "magnitude all 4:8", "wanda attn=30%", "magnitude mlp=70%", "wanda q=60%", "magnitude gate=90%",
                  "wanda attn=20%,mlp=60%", "wanda-oneshot all=50%"):
        assert label in full
    assert len(full) == len(set(full))
    gpt = [s.label() for s in plan_points(tiny_gpt, WeightsCfg(budget="quick"))]
    assert "magnitude q=50%" in gpt and "magnitude v=50%" in gpt and not any("gate" in g for g in gpt)
    quick = plan_points(tiny, WeightsCfg(budget="quick", methods="magnitude"))
    assert {s.method for s in quick} == {"magnitude"}
