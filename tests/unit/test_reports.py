"""Report framework: chart encodings from fixed DataFrames, page assembly, partial and bad stores."""

from __future__ import annotations

import json
import re

import altair as alt
import duckdb
import pandas as pd
import pytest

from reports import charts
from reports.html import ChartBlock, Note, Page, Section, TableBlock, render_page, sql_command
from store import Store, StoreError
from store.queries import MAX_CELLS, bucket


def unit_specs(spec: dict):
    """Every spec node that draws a mark (walks layers, facets, concats)."""
    if "mark" in spec:
        yield spec
    for key in ("layer", "hconcat", "vconcat", "concat"):
        for sub in spec.get(key, []):
            yield from unit_specs(sub)
    if "spec" in spec:
        yield from unit_specs(spec["spec"])


def assert_tooltips(chart: alt.TopLevelMixin) -> list[dict]:
    units = list(unit_specs(chart.to_dict()))
    assert units, "chart draws no marks"
    for u in units:
        assert u.get("encoding", {}).get("tooltip"), f"mark {u['mark']} has no tooltip"
    return units


def mark_type(u: dict) -> str:
    return u["mark"]["type"] if isinstance(u["mark"], dict) else u["mark"]


def test_heatmap_encodings():
    df = pd.DataFrame({"a": [0, 0, 1, 1], "b": [0, 1, 0, 1], "cos": [1.0, 0.5, 0.5, 1.0]})
    ch = charts.heatmap(df, x="a", y="b", color="cos", title="t", x_title="layer a", y_title="layer b",
                        color_title="cosine", tooltip=["a", "b", "cos"], domain=(0, 1))
    (u,) = assert_tooltips(ch)
    enc = u["encoding"]
    assert mark_type(u) == "rect"
    assert (enc["x"]["field"], enc["x"]["type"]) == ("a", "ordinal")
    assert (enc["y"]["field"], enc["y"]["type"]) == ("b", "ordinal")
    assert (enc["color"]["field"], enc["color"]["type"]) == ("cos", "quantitative")
    assert enc["color"]["scale"]["domain"] == [0, 1]
    assert [t["field"] for t in enc["tooltip"]] == ["a", "b", "cos"]
    assert enc["tooltip"][2]["type"] == "quantitative" and enc["tooltip"][0]["type"] == "quantitative"


def test_curves_with_baseline_facet_and_band():
    df = pd.DataFrame({"n": [1, 2, 1, 2], "v": [1.0, 2.0, 1.5, 2.5], "strategy": ["a", "a", "b", "b"],
                       "panel": ["ppl"] * 4, "base": [0.9] * 4, "se": [0.1] * 4})
    ch = charts.curves(df, x="n", y="v", series="strategy", facet="panel", baseline="base", band="se",
                       title="t", x_title="n", y_title="v", tooltip=["strategy", "n", "v"])
    spec = ch.to_dict()
    assert spec["facet"]["field"] == "panel" and spec["resolve"]["scale"]["y"] == "independent"
    units = assert_tooltips(ch)
    assert [mark_type(u) for u in units] == ["line", "point", "rule", "rule"]
    line = units[0]["encoding"]
    assert line["x"]["field"] == "n" and line["y"]["field"] == "v" and line["color"]["field"] == "strategy"
    base_rule = units[3]["encoding"]
    assert base_rule["y"]["aggregate"] == "mean" and base_rule["y"]["field"] == "base"


def test_bars_grouped_with_baseline():
    df = pd.DataFrame({"edit": ["x", "x", "y", "y"], "value": [0.1, 0.2, 0.3, 0.4], "when": ["a", "b", "a", "b"],
                       "base": [0.25] * 4})
    ch = charts.bars(df, x="edit", y="value", color="when", baseline="base", title="t", x_title="edit",
                     y_title="value", tooltip=["edit", "when", "value"])
    units = assert_tooltips(ch)
    bar = units[0]["encoding"]
    assert mark_type(units[0]) == "bar" and bar["xOffset"]["field"] == "when" and bar["color"]["field"] == "when"
    assert mark_type(units[1]) == "rule"
    faceted = charts.bars(df.assign(panel="p"), x="edit", y="value", color="when", facet="panel", title="t",
                          x_title="edit", y_title="value", tooltip=["edit", "when", "value"]).to_dict()
    # grouped bars in panels: the offset scale is per panel (shared, Vega-Lite draws hairline bars)
    assert faceted["resolve"]["scale"] == {"x": "independent", "y": "independent", "xOffset": "independent"}
    ungrouped = charts.bars(df.assign(panel="p"), x="edit", y="value", color="when", facet="panel", title="t",
                            x_title="edit", y_title="value", tooltip=["edit"], grouped=False).to_dict()
    assert "xOffset" not in ungrouped["resolve"]["scale"]


