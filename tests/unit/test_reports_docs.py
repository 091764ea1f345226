"""Every SQL query in docs/REPORTS.md runs through `invoke sql`'s code path on a store holding every
study (the report tests' fixed numbers plus a real capture from a tiny model) and returns the
answer the numbers imply."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from store.sql import run_sql

DOC = Path(__file__).resolve().parents[2] / "docs" / "REPORTS.md"


def doc_queries() -> dict[str, str]:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.DOTALL)
    out = {}
    for b in blocks:
        first, _, _rest = b.partition("\n")
        assert first.startswith("-- "), f"each documented query starts with a '-- name' line: {first}"
        out[first[3:].strip()] = b
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from tests.unit.test_reports_readme import (
        make_store,  # one run of every study, plus a small cache run
    )

    return make_store(tmp_path_factory.mktemp("docs") / "docs.duckdb", older_run=False)


def test_the_doc_has_the_queries_this_test_checks():
    assert set(doc_queries()) == set(CHECKS)
    for sql in doc_queries().values():
        assert '"' not in sql  # pasteable inside invoke sql "..."


def check_nearest(df, st):
    assert list(df["state"]) == [0, 1, 2, 3, 4]
    assert df.set_index("state").loc[0, "cosine"] == 0.5 and df.set_index("state").loc[1, "cosine"] == 0.99
    assert df.set_index("state").loc[1, "nearest_state"] in (2, 3)


def check_cheapest(df, st):
    row = df.set_index("n").loc[2]
    assert (row.strategy, list(row.layers), row.perplexity, row.pct_worse) == ("angular", [1, 2], 11.0, 10.0)


def check_top_heads(df, st):
    assert len(df) == 10
    top = df.iloc[0]
    assert (top.layer, top["head"], top.zero_ablation_delta_loss, top.gradient_importance) == (2, 1, 1.0, 1.0)
    assert df["zero_ablation_delta_loss"].is_monotonic_decreasing


def check_probes(df, st):
    assert list(df["layer"]) == [0, 1, 2, 3] and set(df["hook"]) == {"resid_post"}
    best = df.loc[df["accuracy"].idxmax()]
    assert (best.layer, best.accuracy, best.roc_auc, best.permutation_null, best.null_95th_percentile, best.p) == (
        2, 0.95, 0.97, 0.5, 0.6, 0.002)


def check_best_probe(df, st):
    h = df[(df["problem"] == "harmful_vs_neutral") & (df["position"] == "last")].iloc[0]
    assert (h.layer, h.roc_auc, h.margin_over_shuffled, h.cross_source) == (2, 0.97, 0.47, 0.77)
    assert (h.held_out, h.held_out_lo, h.held_out_hi) == (0.92, 0.87, 0.97)
    assert len(df) == 4  # 2 problems x 2 positions


def check_toxicity(df, st):
    assert len(df) == 4 and df.iloc[0]["edit"].startswith("ablate[") and df.iloc[0]["change"] == -0.3
    assert (df.iloc[0]["change_lo"], df.iloc[0]["change_hi"], bool(df.iloc[0]["noise"])) == (-0.45, -0.15, False)
    assert (df["before"] == 0.4).all() and df["change_lo"].iloc[1:].isna().all()  # only the ablation kept items


def check_random_band(df, st):
    assert set(df["edit"]) == {"ablate[harmful@resid_post2/last]", "orth[harmful@resid_post2/last]"}
    row = df.set_index(["edit", "metric"]).loc[("ablate[harmful@resid_post2/last]", "toxicity")]
    assert (row.random_lo, row.random_hi, bool(row.beyond_random)) == (0.36, 0.42, True)
    assert not df.set_index(["edit", "metric"]).loc[("ablate[harmful@resid_post2/last]", "refusal_rate"),
                                                    "beyond_random"]


def check_side_by_side(df, st):
    assert df.iloc[0]["point"] == "base" and tuple(df.iloc[0][["toxicity", "refusal_rate", "perplexity"]]) == (
        0.4, 0.1, 10.0)
    assert len(df) == 5


def check_wanda(df, st):
    at_half = df[df["target_rate"] == 0.5]
    assert list(at_half["method"]) == ["wanda", "magnitude"] and list(at_half["perplexity"]) == [15.0, 30.0]


def check_provenance(df, st):
    assert set(df["study"]) == {"layers", "weights", "heads", "safety"}
    assert set(df["model"]) == {"tiny"} and set(df["code_version"]) == {"test"}


def check_norms(df, st):
    """Against the vectors read back through the store's reader and normed in NumPy."""
    from store.activations import read_vectors

    with st.connect(read_only=True) as con:
        run = con.execute("SELECT max(run_id) FROM runs WHERE kind = 'cache'").fetchone()[0]
        for row in df.itertuples():
            _, X = read_vectors(con, st, run, row.hook, [row.layer], "last")
            assert len(X) == row.vectors == 8
            assert row.mean_norm == pytest.approx(np.linalg.norm(X, axis=1).mean(), abs=1e-3)
    assert list(df["layer"]) == [0, 1, 2, 3]


CHECKS = {
    "nearest layers": check_nearest, "cheapest block to drop": check_cheapest, "top heads": check_top_heads,
    "probe accuracy by layer": check_probes, "best probe layer": check_best_probe,
    "toxicity before and after an edit": check_toxicity, "edits beside random edits": check_random_band,
    "edits side by side": check_side_by_side, "wanda vs magnitude": check_wanda, "provenance": check_provenance,
    "residual norm by layer": check_norms,
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_documented_query(store, name):
    df = run_sql(store, doc_queries()[name])
    assert not df.empty, name
    CHECKS[name](df, store)
