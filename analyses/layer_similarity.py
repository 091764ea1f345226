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

``run`` streams the cache run one commit at a time (``store.layers.iter_state_parts``) and
keeps only running moments per pair of states (``PairStats``: count, mean and sum of squared
deviations of the per-prompt cosine and angular distance; Block Influence is 1 - cosine, so
it needs nothing more). Memory bound: one commit's vectors (the capture's flush size) plus
O(S^2) floats for the moments, plus, at ``tokens``, the per-token cosines of the prompts whose
tokens a commit has not finished (none with the current writer, which never splits a prompt)
- flat in the number of prompts and tokens (``bench/scaling.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class Moments:
    """Running count, mean and sum of squared deviations of per-prompt values of one shape,
    merged a batch of prompts at a time (Chan, Golub and LeVeque's pairwise update: as exact
    as two passes, unlike a raw sum of squares)."""

    n: int = 0
    mean: np.ndarray | float = 0.0
    m2: np.ndarray | float = 0.0

    def update(self, values: np.ndarray) -> None:
        """Add prompts: ``values`` (..., P), the last axis over prompts."""
        k = values.shape[-1]
        if k == 0:
            return
        bmean = values.mean(axis=-1)
        bm2 = ((values - bmean[..., None]) ** 2).sum(axis=-1)
        total = self.n + k
        delta = bmean - self.mean
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + bm2 + delta ** 2 * (self.n * k / total)
        self.n = total

    def mean_se(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean over prompts and its standard error (sample sd / sqrt(n); NaN for one prompt)."""
        mean = np.asarray(self.mean, dtype=np.float64)
        if self.n < 2:
            return mean, np.full_like(mean, np.nan)
        return mean, np.sqrt(np.asarray(self.m2) / (self.n - 1) / self.n)


@dataclass
class PairStats:
    """Moments of the per-prompt cosine and angular distance for every pair of states (S, S)."""

    cos: Moments = field(default_factory=Moments)
    ang: Moments = field(default_factory=Moments)

    def update(self, C: np.ndarray, A: np.ndarray | None = None) -> None:
        """Add prompts' cosines C (S, S, P) and angular distances A (default arccos(C)/pi)."""
        self.cos.update(C)
        self.ang.update(np.arccos(C) / np.pi if A is None else A)

    @classmethod
    def of(cls, C: np.ndarray, A: np.ndarray | None = None) -> PairStats:
        stats = cls()
        stats.update(C, A)
        return stats

    @property
    def n_states(self) -> int:
        return int(np.shape(self.cos.mean)[0])


def _stats(C: np.ndarray | PairStats, A: np.ndarray | None = None) -> PairStats:
    return C if isinstance(C, PairStats) else PairStats.of(C, A)


def similarity_frame(C: np.ndarray | PairStats, position: str, A: np.ndarray | None = None) -> pd.DataFrame:
    """Long table over every pair of states: mean cosine and mean angular distance, from
    running ``PairStats`` or from per-prompt cosines C (S, S, P) and angular distances A
    (default arccos(C)/pi)."""
    st = _stats(C, A)
    S = st.n_states
    cos_m, cos_se = st.cos.mean_se()
    ang_m, ang_se = st.ang.mean_se()
    a, b = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    return pd.DataFrame({
        "position": position, "stream": STREAM, "layer_a": a.ravel(), "layer_b": b.ravel(),
        "cosine": cos_m.ravel(), "cosine_se": cos_se.ravel(),
        "angular": ang_m.ravel(), "angular_se": ang_se.ravel(), "n_prompts": st.cos.n,
    })


def angular_frame(C: np.ndarray | PairStats, position: str) -> pd.DataFrame:
    """d(l, n) for every block size n = 1..L and start l = 0..L-n, with the best start per n
    (the mean over prompts of arccos(cos(x_l, x_{l+n})) / pi)."""
    st = _stats(C)
    L = st.n_states - 1
    ang_m, ang_se = st.ang.mean_se()
    rows = []
    for n in range(1, L + 1):
        starts = np.arange(0, L - n + 1)
        m, se = ang_m[starts, starts + n], ang_se[starts, starts + n]
        best = int(np.argmin(m))
        rows.append(pd.DataFrame({
            "position": position, "stream": STREAM, "n": n, "start_layer": starts,
            "end_layer": starts + n - 1, "distance": m, "distance_se": se,
            "best": starts == starts[best], "n_prompts": st.ang.n,
        }))
    return pd.concat(rows, ignore_index=True)


def influence_frame(C: np.ndarray | PairStats, position: str) -> pd.DataFrame:
    """ShortGPT Block Influence of each layer: 1 - cos(input, output), mean over prompts (at
    ``tokens``, each prompt contributes its token-mean cosine: ShortGPT's token-averaged
    definition). Its standard error is the cosine's."""
    st = _stats(C)
    layers = np.arange(st.n_states - 1)
    cos_m, cos_se = st.cos.mean_se()
    return pd.DataFrame({"position": position, "stream": STREAM, "layer": layers,
                         "block_influence": 1.0 - cos_m[layers, layers + 1],
                         "block_influence_se": cos_se[layers, layers + 1], "n_prompts": st.cos.n})


def _default_positions(stored: list[str]) -> tuple[str, ...]:
    return tuple(p for p in POSITIONS if SOURCE[p] in stored)


def _check_positions(con: duckdb.DuckDBPyConnection, cache_run_id: int, positions: tuple[str, ...]) -> None:
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown:
        raise ValueError(f"unknown position '{unknown[0]}': use some of {', '.join(POSITIONS)}")
    stored = db.stored_reductions(con, cache_run_id)
    lacking = [p for p in positions if SOURCE[p] not in stored]
    if lacking:
        raise StoreError(f"cache run {cache_run_id} captured positions {','.join(stored)}; the '{lacking[0]}' "
                         f"similarity needs '{SOURCE[lacking[0]]}' vectors: capture with positions "
                         f"{','.join(dict.fromkeys(SOURCE[p] for p in positions))}")


def pair_stats(con: duckdb.DuckDBPyConnection, store: Store, cache_run_id: int,
               positions: tuple[str, ...]) -> dict[str, PairStats]:
    """position -> running moments over the run's prompts, streamed one commit at a time.

    At ``tokens`` a prompt's token-mean cosine and angular distance join the moments once all
    of its tokens (``prompt_lengths``) have been read, so a prompt split across commits would
    still count once, whole; the sums of unfinished prompts are the only per-prompt state."""
    _check_positions(con, cache_run_id, positions)
    sites = db.state_sites(con, cache_run_id)
    stats = {p: PairStats() for p in positions}
    lengths = db.prompt_lengths(con, cache_run_id) if "tokens" in positions else {}
    open_sums: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    done: set[str] = set()
    reductions = list(dict.fromkeys(SOURCE[p] for p in positions))
    for part in db.iter_state_parts(con, store, cache_run_id, sites, reductions):
        for p in positions:
            if p != "tokens":
                stats[p].update(pairwise_cosines(part[SOURCE[p]][2]))
        if "tokens" not in positions:
            continue
        pids, _, X = part["all"]
        finished_c, finished_a = [], []
        for pid, (c, a, n) in token_means(pids, X).items():
            if pid in open_sums:
                c0, a0, n0 = open_sums.pop(pid)
                c, a, n = c + c0, a + a0, n + n0
            if n == lengths.get(pid):
                finished_c.append(c / n)
                finished_a.append(a / n)
                done.add(pid)
            else:
                open_sums[pid] = (c, a, n)
        if finished_c:
            stats["tokens"].update(np.stack(finished_c, axis=-1), np.stack(finished_a, axis=-1))
    if "tokens" in positions and (open_sums or len(done) != len(lengths)):
        missing = sorted(open_sums) or sorted(set(lengths) - done)
        raise StoreError(f"cache run {cache_run_id} does not hold every token of every prompt "
                         f"(e.g. {missing[:1]}): resume the cache run")
    return stats


def run(con: duckdb.DuckDBPyConnection, store: Store, cache_run_id: int,
        positions: tuple[str, ...] | None = None) -> dict[str, pd.DataFrame]:
    """All three analyses for a cache run holding resid_pre (every layer) and resid_post (last layer).

    ``positions``: some of ``POSITIONS``; None: every position the run's captured reductions allow.
    ``angular`` rows exist only for ``ANGULAR_POSITIONS``."""
    if positions is None:
        positions = _default_positions(db.stored_reductions(con, cache_run_id))
        if not positions:
            raise StoreError(f"cache run {cache_run_id} captured none of the reductions last, mean, all")
    per = pair_stats(con, store, cache_run_id, tuple(positions))
    out: dict[str, list[pd.DataFrame]] = {"similarity": [], "angular": [], "influence": []}
    for position in positions:
        st = per[position]
        out["similarity"].append(similarity_frame(st, position))
        if position in ANGULAR_POSITIONS:
            out["angular"].append(angular_frame(st, position))
        out["influence"].append(influence_frame(st, position))
    return {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in out.items()}
