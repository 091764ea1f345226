"""Residual-stream similarity between layers: cosine matrix, Gromov angular distance, ShortGPT
Block Influence.

The residual stream is read *un-normalised* everywhere (``STREAM``): state ``l`` for
l = 0..L-1 is the input of layer l (``blocks.l.hook_resid_pre``; state 0 is the embedding
output), and state ``L`` is the output of the last layer (``blocks.{L-1}.hook_resid_post``),
taken before the final norm. Dropping the block of layers l..l+n-1 joins state l directly
to state l+n, so Gromov's d(l, n) = arccos(cos(x_l, x_{l+n})) / pi compares exactly the
two states the drop makes adjacent; Block Influence of layer l is 1 - cos(x_l, x_{l+1}).

Positions (the ``position`` column), each a mean over prompts of a per-prompt value with its
standard error over prompts:
- ``last``: the last token of each prompt;
- ``mean``: the cosine of token-mean vectors: each state is averaged over the prompt's
  tokens (the capture's ``mean`` reduction) *before* the cosine is taken;
- ``tokens``: the per-token cosine (and per-token angular distance arccos(cos)/pi) between
  the two states at the same token, averaged over the prompt's tokens, then over prompts
  (every prompt weighs the same, whatever its length; ShortGPT pools all tokens instead,
  which weighs prompts by length: the two agree when prompts are of similar length).
Gromov's block rule and the ``layer_angular`` table stay at one vector per prompt (``last``,
which the block choice uses, and ``mean``), as in the paper; Block Influence is given at
every position, ``tokens`` being ShortGPT's own token-averaged definition.

``run`` streams the cache run one commit at a time (``store.layers.iter_state_parts``), so
its memory is bounded by the capture's flush size whatever the number of prompts or tokens.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from store import Store, StoreError
from store import layers as db
from store.activations import layer_stack

STREAM = "resid_unnormalised"
"""Label stored with every row: raw residual stream, never passed through a norm."""
POSITIONS = ("last", "mean", "tokens")
"""Every position the analysis computes (see the module docstring)."""
SOURCE = {"last": "last", "mean": "mean", "tokens": "all"}
"""Position -> the capture reduction it is computed from."""
ANGULAR_POSITIONS = ("last", "mean")
"""Positions with a layer_angular table (Gromov's rule: one vector per prompt)."""


def residual_states(con: duckdb.DuckDBPyConnection, store: Store, cache_run_id: int,
                    position: str = "last") -> tuple[list[str], np.ndarray]:
    """(prompt_ids, X) with X (L+1, prompt, d): the inputs of layers 0..L-1, then the final residual.

    Reads the whole run at once (for small runs and tests; ``run`` streams instead)."""
    pids, layers, pre = layer_stack(con, store, cache_run_id, "resid_pre", position)
    if layers != list(range(len(layers))):
        raise StoreError(f"cache run {cache_run_id} lacks resid_pre at some layers (has {layers}): "
                         "capture resid_pre at every layer")
    last = layers[-1]
    pids2, _, post = layer_stack(con, store, cache_run_id, "resid_post", position, layers=[last])
    if pids2 != pids:
        raise StoreError(f"cache run {cache_run_id} has different prompts for resid_pre and resid_post")
    return pids, np.concatenate([pre, post], axis=0)


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float64)
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("a residual-stream vector is all zeros: its cosine is undefined")
    return X / norms


def pairwise_cosines(X: np.ndarray) -> np.ndarray:
    """Per-prompt cosine between every pair of states: (S, S, P) float64 from X (S, P, d)."""
    U = _unit(X)
    C = np.einsum("apd,bpd->abp", U, U, optimize=True)
    return np.clip(C, -1.0, 1.0)


def token_cosines(X: np.ndarray) -> np.ndarray:
    """Per-token cosine between every pair of states of one prompt: (T, S, S) float64 from X (S, T, d).

    Each token's S states are normalised, then one batched product U_t U_t^T per token."""
    U = np.ascontiguousarray(_unit(X).transpose(1, 0, 2))  # (T, S, d): each token's states, BLAS-ready
    return np.clip(U @ U.transpose(0, 2, 1), -1.0, 1.0)


def token_means(prompt_ids: np.ndarray, X: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per prompt among rows of tokens: (sum over its tokens of the cosine (S, S), of the angular
    distance arccos(cos)/pi (S, S), its token count), from X (S, rows, d) and each row's prompt id."""
    uniq, codes = np.unique(np.asarray(prompt_ids, dtype=str), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniq) + 1))
    out = {}
    for g, pid in enumerate(uniq):
        K = token_cosines(X[:, order[bounds[g]:bounds[g + 1]]])
        out[str(pid)] = (K.sum(0), (np.arccos(K) / np.pi).sum(0), len(K))
    return out


