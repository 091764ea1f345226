"""The safety page: probes by layer with controls, directions, selection, edits before and after."""

from __future__ import annotations

import pandas as pd

from reports import charts
from reports.common import chart_or_note, sweep_section, table_or_note
from reports.html import Note, Section
from store.reports import fetch, has_rows
from store.reports import safety as q

EDIT_TIPS = ["edit", "kind", "alpha", "panel", "value", "stderr", "n", "base_value", "delta"]


def sections(con, run_id: int) -> list[Section]:
    out = []
    site = q.probe_site(con, run_id) if has_rows(con, "safety_probes", run_id) else None
    if site:
        hook, pos = site
        out.append(Section("Where the concepts are represented", (
            chart_or_note(con, "Linear probes by layer", q.probes_sql(run_id, hook, pos,
                                                                     q.probes_bucket(con, run_id, hook, pos)),
                          lambda df: charts.curves(df, x="layer", y="mean", series="setting", facet="panel",
                                                   band="std", title=f"probe score per layer ({hook}, {pos} token)",
                                                   x_title="layer", y_title="score", series_title="setting",
                                                   tooltip=["problem", "metric", "setting", "layer", "mean",
                                                            "std", "n", "folds"]),
                          caption="cv: cross-validated logistic regression; shuffled: the same probe on shuffled "
                                  "labels (the chance control); held_out / cross: trained on one source, tested "
                                  "on prompts or sources it never saw."),
            table_or_note(con, "Best layer per problem", q.best_probe_sql(run_id, hook, pos)))))
    else:
        out.append(Section("Where the concepts are represented", (Note("This run stored no probes.", kind="warn"),)))
    if has_rows(con, "safety_layers", run_id):
        out.append(Section("Directions", (chart_or_note(
            con, "Direction metrics by layer", q.direction_layers_sql(run_id),
            lambda df: charts.curves(df, x="layer", y="value", series="direction", facet="metric",
                                     title="per-layer direction metrics", x_title="layer", y_title="value",
                                     series_title="direction", tooltip=["direction", "metric", "layer", "value"]),
            caption="cosine_dm_probe: cosine between the class-mean difference and the probe weights; "
                    "projection_d / projection_auc: how well the direction separates held-out prompts."),)))
    if has_rows(con, "safety_candidates", run_id):
        out.append(Section("Choosing the direction to edit", (
            chart_or_note(con, "Candidate directions", q.candidates_sql(run_id),
                          lambda df: charts.curves(df, x="layer", y="value", series="direction", facet="criterion",
                                                   title="selection criteria per candidate layer",
                                                   x_title="layer of the direction", y_title="value",
                                                   series_title="direction",
                                                   tooltip=["direction", "criterion", "layer", "value"]),
                          caption="Each candidate is ablated everywhere on held-out prompts: refusal_drop is what "
                                  "the edit removes, kl what it costs on neutral prompts."),
            table_or_note(con, "What each criterion picks", q.selection_sql(run_id)))))
    out.append(_edits(con, run_id))
    out.append(sweep_section(con, run_id))
    return out


def _edits(con, run_id: int) -> Section:
    blocks = [chart_or_note(
        con, "Toxicity, refusal and capability before and after each edit", q.edits_sql(run_id),
        lambda df: charts.bars(df, x="edit", y="value", color="kind", grouped=False, facet="panel",
                               baseline="base_value", title="each edit against the unedited model", x_title="edit",
                               y_title="value", sort=None, tooltip=EDIT_TIPS, width=max(200, 26 * df["edit"].nunique())),
        caption="ablate: remove the direction from the residual stream at every layer; orth: the same edit made "
                "permanent in the weights; actadd: add alpha times the direction at one layer. Dashed: unedited.",
        empty="No edits were evaluated in this run.")]
    if not fetch(con, q.alpha_sql(run_id)).empty:
        blocks.append(chart_or_note(
            con, "Activation addition: sweeping alpha", q.alpha_sql(run_id),
            lambda df: charts.curves(df, x="alpha", y="value", series=None, facet="panel", baseline="base_value",
                                     band="stderr", title="metric vs alpha", x_title="alpha (x the class-mean gap)",
                                     y_title="value", tooltip=EDIT_TIPS),
            caption="alpha < 0 subtracts the harmful direction; alpha = 1 adds the full class-mean difference."))
    blocks.append(table_or_note(con, "Before and after, edit by edit", q.edit_effects_sql(run_id)))
    return Section("Edits", tuple(blocks))


def findings(con, run_id: int) -> list[str]:
    out = []
    site = q.probe_site(con, run_id) if has_rows(con, "safety_probes", run_id) else None
    if site:
        best = fetch(con, q.best_probe_sql(run_id, *site))
        if not best.empty:
            r = best.sort_values("problem").iloc[0]
            if "harmful_vs_neutral" in set(best["problem"]):
                r = best[best["problem"] == "harmful_vs_neutral"].iloc[0]
            auc = f", ROC-AUC {r.roc_auc:.3f}" if pd.notna(r.roc_auc) else ""
            ctrl = f"; shuffled-label control {r.shuffled_accuracy:.3f}" if r.shuffled_accuracy == r.shuffled_accuracy \
                else ""
            out.append(f"safety: {r.problem.replace('_', ' ')} separates best at layer {int(r.layer)} "
                       f"(CV accuracy {r.accuracy:.3f}{auc}{ctrl}).")
    eff = fetch(con, q.edit_effects_sql(run_id))
    key = {("toxicity", "toxicity"), ("refusal", "refusal_rate"), ("ppl", "perplexity"), ("kl", "kl")}
    eff = eff.loc[[(t, m) in key for t, m in zip(eff["task"], eff["metric"])]]
    abl = eff[eff["edit"].str.startswith("ablate[")]
    if not abl.empty:
        edit = abl["edit"].iloc[0]
        rows = abl[abl["edit"] == edit]
        parts = ", ".join(f"{r.metric.replace('_', ' ')} {r.before:.3g} -> {r.after:.3g}" for r in rows.itertuples())
        out.append(f"safety: {edit} changes {parts}.")
    return out
