"""The safety page: probes by layer with controls, directions, selection, edits before and after."""

from __future__ import annotations

from functools import partial

import duckdb
import pandas as pd

from reports import charts
from reports.common import change_text, sweep_part
from reports.html import Note
from reports.panels import Panel, Part
from store.queries import fetch, has_rows
from store.queries import safety as q

EDIT_TIPS = ["edit", "kind", "alpha", "panel", "value", "stderr", "n", "base_value", "delta", "lo", "hi", "p",
             "verdict"]
PROBE_CAPTION = ("cv: the closed-form ridge probe, cross-validated; the grey band runs from the mean to the 95th "
                 "percentile of its permutation null (the same probe on labels permuted afresh for every cell): a "
                 "score above the band has p < 0.05 at that cell. length: the same probe on prompt length alone "
                 "(a shortcut). cv_logistic: logistic regression, the second probe (error bars: std over folds). "
                 "held_out / within / cross: fitted on the train split (or one source), scored on prompts or a "
                 "source it never saw.")
POSITIONS = {"last": "last token", "mean": "mean over tokens"}
METRIC_ORDER = {"toxicity": 0, "refusal_rate": 1, "perplexity": 2, "kl": 3}
"""Order of the metrics in a finding: the safety effect first, then its cost."""


def parts(con: duckdb.DuckDBPyConnection, run_id: int) -> list[Part]:
    out = [_probes(con, run_id)]
    if has_rows(con, "safety_layers", run_id):
        out.append(Part("Directions", (Panel("Direction metrics by layer", q.direction_layers_sql, (run_id,),
            lambda df: charts.curves(df, x="layer", y="value", series="direction", facet="metric",
                                     title="per-layer direction metrics", x_title="layer", y_title="value",
                                     series_title="direction", tooltip=["direction", "metric", "layer", "value"]),
            caption="cosine_dm_probe: cosine between the class-mean difference and the probe weights; "
                    "projection_d / projection_auc: how well the direction separates held-out prompts."),)))
    if has_rows(con, "safety_candidates", run_id):
        out.append(Part("Choosing the direction to edit", (
            Panel("Candidate directions", q.candidates_sql, (run_id,),
                          lambda df: charts.curves(df, x="layer", y="value", series="direction", facet="criterion",
                                                   title="selection criteria per candidate layer",
                                                   x_title="layer of the direction", y_title="value",
                                                   series_title="direction",
                                                   tooltip=["direction", "criterion", "layer", "value"]),
                          caption="Each candidate is ablated everywhere on held-out prompts: refusal_drop is what "
                                  "the edit removes, kl what it costs on neutral prompts."),
            Panel("What each criterion picks", q.selection_sql, (run_id,)))))
    out.append(_edits(con, run_id))
    out.append(sweep_part(run_id))
    return out


def _probes(con: duckdb.DuckDBPyConnection, run_id: int) -> Part:
    title = "Where the concepts are represented"
    if not has_rows(con, "safety_probes", run_id):
        return Part(title, (Note("This run stored no probes.", kind="warn"),))
    blocks: list[Panel | Note] = []
    for hook, pos in q.probe_sites(con, run_id):
        k = q.probes_bucket(con, run_id, hook, pos)
        where = f"{hook}, {POSITIONS.get(pos, pos)}"
        blocks.append(Panel(f"Linear probes by layer: {where}", q.probes_sql, (run_id, hook, pos, k),
            partial(charts.curves,
                x="layer", y="mean", series="setting", facet="panel", band="std",
                area=("null_band_lo", "null_band_hi"),
                title=f"probe score per layer ({where})", x_title="layer", y_title="score", series_title="setting",
                tooltip=["problem", "metric", "setting", "layer", "mean", "std", "n", "folds", "lo", "hi",
                         "null_mean", "null_p95", "p", "permutations"]),
            caption=PROBE_CAPTION + ("" if k == 1 else f" Layers averaged in buckets of {k}.")))
    if has_rows(con, "safety_best_layers", run_id):
        blocks.append(Panel("The best layer against its controls", q.controls_sql, (run_id,),
            lambda df: charts.bars(df, x="problem", y="value", color="score", facet="panel", title=(
                "scores of the probe at each problem's best layer"), x_title="problem", y_title="score",
                color_title="score", sort=None, width=max(160, 60 * df["problem"].nunique()),
                tooltip=["problem", "site", "layer", "metric", "score", "value", "margin_over_shuffled"]),
            caption="The study picks each problem's best layer by cross-validated ROC-AUC on the train split. A "
                    "real signal stands above the permutation null's 95th percentile and above the length-only "
                    "baseline; the held-out bar is the score on prompts the choice never saw; the cross-source bars "
                    "(harmful vs neutral: trained on one harmful source, tested on the other) show whether it "
                    "generalises beyond one dataset."))
        blocks.append(Panel("Best layer per problem", q.best_layers_sql, (run_id,),
            caption="Chosen among layers_compared layers on cross-validated train-split scores. shuffled_* = the "
                    "permutation null's mean at that cell, margin_* = CV minus it, p_roc_auc = the cell's permutation "
                    "p-value (not corrected for the choice: quote the held-out score and its 95% interval, _lo.._hi); "
                    "length_*: the length-only baseline; cross_source_*: mean over the two train-on-one-source, "
                    "test-on-the-other directions (probe, and the difference-of-means classifier: _dm)."))
    else:
        blocks.append(Note("This run stored no best-layer table (safety_best_layers).", kind="warn"))
    if q.has_group_control(con, run_id):
        blocks += _group_control(con, run_id)
    return Part(title, tuple(blocks))


