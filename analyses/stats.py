"""Statistics behind every comparison the suite reports: paired differences against the base model
with a 95% confidence interval and a p-value, the smallest effect a budget can detect, permutation
p-values and null summaries for probes, confidence intervals of held-out scores, and the band of
effects that random edits produce. Pure functions over arrays; scipy.stats does the work.

Paired comparison of one metric between the base model and an edited one, on the same items:
- binary per-item scores (accuracy, refusal, toxic rate: every value 0 or 1): the exact McNemar
  test (a binomial test on the discordant pairs; it is what a sign-flip permutation test of the
  mean difference gives on 0/1 data) and the Agresti-Min interval (Wald on the 2x2 table with a
  half added to each cell). Agresti-Min is written here because scipy has no paired-proportion
  interval and the bootstrap fails on rare flips: in 500 simulations (tests/unit/test_stats.py and
  BENCHMARKS.md) the BCa bootstrap covered 0.57 / 0.87 with 5% one-way flips at n = 16 / 40,
  Agresti-Min 1.0 / 0.88, and both about 0.95 with common flips;
- other scores (window NLL, toxicity probability, KL): the sign-flip permutation test of the mean
  difference (``scipy.stats.permutation_test``, exact up to 2^13 items) and the BCa bootstrap
  interval over items (``scipy.stats.bootstrap``); below ``MIN_BOOTSTRAP`` items the t interval,
  since the bootstrap under-covers there (0.88 at n = 8 vs 0.95 for t in the same simulation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8
MIN_BOOTSTRAP = 16
"""Fewest items for a bootstrap interval; fewer get the t interval (see the module docstring)."""


def standard_error(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Standard error of the mean along ``axis`` (sample sd / sqrt(n), ``scipy.stats.sem``); NaN
    where fewer than two values. The suite's one way to compute it from values in memory (streamed
    means keep running sums: analyses.layer_similarity; SQL aggregates: store.queries.layers)."""
    v = np.asarray(values, dtype=np.float64)
    if v.shape[axis] < 2:
        return np.full(np.delete(v.shape, axis % v.ndim), np.nan)
    return stats.sem(v, axis=axis, ddof=1)


@dataclass(frozen=True)
class Paired:
    """One metric of an edited point against the base model on the same items."""

    n: int
    """Items present in both (the comparison is over these)."""
    base: float
    """Base model's mean over the items."""
    value: float
    """Edited model's mean over the items."""
    delta: float
    """value - base."""
    lo: float
    """Lower end of the 95% confidence interval of delta."""
    hi: float
    """Upper end."""
    p: float
    """Two-sided p-value of delta = 0."""
    sd: float
    """Standard deviation of the per-item differences."""
    mde: float
    """Smallest |delta| this many items with this spread detect at alpha 0.05 with power 0.8."""
    method: str
    """Interval / test used."""

    @property
    def noise(self) -> bool:
        """True when the interval includes zero: no detectable change at this budget."""
        return bool(self.lo <= 0.0 <= self.hi)

    def row(self) -> dict:
        return asdict(self)


def is_binary(*arrays: np.ndarray) -> bool:
    return all(np.isin(np.asarray(a), (0.0, 1.0)).all() for a in arrays)


