"""The layer study page: similarity, angular distance, Block Influence, layer-removal curves."""

from __future__ import annotations

from functools import partial

import duckdb
import pandas as pd

from reports import charts
from reports.common import change_text, sweep_part
from reports.html import Note
from reports.panels import Panel, Part
from store.queries import fetch, has_rows
from store.queries import layers as q

DROP_TIPS = ["strategy", "n", "panel", "value", "stderr", "base_value", "seeds", "points"]
SINGLE_TIPS = ["layer", "panel", "value", "stderr", "base_value", "delta", "point"]


def parts(con: duckdb.DuckDBPyConnection, run_id: int) -> list[Part]:
    out = [_similarity(con, run_id)] if has_rows(con, "layer_similarity", run_id) else [
        Part("Layer similarity", (Note("This run stored no layer similarity.", kind="warn"),))]
    if has_rows(con, "layer_points", run_id):
        out.append(_removal(con, run_id))
    else:
        out.append(Part("Removing layers", (Note("No layer-dropping points in this run.", kind="warn"),)))
    out.append(sweep_part(run_id))
    return out


# What each position label of the layer-similarity table means (one heat map per label present).
POSITION_CAPTIONS = {
    "last": "last: the last token's residual vectors compared.",
    "mean": "mean: cosine of the token-averaged vectors (each state averaged over the prompt's tokens, then "
            "compared).",
    "tokens": "tokens: the mean over tokens of the per-token cosine (every token's states compared, then "
              "averaged).",
}


