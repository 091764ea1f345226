"""Do the cheap similarity proxies predict what dropping layers really costs?

For every evaluated drop (a set of layers) the *harm* is measured against the base model
of the same run: the increase of the perplexity loss (nll, nats/token) and the decrease of
each accuracy. Each proxy is computed for the same layer set from the stored analyses:
- ``angular``: Gromov's d(l, n) between the block's input and output state (contiguous blocks);
- ``cosine``: mean cos(x_l, x_{l+n}) of the same two states (contiguous blocks; for one layer
  it is 1 - Block Influence, so it ranks layers exactly as Block Influence does, reversed);
- ``influence``: the sum of the dropped layers' ShortGPT Block Influence (any layer set).
Each proxy is taken at every position of the similarity tables (``last``, ``mean`` = cosine of
token-mean vectors, ``tokens`` = per-token cosine averaged over tokens), labelled by ``position``.
Agreement is Spearman's rank correlation between proxy and harm, within a scope:
``single`` (each layer alone), ``blocks`` (every evaluated set of 2+ layers, all sizes
pooled, so block size drives much of it), ``blocks_n`` (sets of one size n, when at least
``MIN_POINTS`` distinct sets were evaluated). ``agreement`` = rho * expected sign, so
positive means the proxy ranks the harm the right way round. Healed points are left out.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

TARGETS = {"nll": 1.0, "accuracy": -1.0, "exact_match": -1.0}
"""Metric -> sign that turns (value - base) into harm (loss up, accuracy down)."""
PROXIES = {"angular": 1.0, "cosine": -1.0, "influence": 1.0}
"""Proxy -> expected sign of its correlation with harm."""
MIN_POINTS = 4
COLUMNS = ["scope", "n", "proxy", "position", "task", "metric", "spearman", "p_value", "n_points",
           "expected_sign", "agreement"]


def harms(evals: pd.DataFrame) -> pd.DataFrame:
    """(point, task, metric, harm) for every non-base point, from evals rows (point, task, metric, value)."""
    ev = evals[evals["metric"].isin(TARGETS)]
    base = ev[ev["point"] == "base"].set_index(["task", "metric"])["value"]
    if base.empty:
        raise ValueError("no base-model evaluation among the evals: the sweep must include the base point")
    rest = ev[ev["point"] != "base"].copy()
    key = list(zip(rest["task"], rest["metric"]))
    rest["harm"] = [(v - base.get(k, np.nan)) * TARGETS[k[1]] for v, k in zip(rest["value"], key)]
    return rest[["point", "task", "metric", "harm"]]


def _contiguous(layers: tuple[int, ...]) -> bool:
    return len(layers) > 0 and list(layers) == list(range(layers[0], layers[0] + len(layers)))


def proxies(points: pd.DataFrame, similarity: pd.DataFrame, influence: pd.DataFrame) -> pd.DataFrame:
    """(point, n, proxy, position, value) for every distinct layer set in ``points``."""
    sim = similarity.set_index(["position", "layer_a", "layer_b"])
    bi = influence.set_index(["position", "layer"])["block_influence"]
    rows = []
    for point, layers in points.drop_duplicates("point")[["point", "layers"]].itertuples(index=False):
        layers = tuple(int(x) for x in layers)
        for position in similarity["position"].unique():
            rows.append((point, len(layers), "influence", position, float(sum(bi[(position, l)] for l in layers))))
            if _contiguous(layers):
                a, b = layers[0], layers[-1] + 1
                rows.append((point, len(layers), "angular", position, float(sim.loc[(position, a, b), "angular"])))
                rows.append((point, len(layers), "cosine", position, float(sim.loc[(position, a, b), "cosine"])))
    return pd.DataFrame(rows, columns=["point", "n", "proxy", "position", "value"])


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value; NaN when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def agreement(points: pd.DataFrame, evals: pd.DataFrame, similarity: pd.DataFrame,
              influence: pd.DataFrame) -> pd.DataFrame:
    """The agreement table (``COLUMNS``) of one sweep. ``points`` has strategy, n, layers, point, heal_steps."""
    pts = points[points["heal_steps"].fillna(0) == 0]
    h = harms(evals)
    px = proxies(pts, similarity, influence)
    singles = set(pts.loc[pts["strategy"] == "single", "point"])
    scopes: list[tuple[str, int | None, set[str]]] = [("single", 1, singles)]
    blocks = pts[pts["n"] >= 2]
    scopes.append(("blocks", None, set(blocks["point"])))
    for n, grp in blocks.groupby("n"):
        if grp["point"].nunique() >= MIN_POINTS:
            scopes.append(("blocks_n", int(n), set(grp["point"])))
    rows = []
    merged = px.merge(h, on="point")
    for scope, n, members in scopes:
        sub = merged[merged["point"].isin(members)]
        for (proxy, position, task, metric), grp in sub.groupby(["proxy", "position", "task", "metric"]):
            grp = grp.dropna(subset=["value", "harm"])
            if len(grp) < 3:
                continue
            rho, p = spearman(grp["value"], grp["harm"])
            rows.append((scope, n, proxy, position, task, metric, rho, p, len(grp), PROXIES[proxy],
                         rho * PROXIES[proxy]))
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["n"] = df["n"].astype("Int64")
    return df
