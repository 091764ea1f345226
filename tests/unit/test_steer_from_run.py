"""--steer-from RUN:POINT through two whole safety runs on the tiny Llama: the second run's addition edits carry
the first run's stored vector (by content digest), and a steered point's perplexity is what adding that vector by
hand at the second run's alpha gives; a source that is not an addition point, or a run that does not exist, is
refused in one line before any work.

The configs are built from a [safety] table with the flags' names (``interp.studies.config_file.load``), which
stays valid whether the settings are flat fields or nested parts; the second run changes only study-level fields.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from interp.studies.safety_config import SafetyCfg

SOURCE = """
[safety]
budget = "smoke"
per_set = 12
probe_layers = "1,2"
candidate_layers = "1"
folds = 2
permutations = 10
alphas = [1.0]
sel_gen_tokens = 4
min_auc = 0.0
toxic_ablation = false
baselines = 0
eval_budget = "ppl=256,facts=2,arith=2,toxicity=2,refusal=2,kl=2"
"""
PPL = "ppl=256"
"""The perplexity budget of SOURCE's evaluation (what the by-hand evaluation repeats)."""


def _rows(con, run_id: int, sql: str = "") -> list[tuple]:
    return con.execute("SELECT point, intervention::VARCHAR, value FROM evals WHERE run_id = ? AND task = 'ppl' "
                       f"AND metric = 'perplexity' {sql} ORDER BY point", [run_id]).fetchall()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from interp.model.loading import wrap
    from interp.studies.config_file import load
    from interp.studies.safety import run_safety
    from store import Store
    from tests.conftest import byte_tokenizer, tiny_llama

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # several times faster than two on a shared 2-core machine
    root = tmp_path_factory.mktemp("steerrun")
    (root / "source.toml").write_text(SOURCE)
    _, cfg = load("safety", SafetyCfg, str(root / "source.toml"), {}, {})
    tiny = wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")
    store = Store(root / "s.duckdb")
    first = run_safety(tiny, store, cfg, progress=False)
    with store.connect(read_only=True) as con:
        (point, spec, _), = _rows(con, first, "AND point LIKE 'actadd[%'")
    # the second run's own choice sits at layer 2 and its alpha is -2: only the stored vector gives layer 1
    steered = dataclasses.replace(cfg, steer_from=f"{first}:{point}", candidate_layers="2", alphas=(-2.0,))
    second = run_safety(tiny, store, steered, progress=False)
    yield tiny, store, first, point, json.loads(spec), second
    torch.set_num_threads(n)


def _by_hand_ppl(tiny, direction: list[float], layer: int, scale: float, alpha: float | None) -> float:
    """Perplexity with x <- x + alpha * scale * r/|r| added to block ``layer``'s input by a plain forward pre-hook
    (None: no hook), under the same evaluation settings as the runs'."""
    from interp.evals import EvalCfg, evaluate

    r = torch.tensor(direction, dtype=torch.float64)
    r = (r / r.norm()).to(torch.float32) * scale

    def add(_module, args, kwargs):
        if args:
            return (args[0] + alpha * r, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + alpha * r}

    block = tiny.model.model.layers[layer]
    handle = block.register_forward_pre_hook(add, with_kwargs=True) if alpha is not None else None
    try:
        scores = evaluate(tiny, EvalCfg(tasks=("ppl",), budget=PPL, seed=0))
    finally:
        if handle is not None:
            handle.remove()
    return next(s.value for s in scores if s.metric == "perplexity")


@pytest.mark.slow  # two safety studies on the tiny model (about 10 s)
def test_a_second_run_steers_with_the_stored_vector(runs):
    from interp.interventions.directions import ActivationAddition
    from interp.studies.safety_steer import vector_digest

    tiny, store, first, point, source, second = runs
    assert second != first
    with store.connect(read_only=True) as con:
        config = json.loads(con.execute("SELECT config FROM runs WHERE run_id = ?", [second]).fetchone()[0])
        adds = [(p, json.loads(s), v) for p, s, v in _rows(con, second, "AND point LIKE 'actadd[%'")]
        base = _rows(con, second, "AND point = 'base'")[0][2]
        own = con.execute("SELECT layer, hook FROM safety_selection WHERE run_id = ?", [second]).fetchone()
    assert source["layer"] == 1 and own[0] == 2  # the run's own choice is elsewhere
    assert config["steer"] == {"run": first, "point": point,
                               "sha256": vector_digest(ActivationAddition.from_dict(
                                   {k: v for k, v in source.items() if k != "kind"}))}
    assert config["steer_from"] == f"{first}:{point}"
    (label, spec, ppl), = adds  # baselines=0: one addition edit, at the second run's alpha
    assert label == f"actadd[run{first}:{source['name']} -2]"
    assert (spec["direction"], spec["scale"], spec["layer"], spec["hook"], spec["alpha"]) \
        == (source["direction"], source["scale"], 1, "resid_pre", -2.0)
    assert "more_layers" not in spec and "positions" not in spec  # LATER fields at their defaults: one block, all
    # the evaluation: the base as evaluated here (same settings), and the stored vector added by hand at -2
    assert base == pytest.approx(_by_hand_ppl(tiny, source["direction"], 1, source["scale"], None), rel=1e-6)
    expected = _by_hand_ppl(tiny, source["direction"], 1, source["scale"], -2.0)
    assert ppl == pytest.approx(expected, rel=1e-6)
    assert abs(expected - base) > 1e-3 * base  # the edit moves the number, so a wrong vector would show


@pytest.mark.slow  # reads the runs above
def test_a_source_that_is_not_an_addition_point_or_run_is_refused_in_one_line(runs):
    from interp.studies.safety import run_safety

    tiny, store, first, point, _, second = runs
    with store.connect(read_only=True) as con:
        n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    cfg = SafetyCfg(budget="smoke")
    for ref, match in ((f"{first}:base", rf"point 'base' of run {first} is a base point, not an activation addition"),
                       (f"{first}:nope", rf"run {first} has no evaluated point 'nope': its points are ablate.*, actadd.*, base"),
                       ("999:x", r"steer_from \(--steer-from\) 999:x: no run 999 in this store: `invoke runs` lists")):
        with pytest.raises(ValueError, match=match) as e:
            run_safety(tiny, store, dataclasses.replace(cfg, steer_from=ref), progress=False)
        assert "\n" not in str(e.value)
    with store.connect(read_only=True) as con:  # refused before any work: no run started
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == n_runs
