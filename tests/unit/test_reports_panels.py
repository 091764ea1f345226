"""Every report page is panels: pages list panels (title, store.queries function, chart, caption) and
reports.panels.render draws them; no page module fetches rows into a chart or computes a table itself."""

from __future__ import annotations

import ast
from pathlib import Path

import altair as alt
import duckdb
import pytest

from reports.html import ChartBlock, Note, TableBlock
from reports.panels import Panel, Part, render

REPORTS = Path(__file__).resolve().parents[2] / "reports"
MACHINERY = {"panels.py", "html.py", "charts.py", "browser.py", "__init__.py"}
"""Modules that make blocks or draw, not pages."""


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            for n in ast.walk(tree) if isinstance(n, ast.Call)}


@pytest.mark.parametrize("path", sorted(p for p in REPORTS.glob("*.py") if p.name not in MACHINERY),
                         ids=lambda p: p.name)
def test_pages_build_no_blocks_and_compute_nothing(path):
    calls = _calls(path)
    assert not calls & {"ChartBlock", "TableBlock"}, f"{path.name} builds blocks itself: list Panels instead"
    assert not calls & {"groupby", "pivot_table", "agg", "merge", "pivot"}, \
        f"{path.name} computes with pandas: do it in SQL (store/queries) or analyses/"


def test_every_study_page_is_a_list_of_parts():
    import importlib

    from store.queries import STUDIES

    for study in STUDIES:
        assert callable(importlib.import_module(f"reports.{study}").parts), study


def _sql(n: int) -> str:
    return f"SELECT range AS x, range * 2 AS y FROM range({n})"


def test_render_runs_each_query_and_draws_or_tabulates_it():
    con = duckdb.connect()
    line = Panel("line", _sql, (3,), lambda df: alt.Chart(df).mark_line().encode(x="x", y="y"),
                 caption=lambda df: f"{len(df)} rows")
    table = Panel("table", _sql, (2,), columns=("y",))
    skipped = Panel("too many", _sql, (5,), lambda df: None)  # the chart function declines these rows
    empty, quiet = Panel("none", _sql, (0,), empty="nothing here"), Panel("none", _sql, (0,), say_empty=False)
    [section] = render(con, [Part("part", (line, Note("text"), table, skipped, empty, quiet), intro="intro")])
    chart, note, tab, warn = section.blocks
    assert isinstance(chart, ChartBlock) and chart.sql == _sql(3) and chart.caption == "3 rows"
    assert chart.chart.data["y"].tolist() == [0, 2, 4]
    assert note.html_text == "text" and section.intro == "intro"
    assert isinstance(tab, TableBlock) and list(tab.df.columns) == ["y"] and tab.df["y"].tolist() == [0, 2]
    assert isinstance(warn, Note) and warn.kind == "warn" and warn.html_text == "nothing here"
