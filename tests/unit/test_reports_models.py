"""The model-comparison page: built when a store holds study runs of two models, absent with one.

Two small models' results are written through the study writers of the page tests (fixed
numbers; the second model has 8 layers and its own values), so every overlaid point can be
checked against what was stored.
"""

from __future__ import annotations

import math

import pytest

import tests.unit.test_reports_pages as writers
from reports.build import build_pages, build_report
from store import Store
from store.queries import fetch
from store.queries import models as q

OTHER = {**writers.MODEL, "model": "tiny-b", "n_layers": 8, "d_model": 16}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    st = Store(tmp_path_factory.mktemp("models") / "two.duckdb")
    with st.connect() as con:
        for write in writers.WRITERS.values():
            write(con)
        mp = pytest.MonkeyPatch()
        mp.setattr(writers, "MODEL", OTHER)
        try:
            runs_b = {s: w(con, tag="b") for s, w in writers.WRITERS.items()}
        finally:
            mp.undo()
        # the second model is twice as bad everywhere and its probes peak one layer later
        ids = ", ".join(str(r) for r in runs_b.values())
        con.execute(f"UPDATE evals SET value = 2 * value WHERE run_id IN ({ids})")
        con.execute(f"UPDATE safety_probes SET layer = layer + 1 WHERE run_id = {runs_b['safety']}")
    return st


def _page(store):
    with store.connect(read_only=True) as con:
        pages, _, _ = build_pages(con, store)
    return {p.slug: p for p in pages}


def test_page_overlays_both_models_with_what_was_stored(store):
    page = _page(store)["models"]
    blocks = {b.title: b for s in page.sections for b in s.blocks}
    assert "tiny, tiny-b" in page.intro
    drops = blocks["Loss against the fraction of layers dropped"]
    with store.connect(read_only=True) as con:
        df = fetch(con, drops.sql)
    assert set(df["model"]) == {"tiny", "tiny-b"}
    angular = df[(df["strategy"] == "angular") & (df["metric"] == "perplexity")].set_index(["model", "n"])["value"]
    assert angular[("tiny", 2)] == 11.0 and angular[("tiny-b", 2)] == 22.0  # drop[1-2]
    assert angular[("tiny", 0)] == 10.0 and angular[("tiny-b", 0)] == 20.0  # each curve starts unpruned
    frac = df.set_index(["model", "strategy", "metric", "n"])["fraction_dropped"]
    assert frac[("tiny", "angular", "perplexity", 2)] == 0.5 and frac[("tiny-b", "angular", "perplexity", 2)] == 0.25
    random = df[(df["strategy"] == "random") & (df["n"] == 2)].set_index("model")["value"]
    assert random["tiny"] == (900.0 + 50.0) / 2  # seeds averaged

    prune = blocks["Perplexity against the fraction of weights pruned"]
    with store.connect(read_only=True) as con:
        pr = fetch(con, prune.sql)
    mag = pr[pr["recipe"] == "magnitude / row"].set_index(["model", "fraction_pruned"])["value"]
    assert math.isclose(mag[("tiny", 0.5)], 10.0 + 0.5 * 40) and math.isclose(mag[("tiny-b", 0.5)], 2 * 30.0)
    assert set(pr["recipe"]) == {"magnitude / row", "wanda oneshot / row"}  # attn/mlp-only points are not here

    probes = blocks["Probe accuracy against relative depth"]
    with store.connect(read_only=True) as con:
        pb = fetch(con, probes.sql)
    peak = pb[pb["panel"] == "harmful_vs_neutral · resid_post"].sort_values("accuracy").groupby("model").tail(1)
    depth = peak.set_index("model")["depth"]
    assert depth["tiny"] == round(2 / 3, 4) and depth["tiny-b"] == round(3 / 7, 4)


def test_report_writes_the_page_and_links_it(store, tmp_path):
    report = build_report(store, tmp_path / "out")
    assert (tmp_path / "out" / "models.html").exists()
    index = report.index.read_text()
    assert "models.html" in index and "Models compared" in index
    assert "tiny-b" in (tmp_path / "out" / "models.html").read_text()


def test_one_model_gets_no_comparison_page(tmp_path):
    st = Store(tmp_path / "one.duckdb")
    with st.connect() as con:
        writers.write_layers(con)
        writers.write_weights(con)
        assert q.study_models(con) == ["tiny"]
    assert "models" not in _page(st)