GROUP_CAPTION = ("Stereotype pairs come in two kinds. In most, the neutral counterpart swaps the social group out "
                 "('women are worse at maths' -> 'some people are worse at maths'): a probe can tell them apart by "
                 "whether any group is mentioned. In the others it keeps the group ('women are too emotional to "
                 "lead' -> 'women are too rarely chosen to lead'): only the stereotype itself separates them. "
                 "held_out: the probe (fitted on all train pairs) on all test pairs; held_out:group_kept and "
                 "held_out:group_swapped: the same probe on each kind. Near-chance group_kept scores mean the probe "
                 "mostly detects a group mention.")


def _group_control(con: duckdb.DuckDBPyConnection, run_id: int) -> list:
    blocks = [Panel("Stereotype probe: pairs that keep the group vs pairs that swap it out", q.group_control_sql, (run_id,),
        lambda df: charts.curves(df, x="layer", y="mean", series="setting", facet="panel",
                                 title="biased vs counterpart, held-out score per layer by kind of pair",
                                 x_title="layer", y_title="score", series_title="setting",
                                 tooltip=["hook", "position", "metric", "setting", "layer", "mean", "n"]),
        caption=GROUP_CAPTION)]
    if has_rows(con, "safety_best_layers", run_id):
        blocks.append(Panel("Stereotype probe at its best layer, by kind of pair", q.group_control_best_sql, (run_id,),
            caption="group_kept_* / group_swapped_*: held-out scores on the test pairs whose counterpart keeps / "
                    "swaps out the group (n: prompts scored; NaN where too few test pairs of that kind)."))
    return blocks


def _edits(con: duckdb.DuckDBPyConnection, run_id: int) -> Part:
    blocks: list[Panel | Note] = []
    if has_rows(con, "safety_bands", run_id):
        blocks.append(Panel("Each edit beside what random edits do", q.edits_vs_band_sql, (run_id,),
            lambda df: charts.edits_vs_band(df, title="edits (with their paired 95% interval) and random-edit bands"),
            caption="Circles: each edit's value with the 95% interval of its paired difference from the base model "
                    "(hollow grey: within the noise, the interval includes no change). Shaded bars: where one more "
                    "random edit of that kind would land (95% prediction band over the random edits, whose values "
                    "are the ticks): random unit directions ablated, random directions removing as much variance as "
                    "the harmful one, random directions added at the same |alpha| and norm. Dashed: unedited."))
    blocks.append(Panel("Toxicity, refusal and capability before and after each edit", q.edits_sql, (run_id,),
        lambda df: charts.bars(df, x="edit", y="value", color="kind", grouped=False, facet="panel",
                               baseline="base_value", title="each edit against the unedited model", x_title="edit",
                               y_title="value", sort=None, tooltip=EDIT_TIPS, width=max(200, 26 * df["edit"].nunique())),
        caption="ablate: remove the direction from the residual stream at every layer; orth: the same edit made "
                "permanent in the weights; actadd: add alpha times the direction at one layer. Dashed: unedited.",
        empty="No edits were evaluated in this run."))
    blocks.append(Panel("Activation addition: sweeping alpha", q.alpha_sql, (run_id,),
        lambda df: charts.curves(df, x="alpha", y="value", series=None, facet="panel", baseline="base_value",
                                 band="stderr", title="metric vs alpha", x_title="alpha (x the class-mean gap)",
                                 y_title="value", tooltip=EDIT_TIPS),
        caption="alpha < 0 subtracts the harmful direction; alpha = 1 adds the full class-mean difference.",
        say_empty=False))
    blocks.append(Panel("Before and after, edit by edit", q.edit_effects_sql, (run_id,),
        caption="change_lo..change_hi: the paired 95% interval of the change (same items before and after), p its "
                "two-sided p-value; verdict 'no detectable change at this budget' when the interval includes 0. "
                "band_lo..band_hi: where a random edit of the same kind lands (random_band); beyond_random: the "
                "edit is outside it."))
    return Part("Edits", tuple(blocks))


