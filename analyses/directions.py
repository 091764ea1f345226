"""Concept directions per layer and the choice of which one to edit with.

- Difference of class means (positive minus negative, e.g. harmful minus neutral) on the
  balanced train split, accumulated in float64 by a streaming ``MeanFitter``, unit-normalised
  (its length is kept as ``norm``: the natural unit for activation addition).
- The logistic-probe weight vector, mapped back from standardised to activation coordinates,
  unit-normalised, and its cosine with the difference of means per layer.
- Held-out separability of the direction itself: Cohen's d and ROC-AUC of the projection
  onto the unit difference of means, on the balanced test split.
- ``select``: the documented rule combining probe separability, ablation effect and KL cost.
No model is imported: ablation effects and KL costs are measured by the study and passed in.

Memory bound: one (hook, layer, position) at a time (``safety_data.iter_layers``), so flat in the
number of layers, and linear in the prompts P of that layer: its vectors (P x d float32) and the
logistic probe's standardised float64 copy (P x d); the difference of means itself is streamed
(``MeanFitter``: 2 x d float64 whatever P), and the variance-matched baseline adds one d x d
second moment (``bench/scaling.py`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from analyses.probes import ProbeCfg, make_probe
from analyses.safety_data import CONCEPTS, SafetyDataError, balanced, iter_layers, xy

if TYPE_CHECKING:
    from store.db import Store

DIRECTION_COLUMNS = ["concept", "hook", "layer", "position", "kind", "norm", "n_pos", "n_neg", "vec"]
METRIC_COLUMNS = ["concept", "hook", "layer", "position", "metric", "value"]


class MeanFitter:
    """Streaming per-class means in float64: ``update(X, y)`` batch by batch, then ``means()``."""

    def __init__(self, n_classes: int, d: int) -> None:
        self.sums = np.zeros((n_classes, d), np.float64)
        self.counts = np.zeros(n_classes, np.int64)

    def update(self, X: np.ndarray, y: np.ndarray) -> "MeanFitter":
        X = np.asarray(X, np.float64)
        np.add.at(self.sums, y, X)
        self.counts += np.bincount(y, minlength=len(self.counts))
        return self

    def means(self) -> np.ndarray:
        if (self.counts == 0).any():
            raise ValueError("a class has no examples: cannot take its mean")
        return self.sums / self.counts[:, None]


def diff_of_means(X: np.ndarray, y: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, float]:
    """(unit mean(X[y==0]) - mean(X[y==1]) in float64, its length); streamed in chunks."""
    fitter = MeanFitter(2, X.shape[1])
    for start in range(0, len(y), chunk):
        fitter.update(X[start:start + chunk], y[start:start + chunk])
    mu = fitter.means()
    diff = mu[0] - mu[1]
    norm = float(np.linalg.norm(diff))
    if norm == 0.0:
        raise ValueError("the class means are identical: no direction")
    return diff / norm, norm


def probe_direction(X: np.ndarray, y: np.ndarray, cfg: ProbeCfg) -> tuple[np.ndarray, float]:
    """Unit weight vector of a logistic probe in activation coordinates, pointing to class 0.

    The probe sees standardised features z = (x - m) / s, so its score w.z is (w / s).x + c:
    the direction in activation space is w / s.
    """
    with threadpool_limits(1):
        pipe = make_probe(cfg).fit(X, (y == 0).astype(np.int64))
    scaler, lr = pipe[0], pipe[-1]
    w = lr.coef_[0].astype(np.float64) / scaler.scale_
    norm = float(np.linalg.norm(w))
    return w / norm, norm


def projection_separation(r: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Cohen's d and ROC-AUC of the scores X @ r between class 0 and class 1."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(X, np.float64) @ r
    a, b = s[y == 0], s[y == 1]
    pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2) if min(len(a), len(b)) > 1 else np.nan
    d = (a.mean() - b.mean()) / pooled if pooled and pooled > 0 else np.nan
    return {"projection_d": float(d), "projection_auc": float(roc_auc_score(y == 0, s))}


def directions_layer(vectors: tuple[list[str], np.ndarray], data: pd.DataFrame, key: tuple, concepts: tuple[str, ...],
                     cfg: ProbeCfg) -> tuple[list[list], list[list]]:
    """Direction rows and metric rows for one (hook, layer, position)."""
    dirs, metrics = [], []
    for concept in concepts:
        classes = CONCEPTS[concept]
        X, y, _ = xy(vectors, balanced(data, classes, "train", cfg.seed), classes)
        n_pos, n_neg = int((y == 0).sum()), int((y == 1).sum())
        scale = float(np.linalg.norm(X.astype(np.float64), axis=1).mean())
        if np.abs(X[y == 0].mean(0, dtype=np.float64) - X[y == 1].mean(0, dtype=np.float64)).max() <= 1e-7 * scale:
            # Same vector for every prompt (e.g. the embedding of the chat template's last token
            # at layer 0): no direction exists here.
            metrics.append([concept, *key, "diff_norm", 0.0])
            continue
        dm, dm_norm = diff_of_means(X, y)
        pr, pr_norm = probe_direction(X, y, cfg)
        dirs.append([concept, *key, "diff_means", dm_norm, n_pos, n_neg, dm.tolist()])
        dirs.append([concept, *key, "probe", pr_norm, n_pos, n_neg, pr.tolist()])
        values = {"cosine_dm_probe": float(dm @ pr), "diff_norm": dm_norm}
        try:
            Xt, yt, _ = xy(vectors, balanced(data, classes, "test", cfg.seed), classes)
            values.update(projection_separation(dm, Xt, yt))
        except SafetyDataError:
            values.update(projection_d=np.nan, projection_auc=np.nan)  # test split too small
        metrics += [[concept, *key, m, v] for m, v in values.items()]
    return dirs, metrics


def run(con: duckdb.DuckDBPyConnection, store: Store, cache_run_id: int, data: pd.DataFrame, cfg: ProbeCfg, hooks: list[str], positions: list[str],
        layers: list[int], concepts: tuple[str, ...] = tuple(CONCEPTS),
        progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(directions, per-layer metrics) for every (concept, hook, layer, position)."""
    dirs, metrics = [], []
    total = len(hooks) * len(layers) * len(positions)
    it = iter_layers(con, store, cache_run_id, hooks, positions, layers)
    for hook, layer, position, vectors in tqdm(it, total=total, desc="directions", unit="site", disable=not progress):
        d, m = directions_layer(vectors, data, (hook, layer, position), concepts, cfg)
        dirs += d
        metrics += m
    return pd.DataFrame(dirs, columns=DIRECTION_COLUMNS), pd.DataFrame(metrics, columns=METRIC_COLUMNS)


