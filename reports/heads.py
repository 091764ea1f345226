"""The head study page: importance heat maps, pruning curves, Mixture-of-Head routing."""

from __future__ import annotations

from functools import partial

import duckdb
import pandas as pd

from reports import charts
from reports.common import sweep_part
from reports.html import Note
from reports.panels import Panel, Part
from store.queries import fetch, has_rows
from store.queries import heads as q


def parts(con: duckdb.DuckDBPyConnection, run_id: int) -> list[Part]:
    out = []
    if has_rows(con, "heads_importance", run_id):
        out.append(_importance(con, run_id))
    else:
        out.append(Part("Head importance", (Note("This run stored no head importance.", kind="warn"),)))
    out.append(Part("Pruning the least important heads", (Panel("Quality as heads are pruned or routed", q.pruning_sql, (run_id,),
        lambda df: charts.curves(df, x="frac_off", y="value", series="strategy", facet="panel",
                                 baseline="base_value", band="stderr", title="metric vs share of heads pruned",
                                 x_title="share of heads pruned", y_title="value", series_title="ranking",
                                 tooltip=["strategy", "kind", "point", "heads_off", "frac_off", "value", "stderr",
                                          "base_value"]),
        caption="Heads ranked by each importance score and pruned least-important first (global: anywhere; "
                "layer: the same count in every layer); random rankings are the control. router: the trained "
                "Mixture-of-Head router keeping k heads per layer for each token, at the same head budget as "
                "gradient_layer (layer), the static per-layer pruning it competes with. "
                "Dashed: the unpruned model.",
        empty="No head-pruning points were evaluated in this run."),)))
    if has_rows(con, "heads_router_summary", run_id):
        out.append(_router(con, run_id))
    out.append(sweep_part(run_id))
    return out


def _importance_chart(df: pd.DataFrame, meaning: str, signed: bool) -> charts.AnyChart:
    return charts.heatmap(
        df, x="layer", y="head", color="importance", title=meaning, x_title="layer", y_title="head",
        color_title="importance", tooltip=["layer", "head", "importance", "stderr", "n"],
        diverging=signed, size=min(640, 20 * df["layer"].nunique() + 40),
        height=min(400, 22 * df["head"].nunique() + 20))


def _importance(con: duckdb.DuckDBPyConnection, run_id: int) -> Part:
    k = q.importance_bucket(con, run_id)
    blocks: list[Panel | Note] = []
    for method, metric, meaning in q.importance_scores(con, run_id):
        signed = metric.startswith("delta")
        blocks.append(Panel(f"{method} / {metric}", q.importance_sql, (run_id, method, metric, k),
            partial(_importance_chart, meaning=meaning, signed=signed),
            caption=meaning + ("" if k == 1 else f" (layers averaged in buckets of {k})")))
    blocks.append(Panel("Heads that matter most", q.top_heads_sql, (run_id,),
                                caption="Zero-ablating these raises the text loss most.",
                                empty="No zero-ablation scores in this run."))
    blocks.append(Panel("Do the scores agree?", q.agreement_sql, (run_id,),
                                caption="Rank correlation over all heads and overlap of the top-n sets."))
    return Part("Head importance", tuple(blocks),
                   intro="Each cell is one attention head. Ablation replaces the head's output z with zeros "
                         "or its mean; gradient importance gates each head with xi = 1 and averages |dL/dxi|.")


def _router(con: duckdb.DuckDBPyConnection, run_id: int) -> Part:
    usage_bucket = q.usage_bucket(con, run_id)
    blocks = (
        Panel("Router: how often each head is active", q.router_usage_sql, (run_id, usage_bucket),
                      lambda df: charts.heatmap(
                          df, x="layer", y="head", color="frequency", facet="router", columns=1,
                          title="share of tokens on which the head is among the top k", x_title="layer",
                          y_title="head", color_title="frequency", domain=(0, 1),
                          tooltip=["router", "layer", "head", "frequency", "mean_gate", "mean_prob", "n_tokens"],
                          size=min(640, 20 * df["layer"].nunique() + 40),
                          height=min(400, 22 * df["head"].nunique() + 20)),
                      caption="Per-token head routing (Mixture-of-Head style); a balanced router spreads use "
                              "evenly."),
        Panel("Router training", q.router_steps_sql, (run_id,),
                      lambda df: charts.curves(df, x="step", y="value", series="router", facet="term",
                                               title="LM loss and load-balancing loss per step",
                                               x_title="step", y_title="loss",
                                               tooltip=["router", "term", "step", "value"])),
        Panel("Quality against compute", q.router_summary_sql, (run_id,),
                      lambda df: charts.bars(df, x="router", y="nll", color="model", baseline="base_nll",
                                             title="held-out NLL: trained router vs uniform router vs static "
                                                   "pruning at the same k", x_title="heads active per token",
                                             y_title="NLL (nats/token)",
                                             tooltip=["router", "model", "nll", "steps", "heldout_tokens"]),
                      caption="uniform: an untrained router (a fixed arbitrary subset); static: the k most "
                              "gradient-important heads of each layer kept for every token."),
    )
    return Part("Mixture-of-Head routing", blocks)


def headline(con: duckdb.DuckDBPyConnection, run_id: int) -> str | None:
    """The most important head (else the router against static pruning)."""
    found = findings(con, run_id)
    return found[0] if found else None


def findings(con: duckdb.DuckDBPyConnection, run_id: int) -> list[str]:
    out = []
    if has_rows(con, "heads_importance", run_id):
        top = fetch(con, q.top_heads_sql(run_id, 1))
        if not top.empty:
            r = top.iloc[0]
            out.append(f"heads: the most important head is layer {int(r.layer)} head {int(r['head'])}; "
                       f"zero-ablating it raises text loss by {r.delta_loss:+.3f} nats/token.")
    if has_rows(con, "heads_router_summary", run_id):
        best = fetch(con, q.router_headline_sql(run_id))
        if not best.empty:
            row = best.iloc[0]
            out.append(f"heads: a trained top-{int(row.top_k)} head router reaches held-out NLL {row.router:.3f} vs "
                       f"{row.static:.3f} for static pruning at the same k (base {row.base:.3f}).")
    return out
