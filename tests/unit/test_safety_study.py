"""The safety study end to end on the tiny Llama: tables, selection, sweep, resume, config errors."""

from __future__ import annotations

import numpy as np
import pytest

from interp.interventions import from_json
from interp.studies.config_file import build
from interp.studies.parts import EvalPart, ProbePart
from interp.studies.safety import SafetyCfg, heldout_ids, parse_layers, run_safety, sweep_points

pytestmark = pytest.mark.slow  # one whole study run on the tiny model: 12 evaluated points (random baselines included)

TINY = dict(budget="smoke", per_set=12, probe_layers="0,1,2", candidate_layers="1,2", folds=2, alphas=(-1.0, 1.0),
            sel_gen_tokens=4, min_auc=0.0, eval_budget="smoke", toxic_ablation=True)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One study run on the tiny Llama, shared by the tests of this module (they only read it,
    except the resume test, which runs last and leaves it as it found it)."""
    from interp.model.loading import wrap
    from store import Store
    from tests.conftest import byte_tokenizer, tiny_llama

    tiny = wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")
    store = Store(tmp_path_factory.mktemp("safety") / "s.duckdb")
    cfg = build(SafetyCfg, TINY)  # the flag names, as invoke safety passes them
    return tiny, store, cfg, run_safety(tiny, store, cfg, progress=False)


def test_study_writes_every_table_and_evaluates_every_edit(done):
    tiny, store, cfg, run_id = done
    from store.safety import outcome, read_table

    with store.connect(read_only=True) as con:
        prompts = read_table(con, "safety_prompts", run_id)
        splits = con.execute("SELECT split, count(*) FROM run_prompts WHERE split IS NOT NULL GROUP BY split").fetchall()
        probes = read_table(con, "safety_probes", run_id)
        best = read_table(con, "safety_best_layers", run_id)
        dirs = read_table(con, "safety_directions", run_id)
        cands = read_table(con, "safety_candidates", run_id)
        sel = read_table(con, "safety_selection", run_id)
        out = outcome(con, run_id)
        kinds = con.execute("SELECT DISTINCT intervention->>'kind' FROM evals WHERE run_id = ?", [run_id]).fetchall()
        run = con.execute("SELECT kind, status FROM runs WHERE run_id = ?", [run_id]).fetchone()
    assert run == ("safety", "complete")
    assert set(prompts["cls"]) == {"harmful", "toxic", "neutral", "biased", "counterpart"}
    assert set(prompts["split"]) == {"train", "test", "heldout"} and dict(splits).keys() == {"train", "test", "heldout"}
    held = prompts[prompts.split == "heldout"]["prompt_id"]
    assert set(held) <= heldout_ids(cfg)  # evaluation prompts are never fitted
    assert set(probes["problem"]) == {"harmful_vs_neutral", "toxic_vs_neutral", "biased_vs_counterpart", "multiclass"}
    assert {"cv", "cv_logistic", "length", "held_out"} <= set(probes["setting"]) and set(probes["layer"]) == {0, 1, 2}
    cv = probes[probes.setting == "cv"]
    assert (cv["permutations"] == cfg.probe.permutations).all() and cv["p"].between(1 / (1 + cfg.probe.permutations),
                                                                             1).all()
    assert (cv["null_mean"] <= cv["null_p95"]).all()
    assert len(best) == 4 * 2 and set(best["layer"]) <= {0, 1, 2}  # problems x positions
    assert (best["margin_accuracy"] == best["cv_accuracy"] - best["shuffled_accuracy"]).all()
    assert set(dirs["kind"]) == {"diff_means", "probe"} and set(dirs["concept"]) == {"harmful", "toxic"}
    assert all(abs(np.linalg.norm(v) - 1) < 1e-9 for v in dirs["vec"]) and len(dirs["vec"][0]) == tiny.d_model
    assert sorted(cands["layer"]) == [1, 2] and set(cands["position"]) == {"last"}
    assert set(sel["criterion"]) == {"separability", "ablation", "kl", "chosen"}
    points = set(out["point"])
    baselines = {p for p in points if "baseline:" in p}
    assert "base" in points and len(points - baselines) == 1 + 2 + 2 + 1  # ablate, orth, 2 alphas, toxic ablation
    # 2 random unit + 2 variance-matched ablations, 2 random additions at |alpha| = 1 (the band for -1 and +1)
    assert len(baselines) == 2 + 2 + 2
    assert {k[0] for k in kinds} == {"base", "direction_ablation", "direction_orthogonalized", "activation_addition"}
    row = out[out.point.str.startswith("ablate[harmful")].iloc[0]
    assert row["kl"] >= 0 and row["d_refusal"] == pytest.approx(row["refusal"] - out.iloc[0]["refusal"])
    assert out.iloc[0]["point"] == "base" and out.iloc[0]["d_toxicity"] == 0


def test_points_are_labelled_paired_and_banded(done):
    tiny, store, cfg, run_id = done
    from store.evals import vs_base
    from store.safety import read_table

    with store.connect(read_only=True) as con:
        pts = read_table(con, "safety_points", run_id)
        bands = read_table(con, "safety_bands", run_id)
        cmp = vs_base(con, run_id)
        items = con.execute("SELECT point, count(*) FROM eval_items WHERE run_id = ? GROUP BY point",
                            [run_id]).fetchall()
    assert set(pts.loc[pts.role == "baseline", "point"]) == {p for p in cmp.point if "baseline:" in p}
    assert set(bands["band"]) == {"ablate:random-unit", "ablate:random-matched", "actadd:random@1"}
    assert (bands["k"] == 2).all() and (bands["lo"] <= bands["hi"]).all()
    # every point but the base is compared with it item by item, on every metric that keeps items
    edited = cmp[cmp.point != "base"]
    assert edited[edited.metric.isin(["perplexity", "nll", "accuracy", "toxicity", "refusal_rate", "kl"])]["lo"] \
        .notna().all()
    assert (edited["lo"] <= edited["delta"] + 1e-12).all() and (edited["delta"] <= edited["hi"] + 1e-12).all()
    assert len(set(dict(items).values())) == 1 and len(items) == cmp.point.nunique()  # same items at every point


def test_sweep_points_rebuild_from_the_store(done):
    tiny, store, cfg, run_id = done
    pts = sweep_points(store, run_id, cfg)
    from store.safety import chosen, load_direction

    with store.connect(read_only=True) as con:
        pick = chosen(con, run_id)
        vec, norm = load_direction(con, run_id, "harmful", pick["hook"], int(pick["layer"]), pick["position"])
        stored = {r[0] for r in con.execute("SELECT DISTINCT intervention::VARCHAR FROM evals WHERE run_id = ?",
                                            [run_id]).fetchall()}
    assert np.allclose(pts[0].direction, vec) and pts[2].scale == pytest.approx(norm)
    assert [p.alpha for p in pts if hasattr(p, "alpha") and not p.name.startswith("baseline:")] == [-1.0, 1.0]
    assert {from_json(s) for s in stored} >= set(pts)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match=r"budget \(--budget\) takes one of smoke, quick, full, not 'huge'"):
        SafetyCfg(budget="huge")
    with pytest.raises(ValueError, match=r"\[safety.probe\] hooks \(--probe-hooks\) takes resid_pre or resid_post .*, "
                                         r"not 'mlp_out'"):
        SafetyCfg(probe=ProbePart(hooks=("mlp_out",)))
    with pytest.raises(ValueError, match=r"per_set \(--per-set\) takes a whole number of at least 8"):
        SafetyCfg(per_set=3)
    with pytest.raises(ValueError, match=r"\[safety.eval\] budget \(--eval-budget\): unknown budget 'enormous'"):
        SafetyCfg(eval=EvalPart(budget="enormous"))
    assert parse_layers("stride:4", 30, cap=0.8) == [4, 8, 12, 16, 20]
    assert parse_layers("all", 4) == [0, 1, 2, 3] and parse_layers("2,1", 4) == [1, 2]
    with pytest.raises(ValueError, match=r"probe_layers \(--probe-layers\): layer 40 out of range"):
        parse_layers("1,40", 30)


def test_rerun_resumes_without_duplicates(done):
    tiny, store, cfg, run_id = done
    with store.connect(read_only=True) as con:
        before = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("safety_probes", "safety_directions", "safety_candidates", "evals", "runs", "eval_items",
                            "eval_deltas", "safety_points", "safety_bands")}
        # Simulate an interruption after selection: drop the sweep's last point and the run's status.
    with store.connect() as con:
        last = con.execute("SELECT point FROM evals WHERE run_id = ? ORDER BY created DESC LIMIT 1", [run_id]).fetchone()[0]
        con.execute("DELETE FROM evals WHERE run_id = ? AND point = ?", [run_id, last])
        con.execute("UPDATE runs SET status = 'running' WHERE run_id = ?", [run_id])
    assert run_safety(tiny, store, cfg, progress=False) == run_id
    with store.connect(read_only=True) as con:
        after = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in before}
    assert after == before