def _similarity(con: duckdb.DuckDBPyConnection, run_id: int) -> Part:
    k = q.similarity_bucket(con, run_id)
    size = min(560, 16 * (q.n_states(con, run_id) // k + 1) + 40)
    blocks: list[Panel | Note] = []
    for pos in q.positions(con, run_id, "layer_similarity"):
        blocks.append(Panel(f"Cosine similarity of the residual stream: {pos}", q.similarity_sql, (run_id, pos, k),
            partial(charts.heatmap,
                x="layer_a", y="layer_b", color="cosine", title=f"cosine ({pos})",
                x_title="state a (input of layer a)", y_title="state b", color_title="cosine",
                tooltip=["layer_a", "layer_b", "cosine", "angular", "cosine_se", "n_prompts"], size=size),
            caption=POSITION_CAPTIONS.get(pos, f"{pos}: a position label this report does not know.")
            + " State l is the residual stream entering layer l; the last state is the output of the last "
              "layer. Bright blocks along the diagonal are runs of layers that barely change the stream"
            + ("" if k == 1 else f" (states averaged in buckets of {k})") + "."))
    apos = q.position(con, run_id, "layer_angular")
    if apos:
        blocks.append(Panel("Angular distance by block size and start", q.angular_sql, (run_id, apos),
            lambda df: charts.heatmap(df, x="start_layer", y="n", color="distance", highlight="best",
                                      title="d(x_l, x_l+n) = arccos(cos)/pi", x_title="first layer of the block (l)",
                                      y_title="block size (n)", color_title="distance", scheme="viridis",
                                      tooltip=["n", "start_layer", "end_layer", "distance", "distance_se", "best",
                                               "n_prompts"], size=size),
            caption="Gromov et al.: for each n the ringed start l*(n) has the smallest distance between the "
                    "block's input and output: the block to drop."))
        blocks.append(Panel("The block to drop for each n", q.best_blocks_sql, (run_id, apos)))
    ipos = q.position(con, run_id, "layer_influence")
    if ipos:
        blocks.append(Panel("Block Influence per layer", q.influence_sql, (run_id, ipos),
            lambda df: charts.bars(df, x="layer", y="block_influence", title="1 - cos(input, output) per layer",
                                   x_title="layer", y_title="Block Influence", sort=None,
                                   tooltip=["layer", "block_influence", "block_influence_se", "n_prompts"],
                                   width=min(640, 18 * len(df) + 40)),
            caption="ShortGPT's one-layer special case: low influence marks a layer that barely changes the "
                    "stream."))
    return Part("Layer similarity", tuple(blocks))


def _removal(con: duckdb.DuckDBPyConnection, run_id: int) -> Part:
    blocks: list[Panel | Note] = []
    for ppl, label in ((True, "perplexity (log scale)"), (False, "other metrics")):
        blocks.append(Panel(f"Dropping one layer: {label}", q.single_drop_sql, (run_id, ppl),
            partial(charts.curves, x="layer", y="value", series=None, facet="panel",
                    baseline="base_value", band="stderr", log_y=ppl,
                    title="one layer skipped at a time", x_title="layer dropped",
                    y_title="value", tooltip=SINGLE_TIPS),
            caption="Each point skips one layer (its input passes straight to the next). Dashed: the full model.",
            empty=f"No single-layer drops with {label} in this run."))
    for ppl, label in ((True, "perplexity (log scale)"), (False, "other metrics")):
        blocks.append(Panel(f"Dropping blocks of layers: {label}", q.block_drop_sql, (run_id, ppl),
            partial(charts.curves, x="n", y="value", series="strategy", facet="panel",
                    baseline="base_value", band="stderr", log_y=ppl,
                    title="n layers dropped, per strategy", x_title="layers dropped (n)",
                    y_title="value", series_title="strategy", tooltip=DROP_TIPS),
            caption="angular: the block with the smallest angular distance; deepest: the last n layers before "
                    "the final one; shallowest: the first n; random: random contiguous blocks (mean over seeds). "
                    "Dashed: the full model.",
            empty=f"No block drops with {label} in this run."))
    blocks.append(Panel("Cheapest block of each size", q.cheapest_blocks_sql, (run_id,),
                                caption="The evaluated drop that raised perplexity least, per block size."))
    if has_rows(con, "layer_heal", run_id):
        blocks.append(Panel("LoRA healing", q.heal_sql, (run_id,),
            lambda df: charts.curves(df, x="step", y="loss", series="point", title="training loss while healing",
                                     x_title="step", y_title="loss", tooltip=["point", "step", "loss", "seconds"])))
    if has_rows(con, "layer_agreement", run_id):
        blocks.append(Panel("Do the cheap proxies predict the harm?", q.agreement_sql, (run_id,),
            caption="Spearman correlation of each similarity proxy with the real harm of dropping; agreement > 0 "
                    "means the proxy ranks the harm the right way round."))
    return Part("Removing layers", tuple(blocks))


def _gromov_block(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.Series | None:
    """The block Gromov's rule drops at the largest size up to a quarter of the layers (a row of
    best_blocks_sql), or None."""
    pos = q.position(con, run_id, "layer_angular") if has_rows(con, "layer_angular", run_id) else None
    if not pos:
        return None
    best = fetch(con, q.best_blocks_sql(run_id, pos))
    n_layers = q.run_n_layers(con, run_id)
    target = best[best["n"] <= max(1, n_layers // 4)]
    return None if target.empty else target.iloc[-1]


def _block_name(r: pd.Series) -> str:
    return f"layer {int(r.start_layer)}" if r.n == 1 else \
        f"the block of {int(r.n)} layers {int(r.start_layer)}-{int(r.end_layer)}"


def _cheapest(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.Series | None:
    """The most layers that go for at most +25% perplexity (a row of cheapest_blocks_sql), or None."""
    if not has_rows(con, "layer_points", run_id):
        return None
    cheap = fetch(con, q.cheapest_blocks_sql(run_id))
    ok = cheap[cheap["rel_increase"] <= 0.25]
    return None if ok.empty else ok.iloc[-1]


def headline(con: duckdb.DuckDBPyConnection, run_id: int) -> str | None:
    """The most similar block of layers and what dropping it cost (else the cheapest block to drop)."""
    r = _gromov_block(con, run_id)
    cost = fetch(con, q.block_cost_sql(run_id, int(r.start_layer), int(r.end_layer))) if r is not None and has_rows(
        con, "layer_points", run_id) else None
    if r is not None:
        text = (f"layers: {_block_name(r)} changes the residual stream least (angular distance "
                f"{r.distance:.3f} between its input and output)")
        if cost is not None and not cost.empty:
            c = cost.iloc[0]
            lo, hi = c.get("change_lo"), c.get("change_hi")
            if pd.notna(lo) and pd.notna(hi) and lo <= 0 <= hi:
                change = change_text("perplexity", c.base_perplexity, c.perplexity, lo, hi)
                return text + "; dropping it: " + change + "."
            ci = f", 95% CI of the change {lo:+.3g}..{hi:+.3g}" if pd.notna(lo) and pd.notna(hi) else ""
            return (text + f"; dropping it changes perplexity by {100 * c.rel_increase:+.1f}% "
                    f"({c.base_perplexity:.2f} -> {c.perplexity:.2f}{ci}).")
        return text + "."
    c = _cheapest(con, run_id)
    if c is not None:
        return (f"layers: the cheapest block to drop: {int(c.n)} layers ({c.layers}, {c.strategy} choice) for "
                f"{100 * c.rel_increase:+.1f}% perplexity ({c.base_perplexity:.2f} -> {c.perplexity:.2f}).")
    return None


def findings(con: duckdb.DuckDBPyConnection, run_id: int) -> list[str]:
    out = []
    r = _gromov_block(con, run_id)
    if r is not None:
        out.append(f"layers: {_block_name(r)} changes the residual stream least (angular distance {r.distance:.3f} "
                   "between its input and output): the first to drop by Gromov's rule.")
    c = _cheapest(con, run_id)
    if c is not None:
        out.append(f"layers: the most layers that go for at most +25% perplexity: dropping {int(c.n)} "
                   f"({c.layers}, {c.strategy} choice) changes it by {100 * c.rel_increase:+.1f}% "
                   f"({c.base_perplexity:.2f} -> {c.perplexity:.2f}).")
    return out