@dataclass(frozen=True)
class SelectRule:
    """How the direction to edit with is chosen from the candidates' three criteria."""

    kl_max: float = 0.1
    """Admissible candidates cost at most this mean KL (nats) on neutral prompts when ablated."""
    min_auc: float = 0.9
    """Admissible candidates' probes separate the classes with at least this CV ROC-AUC."""
    min_flips: int = 2
    """An ablation effect counts when at least this many held-out prompts stop refusing."""

    def __post_init__(self) -> None:
        if self.kl_max <= 0 or not 0 <= self.min_auc <= 1 or self.min_flips < 1:
            raise ValueError("select rule needs kl_max > 0, 0 <= min_auc <= 1 and min_flips >= 1")

    def describe(self) -> str:
        return (f"admissible: KL <= {self.kl_max:g} and probe AUC >= {self.min_auc:g}; among them the largest "
                f"refusal-rate drop if at least {self.min_flips} held-out prompts stop refusing (ties: larger "
                "refusal log-prob drop), else the most separable (ties: larger held-out projection d, lower KL); "
                "no admissible candidate: the lowest KL")


CANDIDATE_COLUMNS = ["concept", "hook", "layer", "position", "separability", "projection_d", "refusal_drop",
                     "refusal_logprob_drop", "kl", "n_refusal"]