def paired(base: ArrayLike, edited: ArrayLike, *, confidence: float = 0.95, resamples: int = 9999, seed: int = 0) -> Paired:
    """Compare ``edited`` with ``base``, two arrays of per-item scores in the same item order."""
    b, e = np.asarray(base, np.float64), np.asarray(edited, np.float64)
    if b.shape != e.shape or b.ndim != 1:
        raise ValueError(f"paired scores need two 1-d arrays of the same length, not {b.shape} and {e.shape}")
    if len(b) < 2:
        raise ValueError(f"a paired comparison needs at least 2 items, not {len(b)}")
    if not (np.isfinite(b).all() and np.isfinite(e).all()):
        raise ValueError("paired scores contain NaN or infinite values: score every item")
    d = e - b
    n, delta = len(d), float(d.mean())
    sd = float(d.std(ddof=1))
    if is_binary(b, e):
        lo, hi = agresti_min(int((d > 0).sum()), int((d < 0).sum()), n, confidence)
        p, method = mcnemar_exact(int((d > 0).sum()), int((d < 0).sum())), "mcnemar-exact / agresti-min"
    elif np.ptp(d) == 0.0:  # every item moved by the same amount: no spread to resample
        lo = hi = delta
        p, method = _sign_flip(d, resamples, seed), "sign-flip / constant difference"
    else:
        p = _sign_flip(d, resamples, seed)
        if n >= MIN_BOOTSTRAP:
            lo, hi = _bootstrap(d, confidence, resamples, seed)
            method = "sign-flip / bootstrap-bca"
        else:
            ci = stats.ttest_1samp(d, 0.0).confidence_interval(confidence)
            lo, hi, method = float(ci.low), float(ci.high), "sign-flip / t"
    return Paired(n, float(b.mean()), float(e.mean()), delta, float(lo), float(hi), float(p), sd, mde(n, sd),
                  method)


def _sign_flip(d: np.ndarray, resamples: int, seed: int) -> float:
    if not np.any(d):
        return 1.0
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                                 n_resamples=resamples, alternative="two-sided", rng=np.random.default_rng(seed))
    return float(min(1.0, res.pvalue))


def _bootstrap(d: np.ndarray, confidence: float, resamples: int, seed: int) -> tuple[float, float]:
    import warnings

    kw = dict(vectorized=True, n_resamples=resamples, confidence_level=confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        ci = stats.bootstrap((d,), np.mean, method="BCa", rng=np.random.default_rng(seed), **kw).confidence_interval
        if not (np.isfinite(ci.low) and np.isfinite(ci.high)):  # BCa undefined (e.g. one outlier): percentile
            ci = stats.bootstrap((d,), np.mean, method="percentile", rng=np.random.default_rng(seed),
                                 **kw).confidence_interval
    return float(ci.low), float(ci.high)


def mcnemar_exact(up: int, down: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs (items that went 0->1 and 1->0)."""
    m = up + down
    return 1.0 if m == 0 else float(stats.binomtest(up, m, 0.5).pvalue)


def agresti_min(up: int, down: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Agresti & Min (2005) interval of a paired difference of proportions: the Wald interval
    after adding 1/2 to each of the four cells of the paired 2x2 table; clipped to [-1, 1]."""
    b, c, m = up + 0.5, down + 0.5, n + 2.0
    diff = (b - c) / m
    se = math.sqrt(max(0.0, (b + c) - (b - c) ** 2 / m)) / m
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    return max(-1.0, diff - z * se), min(1.0, diff + z * se)


def mde(n: int, sd: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest mean difference a two-sided paired t-test on ``n`` items whose differences have
    standard deviation ``sd`` detects with probability ``power`` at level ``alpha`` (noncentral t).
    NaN without spread (sd 0: no noise estimate) or with fewer than 2 items."""
    if n < 2 or not sd > 0 or not math.isfinite(sd):
        return float("nan")
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def gap(ncp: float) -> float:
        got = float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
        if not math.isfinite(got):  # scipy's nct breaks down at 1-2 degrees of freedom: normal approximation
            got = float(stats.norm.sf(crit - ncp) + stats.norm.cdf(-crit - ncp))
        return got - power

    hi = crit + 4.0  # power grows with the noncentrality: widen the bracket until it is reached
    while gap(hi) < 0:
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi)) * sd / math.sqrt(n)


# --- permutation nulls (probes) ---------------------------------------------------------------

def permutation_p(observed: float, null: ArrayLike) -> float:
    """(1 + k) / (1 + N): k of the N permutation scores reach the observed one (ties count)."""
    null = np.asarray(null, np.float64)
    if null.size == 0:
        raise ValueError("a permutation p-value needs at least one permutation")
    k = int(np.sum(null >= observed - 1e-12))
    return (1 + k) / (1 + null.size)


def null_summary(observed: float, null: ArrayLike) -> dict:
    """What the store keeps of a permutation null: its mean, 95th percentile, the p-value and N."""
    null = np.asarray(null, np.float64)
    return {"null_mean": float(null.mean()), "null_p95": float(np.quantile(null, 0.95)),
            "p": permutation_p(observed, null), "permutations": int(null.size)}


# --- held-out scores -----------------------------------------------------------------------------

def proportion_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of an accuracy of k right out of n."""
    if n < 1:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence, method="exact")
    return float(ci.low), float(ci.high)


def auc_ci(auc: float, n_pos: int, n_neg: int, confidence: float = 0.95) -> tuple[float, float]:
    """Hanley & McNeil (1982) interval of a ROC-AUC from its closed-form standard error, clipped to
    [0, 1]. The variance is taken at the AUC moved 1/n of the way to 0.5 (n: the smaller class; at
    AUC 1 that is half an example, a pseudo-count as in Agresti-Min), so a perfect AUC on a small
    test set still gets an interval; a bootstrap of the AUC breaks on resamples that lose a class at
    these sizes and is degenerate at 1 too."""
    if not math.isfinite(auc) or n_pos < 1 or n_neg < 1:
        return float("nan"), float("nan")
    pairs = n_pos * n_neg
    a = auc + (0.5 - auc) / min(n_pos, n_neg)  # 1 -> 1 - 1/(2 n): half an example's worth
    q1, q2 = a / (2 - a), 2 * a ** 2 / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a ** 2) + (n_neg - 1) * (q2 - a ** 2)) / pairs
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