def test_points_vs_base_and_missing_columns():
    df = pd.DataFrame({"point": ["base", "p"], "panel": ["ppl / perplexity"] * 2, "value": [2.0, 3.0],
                       "base_value": [2.0, 2.0], "delta": [0.0, 1.0]})
    units = assert_tooltips(charts.points_vs_base(df, title="t"))
    assert [mark_type(u) for u in units] == ["point", "rule"]
    with pytest.raises(KeyError, match="lacks columns"):
        charts.heatmap(df, x="nope", y="point", color="value", title="", x_title="", y_title="",
                       color_title="", tooltip=["value"])
    with pytest.raises(KeyError, match="tooltip field 'nope'"):
        charts.bars(df, x="point", y="value", title="", x_title="", y_title="", tooltip=["nope"])


def test_altair_row_limit_is_what_sql_aggregation_avoids():
    df = pd.DataFrame({"a": range(5001), "b": 0, "v": 1.0})
    ch = charts.heatmap(df, x="a", y="b", color="v", title="", x_title="", y_title="", color_title="",
                        tooltip=["v"])
    with pytest.raises(alt.MaxRowsError):
        ch.to_dict()


@pytest.mark.parametrize("n", [1, 4, 30, 70, 71, 80, 200, 1000])
def test_bucket_keeps_square_grids_under_the_limit(n):
    k = bucket(n)
    cells = (-(-n // k)) ** 2  # ceil(n / k) squared
    assert cells <= MAX_CELLS
    assert k == 1 or (-(-n // (k - 1))) ** 2 > MAX_CELLS  # smallest such width
    other = 64
    k2 = bucket(n, other)
    assert (-(-n // k2)) * other <= MAX_CELLS


def _page(n_charts: int) -> Page:
    df = pd.DataFrame({"x": [1, 2], "y": [0.5, 0.25], "label": ["</script><script>alert(1)</script>", "b"]})
    blocks = [ChartBlock(f"chart {i}", charts.bars(df, x="label", y="y", title="t", x_title="x", y_title="y",
                                                   tooltip=["label", "y"]), f"SELECT {i} AS x")
              for i in range(n_charts)]
    blocks.append(TableBlock("table", df, "SELECT 'x' AS label"))
    blocks.append(Note("a <b>note</b>"))
    return Page(slug="p", title="P & Q", intro="intro", sections=(Section("S", tuple(blocks)),),
                nav=(("index", "Overview"), ("p", "P")))


def test_page_inlines_vega_once_and_escapes_data():
    text = render_page(_page(3), "my.duckdb")
    assert text.count("window.vegaEmbed=") == 1  # the bundle, once for three charts
    assert "cdn" not in text.lower().split("<script type='module'>")[0]  # no external scripts in the markup
    assert not re.search(r"<script[^>]+src=", text)
    assert text.count("<details class='sql'>") == 4  # three charts and one table
    assert text.count("<div class='chart' id='chart-") == 3
    assert "<script><script>alert" not in text and "&lt;/script&gt;" in text  # table cell escaped
    specs = json.loads(re.search(r"id='interp-specs'>(.*?)</script>", text, re.DOTALL).group(1))
    assert sorted(specs) == ["chart-1", "chart-2", "chart-3"]
    assert specs["chart-1"]["datasets"]  # data travels inline
    assert "invoke sql --store my.duckdb &quot;SELECT 0 AS x&quot;" in text
    assert "P &amp; Q" in text and "class='here'" in text


def test_page_without_charts_has_no_bundle():
    page = Page(slug="i", title="i", intro="", sections=(Section("s", (Note("n"),)),))
    text = render_page(page, "s.duckdb")
    assert "vegaEmbed" not in text and "finished: true" in text


def test_sql_command_is_one_line():
    assert sql_command("SELECT a,\n  b\nFROM t", "x.duckdb") == 'invoke sql --store x.duckdb "SELECT a, b FROM t"'


def test_bad_stores_give_clear_errors(tmp_path):
    from reports.build import build_report

    out = tmp_path / "out"
    (tmp_path / "empty.duckdb").write_bytes(b"")
    (tmp_path / "text.duckdb").write_text("not a database")
    duckdb.connect(str(tmp_path / "foreign.duckdb")).execute("CREATE TABLE t (a INT)").close()
    with Store(tmp_path / "norun.duckdb").connect():
        pass
    cases = {"missing.duckdb": "no store at", "empty.duckdb": "not a readable interp store",
             "text.duckdb": "not a readable interp store", "foreign.duckdb": "not an interp store",
             "norun.duckdb": "holds no runs yet"}
    for name, msg in cases.items():
        with pytest.raises(StoreError, match=msg):
            build_report(Store(tmp_path / name), out)
    assert not out.exists()


def test_report_needs_no_model_code(tmp_path):
    """Rendering imports neither torch nor the model code: the report works from the store alone."""
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "from store import Store\nfrom store.runs import start_run\nfrom store.evals import write_evals\n"
        f"s = Store({str(tmp_path / 's.duckdb')!r})\n"
        "m = dict(model='m', revision='r', dtype='float32', device='cpu', n_layers=2, d_model=4)\n"
        "with s.connect() as con:\n"
        "    r = start_run(con, kind='layers', model=m, backend=None, config='{}', config_hash='h', code_version='t')\n"
        "    write_evals(con, [dict(run_id=r.run_id, study='layers', point='base', intervention='{}', task='ppl',"
        " metric='perplexity', value=1.0, stderr=None, n=1, chance=None, dataset='{}', seconds=0.0)])\n"
        "from reports.build import build_report\n"
        f"rep = build_report(s, {str(tmp_path / 'out')!r})\n"
        "assert rep.studies == ('layers',), rep\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('interp.model.loading', 'transformers')))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]


def test_deep_model_grids_stay_under_the_row_limit(tmp_path):
    """An 80-layer, 64-head model with two routers: every heat map is bucketed in SQL, none is refused."""
    import numpy as np

    from reports.build import build_pages
    from reports.html import ChartBlock
    from store import heads as sh
    from store.runs import finish_run, start_run

    L, H = 80, 64
    st = Store(tmp_path / "deep.duckdb")
    with st.connect() as con:
        run = start_run(con, kind="heads", model={"model": "deep", "revision": "r", "dtype": "float32", "device": "cpu",
                                                      "n_layers": L, "d_model": 8}, backend=None, config="{}",
                        config_hash="h", code_version="t").run_id
        grid = pd.DataFrame({"metric": "delta_loss", "layer": np.repeat(np.arange(L), H),
                             "head": np.tile(np.arange(H), L), "value": np.arange(L * H) / (L * H), "stderr": 0.0,
                             "n": 1, "dataset": "text"})
        sh.write_importance(con, run, "zero", grid)
        usage = grid[["layer", "head"]].assign(frequency=0.5, mean_gate=0.5, mean_prob=0.5, n_tokens=10)
        for k in (16, 32):
            sh.write_router(con, run, k, f"d{k}", np.zeros((L, H, 8), np.float32), np.zeros((L, H), np.float32),
                            usage, {"steps": 1, "heldout_tokens": 10, "base_nll": 1.0, "router_nll": 1.1, "uniform_nll": 1.2,
                                        "static_nll": 1.3, "router_lb": 1.0})
        finish_run(con, run)
        from store import safety as ss

        srun = start_run(con, kind="safety", model={"model": "deep", "revision": "r", "dtype": "float32", "device": "cpu",
                                                        "n_layers": L, "d_model": 8}, backend=None, config="{}",
                         config_hash="s", code_version="t").run_id
        settings = ["cv", "length", "held_out", "within:a", "within:b", "cross:a->b", "cross:b->a", "within:c"]
        probes = pd.DataFrame([{"problem": p, "hook": "resid_pre", "layer": l, "position": pos, "setting": st_, "metric": m,
                                    "mean": 0.5, "std": 0.0, "n": 10, "folds": 5, "lo": 0.4, "hi": 0.6,
                                    "null_mean": 0.5, "null_p95": 0.6, "p": 0.5, "permutations": 200}
                               for p in ("harmful", "toxic", "biased", "multiclass") for m in ("accuracy", "roc_auc")
                               for st_ in settings for l in range(L) for pos in ("last", "mean")])  # 5120 per site
        ss.replace_rows(con, srun, {"safety_probes": probes})
        finish_run(con, srun)
        pages, _, _ = build_pages(con, st)
    charts_ = [b for p in pages for s in p.sections for b in s.blocks if isinstance(b, ChartBlock)]
    titles = {b.title for b in charts_}
    assert {"zero / delta_loss", "Router: how often each head is active",
            "Linear probes by layer: resid_pre, last token", "Linear probes by layer: resid_pre, mean over tokens"} \
        <= titles
    for b in charts_:
        b.chart.to_dict()  # raises MaxRowsError above 5000 rows
        assert len(b.chart.data) <= MAX_CELLS


def test_runs_that_stored_nothing_yet_render_with_notes(tmp_path):
    """A study that was interrupted before writing anything: pages say so instead of failing."""
    from reports.build import build_report
    from store.runs import start_run

    st = Store(tmp_path / "fresh.duckdb")
    with st.connect() as con:
        for kind in ("layers", "weights", "heads", "safety"):
            start_run(con, kind=kind, model={"model": "m", "revision": "r", "dtype": "float32", "device": "cpu",
                                                 "n_layers": 2, "d_model": 4}, backend=None, config="{}",
                      config_hash=kind, code_version="t")
    rep = build_report(st, tmp_path / "out")
    assert rep.studies == ("layers", "weights", "heads", "safety")
    for page in rep.pages[1:]:
        text = page.read_text()
        assert "did not finish" in text and "no evaluations yet" in text
        assert "<div class='chart'" not in text  # nothing to draw, nothing drawn empty
