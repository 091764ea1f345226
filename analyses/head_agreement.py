"""Do the head-importance scores agree? Rank correlation between every pair of scores over the
heads both cover, and the overlap of their most important heads; plus each score's top heads.

Pure functions over ``heads_importance`` rows (store.heads.read_importance); no model.
"""

from __future__ import annotations

import itertools
import math

import pandas as pd
from scipy import stats

SCORES = (
    ("gradient", "abs_grad"),
    ("gradient_seq", "abs_grad"),
    ("zero", "delta_loss"),
    ("mean", "delta_loss"),
    ("zero", "delta_task_nll"),
    ("mean", "delta_task_nll"),
)
"""(method, metric) pairs compared: higher = more important for all of them. gradient is the
per-token gradient importance, gradient_seq the per-sequence one (when computed). (Layer-normalised
gradient scores are left out: normalising per layer is meant for pruning, not for ranking.)"""


def wide(importance: pd.DataFrame) -> pd.DataFrame:
    """One column per available score ('method:metric'), one row per (layer, head)."""
    df = importance.assign(score=importance["method"] + ":" + importance["metric"])
    wanted = [f"{m}:{k}" for m, k in SCORES]
    df = df[df["score"].isin(wanted)]
    table = df.pivot_table(index=["layer", "head"], columns="score", values="value")
    return table[[c for c in wanted if c in table.columns]]


def agreement(importance: pd.DataFrame, top_frac: float = 0.1) -> pd.DataFrame:
    """Spearman and Kendall correlation and top-``top_frac`` overlap for every pair of scores."""
    table = wide(importance)
    rows = []
    for a, b in itertools.combinations(table.columns, 2):
        pair = table[[a, b]].dropna()
        n = len(pair)
        top_n = max(1, math.ceil(top_frac * n)) if n else 0
        if n < 3:
            rho = tau = overlap = float("nan")
        else:
            rho = float(stats.spearmanr(pair[a], pair[b]).statistic)
            tau = float(stats.kendalltau(pair[a], pair[b]).statistic)
            top_a = set(pair[a].nlargest(top_n).index)
            top_b = set(pair[b].nlargest(top_n).index)
            overlap = len(top_a & top_b) / top_n
        rows.append({"score_a": a, "score_b": b, "spearman": rho, "kendall": tau, "top_n": top_n,
                     "top_overlap": overlap})
    return pd.DataFrame(rows, columns=["score_a", "score_b", "spearman", "kendall", "top_n", "top_overlap"])


def top_heads(importance: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The ``n`` most important heads by every score, long form: score, rank, layer, head, value."""
    table = wide(importance)
    parts = []
    for score in table.columns:
        best = table[score].dropna().nlargest(n)
        parts.append(pd.DataFrame({
            "score": score, "rank": range(1, len(best) + 1),
            "layer": [i[0] for i in best.index], "head": [i[1] for i in best.index], "value": best.values,
        }))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["score", "rank", "layer", "head", "value"])


def layer_profile(importance: pd.DataFrame) -> pd.DataFrame:
    """Per layer and score: the share of the total (positive) importance the layer holds; NaN for a
    score with no positive value anywhere."""
    table = wide(importance).clip(lower=0)
    by_layer = table.groupby(level="layer").sum()
    share = by_layer / by_layer.sum()
    return share.reset_index().melt(id_vars="layer", var_name="score", value_name="share")