def _best_text(r: pd.Series) -> str:
    """The best layer with its held-out score, interval, permutation p-value and length baseline."""
    held = (f"held-out ROC-AUC {_num(r.held_out_roc_auc)} (95% CI {_num(r.held_out_roc_auc_lo)}.."
            f"{_num(r.held_out_roc_auc_hi)})" if pd.notna(r.get("held_out_roc_auc_lo")) else
            f"held-out ROC-AUC {_num(r.held_out_roc_auc)}")
    text = (f"{r.problem.replace('_', ' ')} is best separated at layer {int(r.layer)} ({r.hook}, "
            f"{POSITIONS.get(r.position, r.position)}; chosen on train-split cross-validation"
            + (f" among {int(r.layers_compared)} layers" if pd.notna(r.get("layers_compared")) else "") + f"): {held}")
    if pd.notna(r.get("p_roc_auc")):
        text += (f", CV ROC-AUC {_num(r.cv_roc_auc)} vs permutation null {_num(r.shuffled_roc_auc)} "
                 f"(95th percentile {_num(r.null_p95_roc_auc)}, p = {r.p_roc_auc:.3g} at that cell)")
    else:  # runs stored before the permutation null: the old shuffled-label control
        text += f", CV ROC-AUC {_num(r.cv_roc_auc)}, {_signed(r.margin_roc_auc)} over the shuffled-label control"
    if pd.notna(r.get("length_roc_auc")):
        text += f"; length alone scores {_num(r.length_roc_auc)}"
    if pd.notna(r.get("cross_source_roc_auc")):
        text += f"; cross-source {r.cross_source_roc_auc:.3f}"
    return text


def _effect_text(rows: pd.DataFrame) -> str:
    """Each metric's change (rows of ablation_effects_sql), with its interval and the random band."""
    parts = []
    for r in rows.itertuples():
        text = change_text(r.metric.replace("_", " "), r.before, r.after, r.change_lo, r.change_hi)
        if r.n_bands:
            inside = list(r.inside)
            text += ("; inside the random-edit band" + ("s" if len(inside) > 1 else "") if inside else
                     "; beyond every random-edit band")
        parts.append(text)
    return ", ".join(parts)


def headline(con: duckdb.DuckDBPyConnection, run_id: int) -> str | None:
    """The best probe layer with its held-out score and permutation test, and what ablating the harmful
    direction does to toxicity and refusal, each change with its interval."""
    parts = []
    best = fetch(con, q.headline_best_sql(run_id)) if has_rows(con, "safety_best_layers", run_id) else None
    if best is not None and not best.empty:
        parts.append(_best_text(best.iloc[0]))
    edit, rows = _ablation(con, run_id, {("toxicity", "toxicity"), ("refusal", "refusal_rate")})
    if edit:
        parts.append(f"ablating the {edit.split('[')[1].split('@')[0]} direction ({edit}) moves {_effect_text(rows)}")
    return ("safety: " + "; ".join(parts) + ".") if parts else None