def _mean_se(v: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    n = v.shape[axis]
    m = v.mean(axis=axis)
    se = v.std(axis=axis, ddof=1) / np.sqrt(n) if n > 1 else np.full_like(m, np.nan)
    return m, se


def similarity_frame(C: np.ndarray, position: str, A: np.ndarray | None = None) -> pd.DataFrame:
    """Long table over every pair of states: mean cosine and mean angular distance, from
    per-prompt cosines C (S, S, P) and per-prompt angular distances A (default arccos(C)/pi)."""
    S, _, P = C.shape
    cos_m, cos_se = _mean_se(C)
    ang_m, ang_se = _mean_se(np.arccos(C) / np.pi if A is None else A)
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
    """ShortGPT Block Influence of each layer: 1 - cos(input, output), mean over prompts (at
    ``tokens``, C holds each prompt's token-mean cosine: ShortGPT's token-averaged definition)."""
    S, _, P = C.shape
    layers = np.arange(S - 1)
    m, se = _mean_se(1.0 - C[layers, layers + 1])
    return pd.DataFrame({"position": position, "stream": STREAM, "layer": layers,
                         "block_influence": m, "block_influence_se": se, "n_prompts": P})


def _default_positions(stored: list[str]) -> tuple[str, ...]:
    return tuple(p for p in POSITIONS if SOURCE[p] in stored)


def prompt_cosines(con: duckdb.DuckDBPyConnection, store: Store, cache_run_id: int,
                   positions: tuple[str, ...]) -> dict[str, tuple[list[str], np.ndarray, np.ndarray | None]]:
    """position -> (prompt_ids, C, A): per-prompt cosines C (S, S, P) and, for ``tokens``, the
    per-prompt token-mean angular distances A (else None), prompts sorted by id, streamed part by part."""
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown:
        raise ValueError(f"unknown position '{unknown[0]}': use some of {', '.join(POSITIONS)}")
    stored = db.stored_reductions(con, cache_run_id)
    lacking = [p for p in positions if SOURCE[p] not in stored]
    if lacking:
        raise StoreError(f"cache run {cache_run_id} captured positions {','.join(stored)}; the '{lacking[0]}' "
                         f"similarity needs '{SOURCE[lacking[0]]}' vectors: capture with positions "
                         f"{','.join(dict.fromkeys(SOURCE[p] for p in positions))}")
    sites = db.state_sites(con, cache_run_id)
    vectors: dict[str, tuple[list, list]] = {p: ([], []) for p in positions if p != "tokens"}
    sums: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    reductions = list(dict.fromkeys(SOURCE[p] for p in positions))
    for part in db.iter_state_parts(con, store, cache_run_id, sites, reductions):
        for p, (ids, Cs) in vectors.items():
            pids, _, X = part[SOURCE[p]]
            ids += list(pids)
            Cs.append(pairwise_cosines(X))
        if "tokens" in positions:
            pids, _, X = part["all"]
            for pid, (c, a, n) in token_means(pids, X).items():
                if pid in sums:  # a prompt never spans two commits; summing keeps it right if one did
                    c0, a0, n0 = sums[pid]
                    c, a, n = c + c0, a + a0, n + n0
                sums[pid] = (c, a, n)
    out: dict[str, tuple[list[str], np.ndarray, np.ndarray | None]] = {}
    for p, (ids, Cs) in vectors.items():
        order = np.argsort(np.asarray(ids, dtype=str), kind="stable")
        out[p] = ([ids[i] for i in order], np.concatenate(Cs, axis=-1)[:, :, order], None)
    if "tokens" in positions:
        lengths = db.prompt_lengths(con, cache_run_id)
        short = [pid for pid, (_, _, n) in sums.items() if n != lengths.get(pid)]
        if short or len(sums) != len(lengths):
            raise StoreError(f"cache run {cache_run_id} does not hold every token of every prompt "
                             f"(e.g. {(short or sorted(set(lengths) - set(sums)))[:1]}): resume the cache run")
        ids = sorted(sums)
        C = np.stack([sums[pid][0] / sums[pid][2] for pid in ids], axis=-1)
        A = np.stack([sums[pid][1] / sums[pid][2] for pid in ids], axis=-1)
        out["tokens"] = (ids, C, A)
    return out


def run(con: duckdb.DuckDBPyConnection, store: Store, cache_run_id: int,
        positions: tuple[str, ...] | None = None) -> dict[str, pd.DataFrame]:
    """All three analyses for a cache run holding resid_pre (every layer) and resid_post (last layer).

    ``positions``: some of ``POSITIONS``; None: every position the run's captured reductions allow.
    ``angular`` rows exist only for ``ANGULAR_POSITIONS``."""
    if positions is None:
        positions = _default_positions(db.stored_reductions(con, cache_run_id))
        if not positions:
            raise StoreError(f"cache run {cache_run_id} captured none of the reductions last, mean, all")
    per = prompt_cosines(con, store, cache_run_id, tuple(positions))
    out: dict[str, list[pd.DataFrame]] = {"similarity": [], "angular": [], "influence": []}
    for position in positions:
        _, C, A = per[position]
        out["similarity"].append(similarity_frame(C, position, A))
        if position in ANGULAR_POSITIONS:
            out["angular"].append(angular_frame(C, position))
        out["influence"].append(influence_frame(C, position))
    return {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in out.items()}
