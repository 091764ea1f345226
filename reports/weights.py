"""The weight-pruning page: metric vs rate and vs pruned weights per module group, sparsity reached."""

from __future__ import annotations

import duckdb

from reports import charts
from reports.common import sweep_part
from reports.html import Note
from reports.panels import Panel, Part
from store.queries import fetch, has_rows
from store.queries import weights as q

TIPS = ["recipe", "modules", "point", "target_rate", "sparsity", "n_pruned", "pruned_fraction", "value", "stderr",
        "base_value"]


def parts(con: duckdb.DuckDBPyConnection, run_id: int) -> list[Part]:
    if not has_rows(con, "prune_points", run_id):
        return [Part("Pruning", (Note("This run stored no pruning points.", kind="warn"),)),
                sweep_part(run_id)]
    curves = [Panel("Pruning every module", q.rate_curve_sql, (run_id,),
        lambda df: charts.curves(df, x="target_rate", y="value", series="recipe", facet="panel",
                                 baseline="base_value", band="stderr", title="metric vs pruning rate (all modules)",
                                 x_title="share of weights pruned", y_title="value", series_title="recipe",
                                 tooltip=TIPS),
        caption="magnitude: smallest |W|; wanda: smallest |W_ij| * ||X_j||_2 from calibration activations; "
                "row / matrix / global: where the p% are counted. Dashed: the unpruned model.",
        empty="No points prune every module at once in this run.")]
    groups = []
    if q.has_module_groups(con, run_id):
        groups = [
            Panel("Module groups: against the rate", q.module_curve_sql, (run_id,),
                          lambda df: charts.curves(df, x="target_rate", y="value", series="series", facet="panel",
                                                   baseline="base_value", title="metric vs rate, per module group",
                                                   x_title="share of the group's weights pruned", y_title="value",
                                                   series_title="modules · recipe", tooltip=TIPS),
                          caption="Only the named projections are pruned (attn: q, k, v, o; mlp: gate, up, down)."),
            Panel("Module groups: against pruned weights", q.module_curve_sql, (run_id,),
                          lambda df: charts.curves(df, x="n_pruned", y="value", series="series", facet="panel",
                                                   baseline="base_value",
                                                   title="metric vs number of weights removed",
                                                   x_title="weights pruned", y_title="value",
                                                   series_title="modules · recipe", tooltip=TIPS),
                          caption="The same points by weights removed: the MLP holds several times more weights "
                                  "than attention, so equal rates are not equal cuts."),
            Panel("Weights per module type", q.module_sizes_sql, (run_id,),
                          lambda df: charts.bars(df, x="module", y="n_params", title="prunable weights per module",
                                                 x_title="module", y_title="weights", sort="-y",
                                                 tooltip=["module", "n_params"])),
        ]
    reached = [
        Panel("Sparsity reached", q.sparsity_sql, (run_id,),
                      lambda df: charts.heatmap(df, x="module", y="point", color="sparsity", domain=(0, 1),
                                                title="share of zero weights per module (all layers)",
                                                x_title="module", y_title=None, color_title="sparsity",
                                                tooltip=["point", "module", "rate_asked", "sparsity", "n_pruned",
                                                         "n_params"],
                                                size=40 * df["module"].nunique() + 40,
                                                height=14 * df["point"].nunique() + 20),
                      caption="What the masks actually removed (ties and already-zero weights can differ from "
                              "the rate asked)."),
        Panel("Wanda against magnitude at 50%", q.methods_at_sql, (run_id, 0.5),
                      empty="No 50% all-module points in this run."),
    ]
    return [Part("Pruning curves", tuple(curves)),
            *([Part("Module-specific rates", tuple(groups))] if groups else []),
            Part("What was pruned", tuple(reached)), sweep_part(run_id)]


def headline(con: duckdb.DuckDBPyConnection, run_id: int) -> str | None:
    """Wanda against magnitude at 50% pruned: every module when the run pruned them all at once, else the
    module group that both methods pruned (the largest)."""
    if not has_rows(con, "prune_points", run_id):
        return None
    rows = fetch(con, q.headline_group_sql(run_id, 0.5))
    if rows.empty:
        return None
    group = rows["modules"].iloc[0]
    parts = ", ".join(f"{r.recipe} {r.perplexity:.2f}" for r in rows.itertuples())
    what = "all weights" if group == "all" else f"the {group} weights"
    return f"weights: at 50% of {what} pruned, perplexity is {parts} (unpruned {rows['base_perplexity'].iloc[0]:.2f})."


def findings(con: duckdb.DuckDBPyConnection, run_id: int) -> list[str]:
    """Wanda against magnitude at 50% of every module."""
    if not has_rows(con, "prune_points", run_id):
        return []
    df = fetch(con, q.methods_at_sql(run_id, 0.5))
    if df.empty:
        return []
    parts = ", ".join(f"{r.recipe} {r.perplexity:.2f}" for r in df.itertuples())
    return [(f"weights: at 50% of all weights pruned, perplexity is {parts} (unpruned "
            f"{df['base_perplexity'].iloc[0]:.2f}).")]