def select(candidates: pd.DataFrame, rule: SelectRule) -> pd.DataFrame:
    """One row per criterion (separability, ablation, kl, chosen) naming the candidate it picks.

    ``candidates`` has ``CANDIDATE_COLUMNS``: separability = probe CV ROC-AUC at that site,
    refusal_drop = base minus ablated refusal rate on held-out harmful prompts (n_refusal of
    them), refusal_logprob_drop = the same for the mean log-probability of a refusal reply,
    kl = mean KL(base || ablated) on held-out neutral prompts.
    """
    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates]
    if missing or candidates.empty:
        raise ValueError(f"selection needs candidates with columns {CANDIDATE_COLUMNS} (missing {missing})")
    c = candidates.reset_index(drop=True)
    key = ["concept", "hook", "layer", "position"]

    def pick(df: pd.DataFrame, by: list[str], ascending: list[bool]) -> pd.Series:
        return df.sort_values([*by, "layer"], ascending=[*ascending, True], kind="mergesort").iloc[0]

    rows = [
        ("separability", pick(c, ["separability", "projection_d"], [False, False]), "separability",
         "highest probe CV ROC-AUC (ties: held-out projection d)"),
        ("ablation", pick(c, ["refusal_drop", "refusal_logprob_drop"], [False, False]), "refusal_drop",
         "largest refusal-rate drop on held-out harmful prompts (ties: refusal log-prob drop)"),
        ("kl", pick(c, ["kl"], [True]), "kl", "lowest KL to the base model on neutral prompts"),
    ]
    ok = c[(c["kl"] <= rule.kl_max) & (c["separability"] >= rule.min_auc)]
    if ok.empty:
        chosen, why = pick(c, ["kl"], [True]), "no admissible candidate: lowest KL"
    elif (ok["refusal_drop"] * ok["n_refusal"]).max() >= rule.min_flips - 1e-9:
        chosen, why = pick(ok, ["refusal_drop", "refusal_logprob_drop"], [False, False]), "admissible, largest ablation effect"
    else:
        chosen, why = pick(ok, ["separability", "projection_d", "kl"], [False, False, True]), \
            "admissible, no measurable ablation effect: most separable"
    rows.append(("chosen", chosen, "separability", why))
    out = [{"criterion": crit, **{k: row[k] for k in key}, "metric": metric, "value": float(row[metric]),
            "separability": float(row["separability"]), "refusal_drop": float(row["refusal_drop"]),
            "kl": float(row["kl"]), "reason": why} for crit, row, metric, why in rows]
    return pd.DataFrame(out)


# --- random baselines for the edits ------------------------------------------------------------

def random_unit(d: int, k: int, seed: int) -> np.ndarray:
    """(k, d) unit directions drawn uniformly on the sphere (normalised Gaussians), seeded."""
    g = np.random.default_rng(seed).normal(size=(k, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def second_moment(X: np.ndarray) -> np.ndarray:
    """(d, d) mean of x x^T over the rows: u^T M u is the mean squared component along unit u, what
    ablating u removes from these activations (the mean's part included: ablation removes it too)."""
    X = np.asarray(X, np.float64)
    return X.T @ X / len(X)


def variance_matched(X: np.ndarray, r: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(U (k, d), removed (k,), target): k random unit directions whose ablation removes as much of the
    activations' second moment as ablating ``r`` does (u^T M u = r^T M r, M = ``second_moment(X)``).

    Each is a Gaussian draw in M's eigenbasis tilted towards its top principal components: weights
    g_i * lambda_i^beta, with beta solved so the removed share matches (beta = 0 is a plain random
    direction, which removes trace(M) / d; larger beta leans on the top components). The target is
    clipped to what the tilt can reach (the top eigenvalue), so ``removed`` reports what each got."""
    from scipy.optimize import brentq
    from scipy.special import logsumexp

    M = second_moment(X)
    lam, V = np.linalg.eigh(M)
    lam = np.maximum(lam, lam.max() * 1e-12)
    loglam = np.log(lam)
    ru = np.asarray(r, np.float64) / np.linalg.norm(r)
    target = float(ru @ M @ ru)
    rng = np.random.default_rng(seed)
    U, removed = [], []
    for _ in range(k):
        logg2 = 2 * np.log(np.abs(rng.normal(size=len(lam))) + 1e-300)

        def share(beta: float) -> float:
            w = logg2 + 2 * beta * loglam
            return float(np.exp(logsumexp(w, b=lam) - logsumexp(w)))

        lo, hi = -50.0, 50.0
        goal = min(max(target, share(lo)), share(hi))
        beta = brentq(lambda b: share(b) - goal, lo, hi, xtol=1e-10) if share(lo) < goal < share(hi) else (
            lo if goal <= share(lo) else hi)
        c = np.sqrt(np.exp(logg2 + 2 * beta * loglam - logsumexp(logg2 + 2 * beta * loglam)))
        c *= rng.choice([-1.0, 1.0], size=len(c))
        u = V @ c
        u /= np.linalg.norm(u)
        U.append(u)
        removed.append(float(u @ M @ u))
    return np.array(U), np.array(removed), target
