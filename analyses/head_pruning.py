"""Which heads to prune: orders of heads from stored importance scores (least important first),
a seeded random order as the baseline, and per-layer selections matched to a router's budget.

Pure functions over the ``heads_importance`` rows (store.heads.read_importance); no model.
"""

from __future__ import annotations

import random

import pandas as pd

PRUNE_SCORE = {"gradient": "abs_grad_layer_l2", "gradient_seq": "abs_grad_layer_l2", "zero": "delta_loss",
               "mean": "delta_loss"}
"""The score each importance method prunes by: Michel et al. prune by layer-normalised
gradient importance (per-token gates: gradient; per-sequence gates: gradient_seq); ablations
by the text-loss increase the head's ablation causes."""

Head = tuple[int, int]


def scores(importance: pd.DataFrame, method: str) -> pd.DataFrame:
    """(layer, head, value) of the score ``method`` prunes by."""
    if method not in PRUNE_SCORE:
        raise ValueError(f"unknown pruning method '{method}': use {', '.join(PRUNE_SCORE)} or random<seed>")
    df = importance[(importance["method"] == method) & (importance["metric"] == PRUNE_SCORE[method])]
    if df.empty:
        raise ValueError(f"no '{method}' importance stored for this run: compute it before pruning by it")
    return df[["layer", "head", "value"]].reset_index(drop=True)


def order(importance: pd.DataFrame, method: str) -> list[Head]:
    """Heads from least to most important (ties broken by layer, then head)."""
    df = scores(importance, method).sort_values(["value", "layer", "head"], kind="mergesort")
    return [(int(l), int(h)) for l, h in zip(df["layer"], df["head"])]


def random_order(n_layers: int, n_heads: int, seed: int) -> list[Head]:
    heads = [(l, h) for l in range(n_layers) for h in range(n_heads)]
    random.Random(seed).shuffle(heads)
    return heads


def least_important(ordered: list[Head], count: int) -> tuple[Head, ...]:
    if not 0 <= count <= len(ordered):
        raise ValueError(f"cannot prune {count} of {len(ordered)} heads")
    return tuple(sorted(ordered[:count]))


def per_layer(importance: pd.DataFrame, method: str, off_per_layer: int) -> tuple[Head, ...]:
    """The ``off_per_layer`` least important heads of every layer (a router's static twin)."""
    df = scores(importance, method).sort_values(["layer", "value", "head"], kind="mergesort")
    picked = df.groupby("layer", sort=True).head(off_per_layer)
    return tuple(sorted((int(l), int(h)) for l, h in zip(picked["layer"], picked["head"])))


def keep_count(frac: float, n_heads: int) -> int:
    """Heads a router keeps per layer for a kept fraction: nearest whole number, at least 1."""
    if not 0 < frac <= 1:
        raise ValueError(f"kept fraction must be in (0, 1], not {frac}")
    return max(1, int(frac * n_heads + 0.5))
