"""A stored activation-addition point reused as a safety run's steering vector (--steer-from RUN:POINT): rebuilt
exactly from the store, named by content, and used by the addition edits and their random baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.evals import EvalCfg
from interp.interventions.directions import ActivationAddition, DirectionalAblation
from interp.studies.safety_config import SafetyCfg
from interp.studies.safety_steer import stored_steering, vector_digest

R = tuple(torch.randn(64, generator=torch.Generator().manual_seed(3)).tolist())
STEER = ActivationAddition(R, layer=1, alpha=2.0, scale=3.5, hook="resid_post", name="mine", more_layers=(2,))


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    from interp.model.loading import wrap
    from interp.studies.sweep import run_sweep
    from store import Store
    from tests.conftest import byte_tokenizer, tiny_llama

    tiny = wrap(tiny_llama(), byte_tokenizer(chat=False), name="tiny-llama", revision="seed0")
    store = Store(tmp_path_factory.mktemp("steer") / "s.duckdb")
    run = run_sweep(tiny, store, study="safety", config={"test": "steer"}, points=[STEER, DirectionalAblation(R)],
                    eval_cfg=EvalCfg(tasks=("ppl",), budget="ppl=64", window=32), progress=False)
    return store, run


def test_the_stored_vector_comes_back_exactly_with_its_source(stored):
    store, run = stored
    spec, source = stored_steering(store, f"{run}:{STEER.label()}")
    assert (spec.direction, spec.scale, spec.layers, spec.hook, spec.positions) == (
        STEER.direction, STEER.scale, STEER.layers, STEER.hook, STEER.positions)
    assert source == {"run": run, "point": STEER.label(), "sha256": vector_digest(STEER)}
    # the digest names the vector, not the coefficient it was evaluated at
    assert vector_digest(ActivationAddition(R, layer=1, alpha=-1.0, scale=3.5, hook="resid_post", more_layers=(2,))) \
        == source["sha256"] != vector_digest(ActivationAddition(R, layer=1, alpha=2.0, scale=3.0, hook="resid_post"))


def test_the_addition_edits_and_their_baselines_use_the_stored_vector():
    from interp.studies.safety_baselines import plan

    rng = np.random.default_rng(0)
    vec, site = rng.standard_normal(64), rng.standard_normal((40, 64))
    steer = ActivationAddition(R, layer=1, alpha=1.0, scale=3.5, hook="resid_post", name="run7:mine", more_layers=(2,))
    planned = plan(vec, 2.0, 3, "resid_pre", site, name="harmful@resid_pre3/last", alphas=(-1.0, 2.0), baselines=2,
                   seed=0, steer=steer)
    adds = [(s, row) for s, row in planned if row["family"] == "actadd"]
    edits = [s for s, row in adds if row["role"] == "edit"]
    assert [s.alpha for s in edits] == [-1.0, 2.0]
    assert all(s.direction == R and s.layers == (1, 2) and s.scale == 3.5 and s.hook == "resid_post" for s in edits)
    assert all(s.layers == (1, 2) and s.scale == 3.5 for s, row in adds if row["role"] == "baseline")
    ablate = next(s for s, row in planned if row["family"] == "ablate" and row["role"] == "edit")
    assert np.allclose(ablate.direction, vec)  # the other edits keep the chosen direction
    plain = plan(vec, 2.0, 3, "resid_pre", site, name="harmful@resid_pre3/last", alphas=(1.0,), baselines=0, seed=0)
    assert next(s for s, row in plain if row["family"] == "actadd").layers == (3,)


def test_bad_references_are_refused_in_one_line(stored):
    store, run = stored
    with pytest.raises(ValueError, match="is a direction_ablation point, not an activation addition"):
        stored_steering(store, f"{run}:{DirectionalAblation(R).label()}")
    with pytest.raises(ValueError, match=r"steer_from \(--steer-from\) .* has no evaluated point 'actadd\[nope\]'"):
        stored_steering(store, f"{run}:actadd[nope]")
    for bad in ("actadd[x]", "0:actadd[x]", "3:"):
        with pytest.raises(ValueError, match=r"steer_from \(--steer-from\) takes RUN:POINT") as e:
            SafetyCfg(budget="smoke", steer_from=bad)
        assert "\n" not in str(e.value)
    assert "steer_from" not in SafetyCfg(budget="smoke").describe()  # runs without it keep their identity
