"""Residual-stream similarity between layers: cosine matrix, Gromov angular distance, ShortGPT
Block Influence.

The residual stream is read *un-normalised* everywhere (``STREAM``): state ``l`` for
l = 0..L-1 is the input of layer l (``blocks.l.hook_resid_pre``; state 0 is the embedding
output), and state ``L`` is the output of the last layer (``blocks.{L-1}.hook_resid_post``),
taken before the final norm. Dropping the block of layers l..l+n-1 joins state l directly
to state l+n, so Gromov's d(l, n) = arccos(cos(x_l, x_{l+n})) / pi compares exactly the
two states the drop makes adjacent; Block Influence of layer l is 1 - cos(x_l, x_{l+1}).

Positions: ``last`` is the last token of each prompt; ``mean`` is the residual vector
averaged over the prompt's tokens (the capture's ``mean`` reduction) *before* the cosine
is taken. Every statistic is a mean over prompts of a per-prompt value, with its standard
error over prompts.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from store import Store, StoreError
from store.activations import layer_stack

STREAM = "resid_unnormalised"
"""Label stored with every row: raw residual stream, never passed through a norm."""
POSITIONS = ("last", "mean")


def residual_states(con: duckdb.DuckDBPyConnection, store: Store, cache_run_id: int,
                    position: str = "last") -> tuple[list[str], np.ndarray]:
    """(prompt_ids, X) with X (L+1, prompt, d): the inputs of layers 0..L-1, then the final residual."""
    pids, layers, pre = layer_stack(con, store, cache_run_id, "resid_pre", position)
    if layers != list(range(len(layers))):
        raise StoreError(f"cache run {cache_run_id} lacks resid_pre at some layers (has {layers}): "
                         "capture resid_pre at every layer")
    last = layers[-1]
    pids2, _, post = layer_stack(con, store, cache_run_id, "resid_post", position, layers=[last])
    if pids2 != pids:
        raise StoreError(f"cache run {cache_run_id} has different prompts for resid_pre and resid_post")
    return pids, np.concatenate([pre, post], axis=0)


def pairwise_cosines(X: np.ndarray) -> np.ndarray:
    """Per-prompt cosine between every pair of states: (S, S, P) float64 from X (S, P, d)."""
    X = np.asarray(X, np.float64)
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("a residual-stream vector is all zeros: its cosine is undefined")
    U = X / norms
    C = np.einsum("apd,bpd->abp", U, U, optimize=True)
    return np.clip(C, -1.0, 1.0)


def _mean_se(v: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    n = v.shape[axis]
    m = v.mean(axis=axis)
    se = v.std(axis=axis, ddof=1) / np.sqrt(n) if n > 1 else np.full_like(m, np.nan)
    return m, se


def similarity_frame(C: np.ndarray, position: str) -> pd.DataFrame:
    """Long table over every pair of states: mean cosine and mean angular distance."""
    S, _, P = C.shape
    cos_m, cos_se = _mean_se(C)
    ang_m, ang_se = _mean_se(np.arccos(C) / np.pi)
    a, b = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    return pd.DataFrame({
        "position": position, "stream": STREAM, "layer_a": a.ravel(), "layer_b": b.ravel(),
        "cosine": cos_m.ravel(), "cosine_se": cos_se.ravel(),
        "angular": ang_m.ravel(), "angular_se": ang_se.ravel(), "n_prompts": P,
    })


def angular_frame(C: np.ndarray, position: str) -> pd.DataFrame:
    """d(l, n) for every block size n = 1..L and start l = 0..L-n, with the best start per n."""
    S, _, P = C.shape
    L = S - 1
    rows = []
    for n in range(1, L + 1):
        starts = np.arange(0, L - n + 1)
        per_prompt = np.arccos(C[starts, starts + n]) / np.pi  # (starts, P)
        m, se = _mean_se(per_prompt)
        best = int(np.argmin(m))
        rows.append(pd.DataFrame({
            "position": position, "stream": STREAM, "n": n, "start_layer": starts,
            "end_layer": starts + n - 1, "distance": m, "distance_se": se,
            "best": starts == starts[best], "n_prompts": P,
        }))
    return pd.concat(rows, ignore_index=True)


def influence_frame(C: np.ndarray, position: str) -> pd.DataFrame:
    """ShortGPT Block Influence of each layer: 1 - cos(input, output), mean over prompts."""
    S, _, P = C.shape
    layers = np.arange(S - 1)
    m, se = _mean_se(1.0 - C[layers, layers + 1])
    return pd.DataFrame({"position": position, "stream": STREAM, "layer": layers,
                         "block_influence": m, "block_influence_se": se, "n_prompts": P})


def run(con: duckdb.DuckDBPyConnection, store: Store, cache_run_id: int,
        positions: tuple[str, ...] = POSITIONS) -> dict[str, pd.DataFrame]:
    """All three analyses for a cache run holding resid_pre (every layer) and resid_post (last layer)."""
    out: dict[str, list[pd.DataFrame]] = {"similarity": [], "angular": [], "influence": []}
    for position in positions:
        _, X = residual_states(con, store, cache_run_id, position)
        C = pairwise_cosines(X)
        out["similarity"].append(similarity_frame(C, position))
        out["angular"].append(angular_frame(C, position))
        out["influence"].append(influence_frame(C, position))
    return {k: pd.concat(v, ignore_index=True) for k, v in out.items()}
