"""Report pages as data: a page is a list of parts, a part a titled list of panels.

A ``Panel`` names what it shows (title, caption), the ``store.queries`` function whose SQL gives its
rows (with the arguments to call it with) and the chart function that draws them (none: the rows
are shown as a table). Page modules only say which panels a run has; ``render`` (called by
reports.build for every page) runs each query once and draws it, so no page fetches or computes.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import altair as alt
import duckdb
import pandas as pd

from reports.html import Block, ChartBlock, Note, Section, TableBlock
from store.queries import fetch


@dataclass(frozen=True)
class Panel:
    """One chart or table and the SQL behind it."""

    title: str
    query: Callable[..., str]
    """A ``store.queries`` function returning the panel's SQL."""
    args: tuple[Any, ...] = ()
    """Arguments of ``query`` (run id first, as a rule)."""
    chart: Callable[[pd.DataFrame], alt.TopLevelMixin | None] | None = None
    """Draws the rows; None shows them as a table. Returning None draws nothing for those rows."""
    caption: str | Callable[[pd.DataFrame], str] = ""
    """Under the panel; a function of the rows when it states something about them."""
    empty: str = ""
    """Said instead of the panel when the query returns no rows (default: '<title>: no rows in this run.')."""
    max_rows: int = 60
    """Rows a table shows."""
    columns: tuple[str, ...] = ()
    """Columns a table shows (all when empty)."""
    say_empty: bool = True
    """False: nothing at all for no rows (another panel of the same rows says it)."""

    def sql(self) -> str:
        return self.query(*self.args)

    def blocks(self, con: duckdb.DuckDBPyConnection) -> list[Block]:
        sql = self.sql()
        df = fetch(con, sql)
        if df.empty:
            if not self.say_empty:
                return []
            return [Note(html.escape(self.empty or f"{self.title}: no rows in this run."), kind="warn")]
        caption = self.caption(df) if callable(self.caption) else self.caption
        if self.chart is None:
            shown = df[list(self.columns)] if self.columns else df
            return [TableBlock(self.title, shown, sql, caption=caption, max_rows=self.max_rows)]
        chart = self.chart(df)
        return [] if chart is None else [ChartBlock(self.title, chart, sql, caption=caption)]


@dataclass(frozen=True)
class Part:
    """A titled section of a page: panels and notes, in order."""

    title: str
    panels: Sequence[Panel | Note] = field(default_factory=tuple)
    intro: str = ""


def warn(title: str, text: str) -> Part:
    """A part that only says why it has nothing to show."""
    return Part(title, (Note(text, kind="warn"),))


def render(con: duckdb.DuckDBPyConnection, parts: Sequence[Part]) -> list[Section]:
    """Run every panel's query and draw it: the page's sections."""
    return [Section(p.title, tuple(b for item in p.panels
                                   for b in (item.blocks(con) if isinstance(item, Panel) else [item])), p.intro)
            for p in parts]
