"""Self-contained HTML pages: Vega libraries inlined once per page, one spec per chart.

A page is a list of sections; a section holds blocks (charts, tables, notes). Every chart
and table carries the SQL that produced its data, shown collapsed under it with the
`invoke sql` command that reruns it. Pages work from ``file://`` with no network.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache

import altair as alt
import pandas as pd

# Vega-Lite version of the specs Altair writes; the inlined bundle must match it.
VL_VERSION = ".".join(alt.VEGALITE_VERSION.split(".")[:2])


@dataclass(frozen=True)
class ChartBlock:
    """One chart, with the SQL that produced its data."""

    title: str
    chart: alt.TopLevelMixin
    sql: str
    caption: str = ""


@dataclass(frozen=True)
class TableBlock:
    """A small table (at most ``max_rows`` shown), with the SQL that produced it."""

    title: str
    df: pd.DataFrame
    sql: str
    caption: str = ""
    max_rows: int = 60


@dataclass(frozen=True)
class Note:
    """A paragraph of text; ``html_text`` is trusted markup written by this package."""

    html_text: str
    kind: str = "info"  # info | warn


Block = ChartBlock | TableBlock | Note


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]
    intro: str = ""


@dataclass(frozen=True)
class Page:
    """One HTML file: ``slug``.html."""

    slug: str
    title: str
    intro: str
    sections: tuple[Section, ...]
    nav: tuple[tuple[str, str], ...] = field(default=())  # (slug, title) of every page

    @property
    def filename(self) -> str:
        return f"{self.slug}.html"

    @property
    def charts(self) -> list[ChartBlock]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, ChartBlock)]


@lru_cache(maxsize=2)
def vega_bundle(vl_version: str = VL_VERSION) -> str:
    """Vega, Vega-Lite and Vega-Embed as one script that sets window.vegaEmbed (from vl-convert)."""
    import vl_convert

    # vl-convert's stub marks snippet required; at runtime it defaults to the bare bundle
    bundle = vl_convert.javascript_bundle(vl_version=vl_version)  # type: ignore[call-arg]
    if "</script" in bundle.lower():  # would end the inline <script> early
        raise RuntimeError("the Vega bundle contains '</script': cannot inline it")
    return bundle


def sql_command(sql: str, store_arg: str) -> str:
    """The shell command that reruns ``sql`` (report SQL never contains double quotes)."""
    one_line = " ".join(sql.split())
    return f'invoke sql --store {store_arg} "{one_line}"'


def _sql_details(sql: str, store_arg: str) -> str:
    return (
        "<details class='sql'><summary>SQL behind this</summary>"
        f"<pre><code>{html.escape(sql.strip())}</code></pre>"
        f"<p>Rerun it: <code>{html.escape(sql_command(sql, store_arg))}</code></p></details>"
    )


def _table_html(df: pd.DataFrame, max_rows: int) -> str:
    shown = df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    rows = []
    for row in shown.itertuples(index=False):
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row)
        rows.append(f"<tr>{cells}</tr>")
    more = f"<p class='more'>{len(df) - max_rows} more rows: run the SQL below</p>" if len(df) > max_rows else ""
    return f"<div class='tablewrap'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>{more}"


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _block_html(block: Block, chart_id: str | None, store_arg: str) -> str:
    if isinstance(block, Note):
        return f"<div class='note {block.kind}'>{block.html_text}</div>"
    caption = f"<p class='caption'>{html.escape(block.caption)}</p>" if block.caption else ""
    if isinstance(block, ChartBlock):
        body = f"<div class='chart' id='{chart_id}'></div>"
    else:
        body = _table_html(block.df, block.max_rows)
    return (f"<figure class='block'><h3>{html.escape(block.title)}</h3>{caption}{body}"
            f"{_sql_details(block.sql, store_arg)}</figure>")


def _spec(chart: alt.TopLevelMixin) -> dict:
    """The Vega-Lite spec with its data inlined (Altair's row limit applies: aggregate in SQL)."""
    return chart.to_dict()


def _json_for_script(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#22313f;color:#fff;padding:12px 24px}header a{color:#cfe3ff;margin-right:14px;text-decoration:none}
header a.here{color:#fff;font-weight:600;text-decoration:underline}
main{max-width:1180px;margin:0 auto;padding:8px 24px 48px}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}h3{margin:6px 0}
figure.block{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:12px 16px;margin:16px 0}
.chart{overflow-x:auto}.caption{color:#555;margin:2px 0 8px}.note{padding:8px 12px;border-radius:4px;background:#eef5ff;margin:12px 0}
.note.warn{background:#fff4e5}
details.sql summary{cursor:pointer;color:#3662a8;margin-top:8px}
pre{background:#f4f4f4;padding:8px;overflow-x:auto;font-size:12px}code{font-size:12px}
.tablewrap{overflow-x:auto}table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f0f0f0}
.more{color:#777;font-size:12px}footer{color:#777;font-size:12px;margin-top:32px}
"""

EMBED_JS = """
const specs = JSON.parse(document.getElementById('interp-specs').textContent);
const state = window.interpReport = {total: Object.keys(specs).length, done: 0, failed: 0, finished: false};
const opts = {renderer: 'svg', actions: {export: true, source: false, compiled: false, editor: false}};
await Promise.all(Object.entries(specs).map(([id, spec]) =>
  Promise.resolve().then(() => vegaEmbed('#' + id, spec, opts))  // a synchronous throw becomes a rejection
    .then(() => { state.done += 1; })
    .catch((err) => {
      state.failed += 1;
      console.error('chart ' + id + ' failed to render: ' + err);
      document.getElementById(id).textContent = 'This chart failed to render: ' + err;
    })));
state.finished = true;
"""


def render_page(page: Page, store_arg: str, footer: str = "") -> str:
    """The page as one HTML string; the Vega bundle appears once however many charts it has."""
    specs: dict[str, dict] = {}
    parts = []
    n = 0
    for section in page.sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        if section.intro:
            parts.append(f"<p>{section.intro}</p>")
        for block in section.blocks:
            chart_id = None
            if isinstance(block, ChartBlock):
                n += 1
                chart_id = f"chart-{n}"
                specs[chart_id] = _spec(block.chart)
            parts.append(_block_html(block, chart_id, store_arg))
        parts.append("</section>")
    here = " class='here'"
    nav = "".join(f"<a href='{html.escape(slug)}.html'{here if slug == page.slug else ''}>{html.escape(t)}</a>"
                  for slug, t in page.nav)
    scripts = ""
    if specs:
        scripts = (f"<script type='application/json' id='interp-specs'>{_json_for_script(specs)}</script>\n"
                   f"<script type='module'>{vega_bundle()}</script>\n"
                   f"<script type='module'>{EMBED_JS}</script>")
    else:
        scripts = "<script>window.interpReport = {total: 0, done: 0, failed: 0, finished: true};</script>"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"
        f"<title>{html.escape(page.title)}</title><style>{STYLE}</style></head><body>"
        f"<header>{nav}</header><main><h1>{html.escape(page.title)}</h1><p>{page.intro}</p>"
        f"{''.join(parts)}<footer>{footer}</footer></main>{scripts}</body></html>"
    )