# --- random-edit bands -------------------------------------------------------------------------

def random_band(values: ArrayLike, level: float = 0.95) -> dict:
    """Where one more random edit of the same kind would land: the prediction interval
    mean +/- t(level, k-1) * sd * sqrt(1 + 1/k) over the k random edits' values, with their range."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    out = {"k": int(v.size), "mean": float(v.mean()) if v.size else float("nan"),
           "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
           "min": float(v.min()) if v.size else float("nan"), "max": float(v.max()) if v.size else float("nan")}
    if v.size < 2:
        return {**out, "lo": float("nan"), "hi": float("nan")}
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1)) * out["sd"] * math.sqrt(1 + 1 / v.size)
    return {**out, "lo": out["mean"] - half, "hi": out["mean"] + half}


# --- a sweep point against the base, item by item ---------------------------------------------

DERIVED = {("ppl", "nll"): ("ppl", "perplexity")}
"""Metrics compared through another one's items: perplexity = exp(mean window nll) (equal windows), so
its interval is the nll interval mapped through base * (exp(.) - 1)."""


def compare_items(base: pd.DataFrame, point: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per (task, metric) that both frames (task, metric, item, value) score on at least two
    common items: n, base_value, value, delta, lo, hi, p, sd, mde, method (see ``paired``)."""
    rows = []
    for (task, metric), b in base.groupby(["task", "metric"], sort=True):
        p = point[(point["task"] == task) & (point["metric"] == metric)]
        m = b.merge(p, on="item", suffixes=("_base", "_point"))
        if len(m) < 2:
            continue
        r = paired(m["value_base"].to_numpy(), m["value_point"].to_numpy(), seed=seed).row()
        r["base_value"] = r.pop("base")
        rows.append({"task": task, "metric": metric, **r})
        if (task, metric) in DERIVED:
            d_task, d_metric = DERIVED[(task, metric)]
            b0, v0 = math.exp(r["base_value"]), math.exp(r["value"])
            rows.append({"task": d_task, "metric": d_metric, "n": r["n"], "base_value": b0, "value": v0,
                         "delta": v0 - b0, "lo": b0 * math.expm1(r["lo"]), "hi": b0 * math.expm1(r["hi"]),
                         "p": r["p"], "sd": float("nan"), "mde": b0 * math.expm1(r["mde"]),
                         "method": f"{r['method']} (through {metric})"})
    return pd.DataFrame(rows, columns=["task", "metric", "n", "base_value", "value", "delta", "lo", "hi", "p", "sd",
                                       "mde", "method"])