def findings(con: duckdb.DuckDBPyConnection, run_id: int) -> list[str]:
    """More than the headline: every problem's best layer, and the ablation's capability cost."""
    out = []
    if has_rows(con, "safety_best_layers", run_id):
        best = fetch(con, q.best_layers_sql(run_id))
        for r in best.drop_duplicates("problem").itertuples():
            held = (f" (95% CI {_num(r.held_out_accuracy_lo)}..{_num(r.held_out_accuracy_hi)})"
                    if pd.notna(r.held_out_accuracy_lo) else "")
            out.append(f"safety: {r.problem.replace('_', ' ')}: best layer {int(r.layer)} ({r.hook}, "
                       f"{POSITIONS.get(r.position, r.position)}), CV accuracy {_num(r.cv_accuracy)} vs "
                       f"{_num(r.shuffled_accuracy)} with permuted labels; held-out accuracy "
                       f"{_num(r.held_out_accuracy)}{held}.")
        if q.has_group_control(con, run_id):
            line = _group_finding(fetch(con, q.group_control_best_sql(run_id)))
            if line:
                out.append(line)
    key = {("toxicity", "toxicity"), ("refusal", "refusal_rate"), ("ppl", "perplexity"), ("kl", "kl")}
    edit, rows = _ablation(con, run_id, key)
    if edit:
        out.append(f"safety: {edit} changes {_effect_text(rows)}.")
    return out


def _group_finding(best: pd.DataFrame) -> str | None:
    """The stereotype probe at its best site: accuracy on group-kept pairs next to group-swapped ones, and
    what that says. Chance band: 0.5 +/- 2 binomial standard errors of the group-kept sample."""
    if best.empty:
        return None
    r = best.iloc[0]
    where = f"layer {int(r.layer)} ({r.hook}, {POSITIONS.get(r.position, r.position)})"
    kept, swapped = r.group_kept_accuracy, r.group_swapped_accuracy
    n_kept, n_swapped = (int(n) if pd.notna(n) else 0 for n in (r.group_kept_n, r.group_swapped_n))
    if pd.isna(kept) or pd.isna(swapped) or not n_kept or not n_swapped:
        return (f"safety: biased vs counterpart at its best {where}: too few test pairs to score the group-mention "
                f"control (group kept: {n_kept} prompts, group swapped: {n_swapped}); its held-out score cannot "
                "be told apart from detecting a group mention.")
    band, band_swapped = (2 * (0.25 / n) ** 0.5 for n in (n_kept, n_swapped))
    se_diff = (kept * (1 - kept) / n_kept + swapped * (1 - swapped) / n_swapped) ** 0.5
    if kept <= 0.5 + band and swapped <= 0.5 + band_swapped:
        verdict = "neither is above chance: the probe does not separate the pairs"
    elif kept <= 0.5 + band:
        verdict = (f"the first is within chance (0.5 +/- {band:.2f}): the probe mostly detects whether a social "
                   "group is mentioned, not the stereotype")
    elif swapped - kept > 2 * se_diff:
        verdict = "the first is clearly lower: part of what the probe reads is whether a group is mentioned"
    else:
        verdict = "the two are close: the probe reads the stereotype, not only a group mention"
    return (f"safety: biased vs counterpart at its best {where}: held-out accuracy {_num(kept)} on pairs whose "
            f"counterpart keeps the social group (n={n_kept}) vs {_num(swapped)} on pairs that swap it out "
            f"(n={n_swapped}); {verdict}.")


def _ablation(con: duckdb.DuckDBPyConnection, run_id: int, key: set[tuple[str, str]]
             ) -> tuple[str, pd.DataFrame] | tuple[None, None]:
    """(label, per-metric rows) of the directional ablation of the harmful direction (else any ablation)."""
    metrics = tuple(sorted(key, key=lambda tm: (METRIC_ORDER.get(tm[1], len(METRIC_ORDER)), tm[0])))
    rows = fetch(con, q.ablation_effects_sql(run_id, metrics))
    return (None, None) if rows.empty else (rows["edit"].iloc[0], rows)


def _num(x: float | None) -> str:
    return f"{x:.3f}" if pd.notna(x) else "n/a"


def _signed(x: float | None) -> str:
    return f"{x:+.3f}" if pd.notna(x) else "n/a"
