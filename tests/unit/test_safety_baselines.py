"""Random baselines of the safety edits on a tiny Llama: a planted direction that the model really uses
moves KL outside the band of random ablations, a further random direction stays inside it, and the
variance-matched directions remove what the real one removes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from analyses import stats
from analyses.directions import random_unit, second_moment, variance_matched
from interp.evals import EvalCfg, evaluate, make_reference
from interp.interventions.directions import DirectionalAblation
from interp.studies import safety_baselines


@pytest.fixture(scope="module")
def planted():
    """The tiny Llama with a large shared component along a planted direction added to every token
    embedding: the blocks read it (through their norms), so removing it changes the outputs."""
    from interp.model.loading import wrap
    from tests.conftest import byte_tokenizer, tiny_llama

    model = tiny_llama(seed=1)
    r = torch.zeros(model.config.hidden_size)
    r[:8] = 1.0
    r /= r.norm()
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb += 3.0 * emb.norm(dim=1).mean() * r
    return wrap(model, byte_tokenizer(), name="tiny-planted", revision="seed1"), r.double().numpy()


def _kl(loaded, spec, cfg, ref) -> float:
    with spec.apply(loaded):
        [score] = evaluate(loaded, cfg, reference=ref)
    return score.value


def test_planted_direction_leaves_the_random_band_and_a_random_one_stays_in(planted):
    loaded, r = planted
    cfg = EvalCfg(tasks=("kl",), budget={"kl": 8})
    ref = make_reference(loaded, cfg)
    site = np.random.default_rng(0).normal(size=(64, loaded.d_model))
    plan = safety_baselines.plan(r, 1.0, 1, "resid_pre", site, name="harmful@resid_pre1/last", alphas=(1.0,),
                                 baselines=5, seed=0)
    units = [spec for spec, row in plan if row["band"] == "ablate:random-unit"]
    assert len(units) == 5 and all(row["point"].startswith("ablate[baseline:") for _, row in plan
                                   if row["role"] == "baseline" and row["family"] == "ablate")
    band = stats.random_band([_kl(loaded, u, cfg, ref) for u in units])
    planted_kl = _kl(loaded, DirectionalAblation(r, name="planted"), cfg, ref)
    assert planted_kl > band["hi"] and planted_kl > 10 * band["max"]
    extra = DirectionalAblation(random_unit(loaded.d_model, 6, seed=99)[5], name="baseline:random-unit#extra")
    assert band["lo"] <= _kl(loaded, extra, cfg, ref) <= band["hi"]


def test_variance_matched_directions_remove_what_the_real_one_removes():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 32)) * np.linspace(0.2, 4.0, 32) + 0.5
    r = np.zeros(32)
    r[[30, 2]] = [1.0, 0.4]
    U, removed, target = variance_matched(X, r, 5, seed=0)
    M = second_moment(X)
    ru = r / np.linalg.norm(r)
    assert target == pytest.approx(ru @ M @ ru)
    np.testing.assert_allclose(removed, target, rtol=1e-6)
    np.testing.assert_allclose([u @ M @ u for u in U], target, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(U, axis=1), 1.0)
    gram = np.abs(U @ U.T) - np.eye(5)
    assert np.abs(U @ ru).max() < 0.95 and gram.max() < 0.95  # random: neither the real direction nor each other
    plain = [u @ M @ u for u in random_unit(32, 50, seed=2)]
    assert np.mean(plain) == pytest.approx(np.trace(M) / 32, rel=0.2) and np.mean(plain) < target


def test_plan_labels_every_point_and_bands_group_the_baselines():
    d = 16
    site = np.random.default_rng(0).normal(size=(40, d))
    vec = np.eye(d)[0]
    plan = safety_baselines.plan(vec, 2.5, 3, "resid_pre", site, name="harmful@resid_pre3/last",
                                 alphas=(-1.0, 1.0, 2.0), baselines=3, seed=0, toxic=np.eye(d)[1])
    rows = safety_baselines.points_frame(plan)
    assert rows["point"].is_unique and set(rows["role"]) == {"edit", "baseline"}
    assert (rows[rows.role == "baseline"]["point"].str.contains("baseline:")).all()
    assert not rows[rows.role == "edit"]["point"].str.contains("baseline").any()
    assert sorted(rows.loc[rows.role == "baseline", "band"].unique()) == [
        "ablate:random-matched", "ablate:random-unit", "actadd:random@1", "actadd:random@2"]
    adds = [s for s, row in plan if row["band"] == "actadd:random@2"]
    assert len(adds) == 3 and all(s.scale == 2.5 and s.alpha == 2.0 and s.layer == 3 for s in adds)
    matched = rows[rows.band == "ablate:random-matched"]
    np.testing.assert_allclose(matched["removed_ratio"], 1.0, rtol=1e-6)
    values = pd.DataFrame([{"band": row["band"], "family": row["family"], "alpha": row["alpha"], "task": "kl",
                            "metric": "kl", "point": row["point"], "value": i * 0.1}
                           for i, (_, row) in enumerate(plan) if row["role"] == "baseline"])
    bands = safety_baselines.bands(values).set_index("band")
    assert (bands["k"] == 3).all() and bands.loc["actadd:random@2", "alpha"] == 2.0
    assert bands.loc["ablate:random-unit", "lo"] < bands.loc["ablate:random-unit", "min"]
