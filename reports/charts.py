"""Chart shapes shared by the study pages: DataFrame in, Altair chart out, tooltips on every mark.

No computation happens here: the data arrives aggregated from store/queries/. Field
names are passed in so the same shape serves every study.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import altair as alt
import pandas as pd

if TYPE_CHECKING:
    from altair.typing import ChannelOpacity
    from altair.vegalite.v6.schema._typing import ColorScheme_T

AnyChart = alt.Chart | alt.LayerChart | alt.FacetChart
"""What the chart shapes return: a chart, layers of charts, or their facets."""

WIDTH = 300
HEIGHT = 220


def _tooltip(df: pd.DataFrame, fields: Sequence[str]) -> list[alt.Tooltip]:
    """Tooltips typed from the data: numbers formatted, everything else as text."""
    out = []
    for f in fields:
        if f not in df.columns:
            raise KeyError(f"tooltip field '{f}' is not a column of the chart data ({', '.join(df.columns)})")
        if pd.api.types.is_float_dtype(df[f]):
            out.append(alt.Tooltip(f"{f}:Q", format=".4g"))
        elif pd.api.types.is_numeric_dtype(df[f]):
            out.append(alt.Tooltip(f"{f}:Q"))
        else:
            out.append(alt.Tooltip(f"{f}:N"))
    return out


def _check(df: pd.DataFrame, *fields: str | None) -> None:
    missing = [f for f in fields if f and f not in df.columns]
    if missing:
        raise KeyError(f"chart data lacks columns {missing}: it has {list(df.columns)}")


def heatmap(df: pd.DataFrame, *, x: str, y: str, color: str, title: str, x_title: str | None, y_title: str | None,
            color_title: str, tooltip: Sequence[str], scheme: ColorScheme_T = "viridis",
            domain: tuple[float, float] | None = None, diverging: bool = False,
            size: int = 360, height: int | None = None, facet: str | None = None, columns: int = 3,
            highlight: str | None = None) -> AnyChart:
    """A grid of rects; x and y are ordinal (layers, heads), colour quantitative.

    ``diverging`` centres a red-blue scale on 0 (signed changes); ``facet`` makes one grid per value;
    ``highlight`` (a boolean column) rings the cells where it is true."""
    _check(df, x, y, color, facet, highlight)
    scale = alt.Scale(scheme="redblue" if diverging else scheme, domain=list(domain) if domain else alt.Undefined,
                      domainMid=0 if diverging else alt.Undefined, reverse=diverging)
    enc = {"x": alt.X(f"{x}:O", title=x_title, sort="ascending"),
               "y": alt.Y(f"{y}:O", title=y_title, sort="ascending"), "tooltip": _tooltip(df, tooltip)}
    chart = alt.Chart(df).mark_rect().encode(
        color=alt.Color(f"{color}:Q", title=color_title, scale=scale), **enc)
    if highlight:
        ring = alt.Chart(df).transform_filter(f"datum.{highlight}").mark_point(
            shape="circle", color="#e8590c", strokeWidth=2, size=60).encode(**enc)
        chart = alt.layer(chart, ring)
    chart = chart.properties(width=size, height=height or size)
    if facet:
        return chart.facet(facet=alt.Facet(f"{facet}:N", title=None), columns=columns, title=title)
    return chart.properties(title=title)


def curves(df: pd.DataFrame, *, x: str, y: str, series: str | None, title: str, x_title: str | None, y_title: str | None,
           tooltip: Sequence[str], facet: str | None = None, baseline: str | None = None,
           columns: int = 3, log_y: bool = False, x_type: str = "Q", band: str | None = None,
           series_title: str | None = None, area: tuple[str, str] | None = None) -> AnyChart:
    """Lines with points per ``series`` (optionally one panel per ``facet`` value, each with its
    own y scale) and a dashed rule at the ``baseline`` column (the unedited model's value).
    ``area`` = (low column, high column) shades that range behind the lines where both are present
    (a permutation null's mean to its 95th percentile)."""
    _check(df, x, y, series, facet, baseline, band, *(area or ()))
    base = alt.Chart(df)
    color = (alt.Color(f"{series}:N", title=series_title or series) if series else alt.value("#3662a8"))
    y_scale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    whole = x_type == "Q" and pd.api.types.is_integer_dtype(df[x])  # layer counts, steps: no 0.5 ticks
    x_axis = alt.Axis(format="d", tickMinStep=1) if whole else alt.Axis()
    enc = {"x": alt.X(f"{x}:{x_type}", title=x_title, axis=x_axis),
               "y": alt.Y(f"{y}:Q", title=y_title, scale=y_scale),
               "color": color, "tooltip": _tooltip(df, tooltip)}
    layers = [base.mark_line(strokeWidth=1.6).encode(**enc), base.mark_point(filled=True, size=36).encode(**enc)]
    if area:
        lo, hi = area
        shade = _span(base, lo, hi, y).mark_area(opacity=0.25, color="#888").encode(
            x=enc["x"], y=alt.Y("span_lo:Q", title=y_title, scale=y_scale), y2="span_hi:Q",
            detail=alt.Detail(f"{series}:N") if series else alt.Undefined,
            tooltip=_tooltip(df, [c for c in (x, lo, hi) if c]))
        layers.insert(0, shade)
    if band:  # stderr as an error bar around each point
        layers.append(base.transform_calculate(lo=f"datum.{y} - datum.{band}", hi=f"datum.{y} + datum.{band}")
                      .mark_rule(opacity=0.5).encode(x=enc["x"], y="lo:Q", y2="hi:Q", color=color,
                                                      tooltip=_tooltip(df, tooltip)))
    if baseline:
        layers.append(base.mark_rule(strokeDash=[5, 4], color="#444").encode(
            y=alt.Y(f"mean({baseline}):Q"),
            tooltip=[alt.Tooltip(f"mean({baseline}):Q", title="base model", format=".4g")]))
    chart = alt.layer(*layers).properties(width=WIDTH, height=HEIGHT)
    if facet:
        return chart.facet(facet=alt.Facet(f"{facet}:N", title=None), columns=columns, title=title) \
            .resolve_scale(y="independent")
    return chart.properties(title=title)


def bars(df: pd.DataFrame, *, x: str, y: str, title: str, x_title: str | None, y_title: str | None, tooltip: Sequence[str],
         color: str | None = None, facet: str | None = None, columns: int = 3, baseline: str | None = None,
         horizontal: bool = False, sort: str | list | None = None, width: int = WIDTH,
         color_title: str | None = None, grouped: bool = True) -> AnyChart:
    """Bars of ``y`` per category ``x``, side by side per ``color`` when ``grouped`` (else ``color`` only
    colours each bar), optional baseline rule."""
    _check(df, x, y, color, facet, baseline)
    base = alt.Chart(df)
    cat = alt.X(f"{x}:N", title=x_title, sort=sort) if not horizontal else alt.Y(f"{x}:N", title=x_title, sort=sort)
    val = alt.Y(f"{y}:Q", title=y_title) if not horizontal else alt.X(f"{y}:Q", title=y_title)
    enc: dict[str, Any] = {"x": cat, "y": val} if not horizontal else {"y": cat, "x": val}
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color_title or color)
        if grouped and not horizontal:
            enc["xOffset"] = alt.XOffset(f"{color}:N")
        elif grouped:
            enc["yOffset"] = alt.YOffset(f"{color}:N")
    layers = [base.mark_bar().encode(**enc, tooltip=_tooltip(df, tooltip))]
    if baseline:
        rule_enc = {("x" if horizontal else "y"): alt.X(f"mean({baseline}):Q") if horizontal
                    else alt.Y(f"mean({baseline}):Q")}
        layers.append(base.mark_rule(strokeDash=[5, 4], color="#444").encode(
            **rule_enc, tooltip=[alt.Tooltip(f"mean({baseline}):Q", title="base model", format=".4g")]))
    chart = alt.layer(*layers).properties(width=width, height=HEIGHT)
    if facet:
        # The offset scale must be resolved per panel too, else Vega-Lite squeezes grouped bars to hairlines.
        offset: dict[str, Literal["independent"]] = {("yOffset" if horizontal else "xOffset"): "independent"} if color and grouped else {}
        return chart.facet(facet=alt.Facet(f"{facet}:N", title=None), columns=columns, title=title) \
            .resolve_scale(y="independent", x="independent", **offset)
    return chart.properties(title=title)


def _span(chart: alt.Chart, lo: str, hi: str, fallback: str, when: str = "true") -> alt.Chart:
    """Fields span_lo / span_hi: lo..hi where ``when`` holds and both are present, else a zero-length span
    at ``fallback`` (span_on says which). Filtering the rows out instead would leave some panels of a
    faceted chart with no data, and Vega warns about the empty extent."""
    on = f"({when}) && isValid(datum.{lo}) && isValid(datum.{hi})"
    return chart.transform_calculate(span_on=on, span_lo=f"{on} ? datum.{lo} : datum.{fallback}",
                                     span_hi=f"{on} ? datum.{hi} : datum.{fallback}")


def _shown(expr: str, opacity: float = 1.0) -> ChannelOpacity:
    return alt.condition(expr, alt.value(opacity), alt.value(0.0))


VERDICT_COLORS = {"base model": "#c0392b", "detectable change (95% CI excludes 0)": "#3662a8",
                  "within noise (95% CI of the change includes 0)": "#aaaaaa", "no per-item scores": "#7f8c8d",
                  "random edits: 95% prediction band": "#e8590c"}
"""How a point's verdict is drawn: differences inside the noise in grey (hollow), real changes in blue, random
edits and their band in orange (store.queries.VERDICT and edits_vs_band_sql write these labels)."""


def _verdict_color(df: pd.DataFrame) -> alt.Color:
    present = [v for v in VERDICT_COLORS if v in set(df["verdict"])] or list(VERDICT_COLORS)
    scale = alt.Scale(domain=present, range=[VERDICT_COLORS[v] for v in present])
    return alt.Color("verdict:N", title=None, scale=scale,
                     legend=alt.Legend(orient="bottom", columns=1, labelLimit=500))


def points_vs_base(df: pd.DataFrame, *, title: str) -> AnyChart:
    """Every evaluated point of a sweep as a dot, one panel per task/metric, base model as a rule.

    Expects columns point, panel, value, base_value (eval_points_sql). With lo / hi (the point's paired
    95% interval) each dot gets its interval; with verdict, dots inside the noise are hollow and grey.
    """
    _check(df, "point", "panel", "value", "base_value")
    tips = _tooltip(df, [c for c in ("point", "panel", "value", "stderr", "base_value", "delta", "lo", "hi", "p",
                                     "verdict") if c in df])
    base = alt.Chart(df)
    color = (_verdict_color(df) if "verdict" in df else
             alt.condition("datum.point == 'base'", alt.value("#c0392b"), alt.value("#3662a8")))
    y = alt.Y("point:N", title=None, sort=None)
    dot_kw = {"x": alt.X("value:Q", title="value", scale=alt.Scale(zero=False)), "y": y, "color": color,
              "tooltip": tips}
    if "verdict" in df:
        dot_kw["fill"] = alt.condition("indexof(datum.verdict, 'within noise') >= 0", alt.value("white"), color)
    layers = [base.mark_point(filled="verdict" not in df, size=40).encode(**dot_kw)]
    if {"lo", "hi"} <= set(df.columns):
        layers.insert(0, _span(base, "lo", "hi", "value").mark_rule().encode(
            x="span_lo:Q", x2="span_hi:Q", y=y, color=color, tooltip=tips, opacity=_shown("datum.span_on", 0.7)))
    layers.append(base.mark_rule(strokeDash=[5, 4], color="#444").encode(
        x=alt.X("mean(base_value):Q"),
        tooltip=[alt.Tooltip("mean(base_value):Q", title="base model", format=".4g")]))
    return alt.layer(*layers).properties(width=240, height=alt.Step(14)).facet(
        facet=alt.Facet("panel:N", title=None), columns=3, title=title).resolve_scale(x="independent")


def edits_vs_band(df: pd.DataFrame, *, title: str) -> AnyChart:
    """Each edit beside the band of random edits of its kind, one panel per task/metric.

    Expects rows (row, kind, panel, value, lo, hi, base_value, verdict): kind 'edit' (value and its paired
    95% interval), 'band' (lo..hi: where one more random edit would land, 95% prediction) and 'random'
    (each random edit's value, as a tick on its band's row). Edits inside the noise are hollow and grey.
    """
    _check(df, "row", "kind", "panel", "value", "lo", "hi", "base_value", "verdict")
    tips = _tooltip(df, [c for c in ("row", "kind", "panel", "value", "lo", "hi", "base_value", "delta", "p",
                                     "verdict") if c in df])
    y = alt.Y("row:N", title=None, sort=None)
    base = alt.Chart(df)
    color = _verdict_color(df)
    # every layer keeps every row (see _span) and hides the ones it does not draw
    layers = [
        _span(base, "lo", "hi", "value", "datum.kind == 'band'").mark_bar(height=10).encode(
            x=alt.X("span_lo:Q", title="value", scale=alt.Scale(zero=False)), x2="span_hi:Q", y=y, color=color,
            tooltip=tips, opacity=_shown("datum.span_on", 0.3)),
        base.mark_tick(thickness=1.5, size=10).encode(x="value:Q", y=y, color=color, tooltip=tips,
                                                      opacity=_shown("datum.kind == 'random'")),
        _span(base, "lo", "hi", "value", "datum.kind == 'edit'").mark_rule().encode(
            x="span_lo:Q", x2="span_hi:Q", y=y, color=color, tooltip=tips, opacity=_shown("datum.span_on", 0.8)),
        base.mark_point(size=45, filled=False).encode(
            x="value:Q", y=y, color=color, tooltip=tips, opacity=_shown("datum.kind == 'edit'"),
            fill=alt.condition("indexof(datum.verdict, 'within noise') >= 0", alt.value("white"), color)),
        base.mark_rule(strokeDash=[5, 4], color="#444").encode(
            x=alt.X("mean(base_value):Q"),
            tooltip=[alt.Tooltip("mean(base_value):Q", title="base model", format=".4g")]),
    ]
    return alt.layer(*layers).properties(width=240, height=alt.Step(14)).facet(
        facet=alt.Facet("panel:N", title=None), columns=3, title=title).resolve_scale(x="independent")
