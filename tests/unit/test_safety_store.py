"""store/safety.py: replace-on-rewrite, direction round trip, splits, and the outcome table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from store import StoreError
from store import safety as db
from store.evals import write_evals


def _dirs(vec) -> pd.DataFrame:
    return pd.DataFrame([{"concept": "harmful", "hook": "resid_pre", "layer": 3, "position": "last",
                          "kind": "diff_means", "norm": 2.5, "n_pos": 10, "n_neg": 10, "vec": vec}])


def test_directions_round_trip_exactly_and_rewrites_replace(store):
    v = np.random.default_rng(0).normal(size=576)
    v /= np.linalg.norm(v)
    with store.connect() as con:
        db.replace_rows(con, 7, {"safety_directions": _dirs(v)})
        db.replace_rows(con, 7, {"safety_directions": _dirs(v)})  # a re-run: no duplicate
        back, norm = db.load_direction(con, 7, "harmful", "resid_pre", 3, "last")
        assert con.execute("SELECT count(*) FROM safety_directions").fetchone()[0] == 1
        assert db.has_rows(con, "safety_directions", 7) and not db.has_rows(con, "safety_directions", 8)
        with pytest.raises(StoreError, match="no diff_means direction for harmful at resid_pre layer 4"):
            db.load_direction(con, 7, "harmful", "resid_pre", 4, "last")
        with pytest.raises(StoreError, match="unknown safety table"):
            db.has_rows(con, "nope", 7)
    assert back.dtype == np.float64 and np.array_equal(back, v) and norm == 2.5


def test_failed_write_leaves_nothing(store):
    with store.connect() as con:
        db.replace_rows(con, 1, {"safety_layers": pd.DataFrame(
            [{"concept": "harmful", "hook": "resid_pre", "layer": 0, "position": "last", "metric": "m", "value": 1.0}])})
        bad = pd.DataFrame([{"concept": "harmful"}])
        with pytest.raises(StoreError, match="lack columns"):
            db.replace_rows(con, 1, {"safety_layers": bad})
        assert con.execute("SELECT count(*) FROM safety_layers WHERE run_id = 1").fetchone()[0] == 1


def test_set_splits_updates_the_capture_run_only(store):
    with store.connect() as con:
        con.execute("INSERT INTO run_prompts (run_id, prompt_id, n_tokens, truncated) VALUES "
                    "(1, 'a', 3, 0), (1, 'b', 3, 0), (2, 'a', 3, 0)")
        db.set_splits(con, 1, pd.DataFrame({"prompt_id": ["a", "b"], "split": ["train", "heldout"]}))
        rows = con.execute("SELECT run_id, prompt_id, split FROM run_prompts ORDER BY ALL").fetchall()
    assert rows == [(1, "a", "train"), (1, "b", "heldout"), (2, "a", None)]


def _evals(run_id: int, point: str, kind: str, values: dict[tuple[str, str], float]) -> list[dict]:
    return [{"run_id": run_id, "study": "safety", "point": point, "intervention": json.dumps({"kind": kind}),
             "task": t, "metric": m, "value": v, "stderr": 0.01, "n": 10, "chance": None, "dataset": "{}",
             "seconds": 1.0} for (t, m), v in values.items()]


def test_outcome_is_relative_to_the_base_of_the_same_run(store):
    base = {("toxicity", "toxicity"): 0.20, ("toxicity", "toxic_rate"): 0.1, ("refusal", "refusal_rate"): 0.05,
            ("ppl", "perplexity"): 20.0, ("facts", "accuracy"): 0.8, ("arith", "accuracy"): 0.5, ("kl", "kl"): 0.0}
    edit = {**base, ("toxicity", "toxicity"): 0.05, ("refusal", "refusal_rate"): 0.65, ("ppl", "perplexity"): 25.0,
            ("facts", "accuracy"): 0.7, ("kl", "kl"): 0.3}
    with store.connect() as con:
        write_evals(con, _evals(3, "base", "base", base))
        write_evals(con, _evals(3, "actadd[h +1]", "activation_addition", edit))
        write_evals(con, _evals(4, "base", "base", {k: v * 2 for k, v in base.items()}))  # another run
        out = db.outcome(con, 3).set_index("point")
    assert list(out.index) == ["base", "actadd[h +1]"]
    row = out.loc["actadd[h +1]"]
    assert row["kind"] == "activation_addition"
    assert row["d_toxicity"] == pytest.approx(-0.15) and row["d_refusal"] == pytest.approx(0.60)
    assert row["compliance"] == pytest.approx(0.35) and row["ppl_change"] == pytest.approx(0.25)
    assert row["d_facts"] == pytest.approx(-0.1) and row["d_arith"] == 0 and row["kl"] == pytest.approx(0.3)
    assert out.loc["base", ["d_toxicity", "d_refusal", "ppl_change"]].tolist() == [0, 0, 0]
