"""What every study page has: the sweep's evaluated points against the base model, and changes in words."""

from __future__ import annotations

import pandas as pd

from reports.charts import points_vs_base
from reports.panels import Panel, Part
from store.queries import eval_points_sql

MAX_DOT_POINTS = 60
"""Above this many points a sweep is shown as a table only (a dot per point stops being readable)."""


def sweep_part(run_id: int, title: str = "Every evaluated point") -> Part:
    """All points of the run's sweep with the base model's value beside them."""
    return Part(title, (
        Panel("Each point against the base model", eval_points_sql, (run_id,),
              lambda df: points_vs_base(df, title="value per sweep point")
              if df["point"].nunique() <= MAX_DOT_POINTS else None,  # a table only: too many points for dots
              caption="Red: the unedited model; dashed rule: its value. Each point carries the 95% interval of its "
                      "paired difference from the base on the same items (windows, items, generations, prompts); "
                      "hollow grey points are within the noise: the interval includes no change. One panel per "
                      "task and metric.", say_empty=False),
        Panel("Evaluations", eval_points_sql, (run_id,), max_rows=40,
              caption=lambda df: (f"{df['point'].nunique()} points x {len(df[['task', 'metric']].drop_duplicates())} "
                                  "task/metric pairs; delta = value - base value; lo..hi: the point's value at the "
                                  "ends of the 95% interval of delta; p: two-sided, paired (eval_deltas)."),
              empty=f"Run {run_id} has no evaluations yet: rerun the study to resume it."),
    ))


def _finite(x: float | None) -> bool:
    return x is not None and not pd.isna(x)


def change_text(label: str, before: float, after: float, lo: float | None, hi: float | None) -> str:
    """One metric's change in words: 'toxicity 0.0418 -> 0.0855: no detectable change at this budget (95% CI
    -0.012..+0.099)' when the paired interval of the change includes 0, else the change with its interval
    ('refusal rate 0.2 -> 0.05 (-0.15, 95% CI -0.25..-0.05)'); 'no item changed' when every item scored the
    same; without an interval, only the values."""
    text = f"{label} {before:.3g} -> {after:.3g}"
    if lo is None or hi is None or not (_finite(lo) and _finite(hi)):
        return text + " (no per-item scores: no interval)"
    if lo == hi == 0 and after == before:
        return text + ": no item changed"
    if lo <= 0 <= hi:
        return text + f": no detectable change at this budget (95% CI {lo:+.3g}..{hi:+.3g})"
    return text + f" ({after - before:+.3g}, 95% CI {lo:+.3g}..{hi:+.3g})"
