"""The safety sweep's points: the edits built from the chosen direction, and in the same sweep the
random edits that say what any edit of that size does (issue 18):

- ``ablate[baseline:random-unit#i]``: ablation of random unit directions (uniform on the sphere);
- ``ablate[baseline:random-matched#i]``: ablation of random directions that remove as much of the
  residual stream's second moment at the chosen site as the harmful direction does (drawn within the
  span of the top principal components, tilted to match: ``analyses.directions.variance_matched``);
- ``actadd[baseline:random#i +a]``: addition of random unit directions at the chosen layer with the
  real edit's scale, at each |alpha| (a random direction and its negative are equally likely, so the
  band at +|alpha| is also the band at -|alpha|: adding u at -a is adding -u at +a).

Every point's role (edit or baseline), family and band are rows of ``safety_points``; after the sweep,
``bands`` turns the baselines' values into a 95% prediction band per (band, task, metric)
(``analyses.stats.random_band``), stored in ``safety_bands``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analyses import stats
from analyses.directions import random_unit, second_moment, variance_matched
from analyses.safety_data import stable_seed
from interp.interventions import Intervention
from interp.interventions.directions import (
    ActivationAddition,
    DirectionalAblation,
    OrthogonalizedWeights,
)

POINT_COLUMNS = ["point", "role", "family", "band", "alpha", "removed", "removed_ratio"]
Planned = tuple[Intervention, dict[str, object]]
"""A sweep point and its safety_points row."""
BAND_COLUMNS = ["band", "family", "alpha", "task", "metric", "k", "mean", "sd", "lo", "hi", "min", "max"]


def _row(spec: Intervention, role: str, family: str, band: str | None = None, alpha: float | None = None,
         removed: float | None = None, target: float | None = None) -> Planned:
    ratio = removed / target if removed is not None and target else None
    return spec, {"point": spec.label(), "role": role, "family": family, "band": band, "alpha": alpha,
                  "removed": removed, "removed_ratio": ratio}


def plan(vec: np.ndarray, norm: float, layer: int, hook: str, site: np.ndarray, *, name: str, alphas: tuple[float, ...],
         baselines: int, seed: int, toxic: np.ndarray | None = None,
         steer: ActivationAddition | None = None) -> list[Planned]:
    """(intervention, safety_points row) for every point of the sweep but the base. ``site``: the
    residual-stream vectors (rows) at the direction's site, which the variance matching reads. ``steer``: a
    stored activation-addition point whose vector, scale, layers, hook and positions the addition edits (and
    their random baselines) use instead of the chosen direction's, at each of ``alphas``."""
    def addition(u: tuple[float, ...] | np.ndarray, a: float, label: str) -> ActivationAddition:
        """Vector ``u`` added at ``a`` times the scale, where the chosen direction (or the stored ``steer``) acts."""
        direction = tuple(map(float, u))
        if steer is None:
            return ActivationAddition(direction, layer=layer, alpha=a, scale=norm, hook=hook, name=label)
        return dataclasses.replace(steer, direction=direction, alpha=a, name=label)

    M = second_moment(site)
    removed = lambda u: float(np.asarray(u) @ M @ np.asarray(u) / float(np.asarray(u) @ np.asarray(u)))  # noqa: E731
    target = removed(vec)
    direction = tuple(map(float, vec))  # the directions' stored form (an array is taken as its floats)
    out = [_row(DirectionalAblation(direction, name=name), "edit", "ablate", removed=target, target=target),
           _row(OrthogonalizedWeights(direction, name=name), "edit", "orth", removed=target, target=target)]
    out += [_row(addition(direction, a, name) if steer is None else addition(steer.direction, a, steer.name), "edit",
                 "actadd", alpha=a) for a in alphas]
    if toxic is not None:
        tox = f"toxic{name[name.index('@'):]}" if "@" in name else "toxic"
        out.append(_row(DirectionalAblation(tuple(map(float, toxic)), name=tox), "edit", "ablate",
                        removed=removed(toxic), target=target))
    if not baselines:
        return out
    units = random_unit(len(vec), baselines, stable_seed(seed, "random-unit"))
    for i, u in enumerate(units):
        out.append(_row(DirectionalAblation(u, name=f"baseline:random-unit#{i}"), "baseline", "ablate",
                        "ablate:random-unit", removed=removed(u), target=target))
    matched, got, _ = variance_matched(site, vec, baselines, stable_seed(seed, "random-matched"))
    for i, (u, r) in enumerate(zip(matched, got)):
        out.append(_row(DirectionalAblation(u, name=f"baseline:random-matched#{i}"), "baseline", "ablate",
                        "ablate:random-matched", removed=float(r), target=target))
    for a in sorted({abs(a) for a in alphas if a != 0}):
        for i, u in enumerate(units):
            out.append(_row(addition(u, a, f"baseline:random#{i}"), "baseline", "actadd",
                            f"actadd:random@{a:g}", alpha=a))
    return out


def points_frame(planned: list[Planned]) -> pd.DataFrame:
    return pd.DataFrame([row for _, row in planned], columns=POINT_COLUMNS)


def bands(values: pd.DataFrame) -> pd.DataFrame:
    """One prediction band per (band, task, metric) from the baselines' values (band, family, alpha,
    task, metric, value)."""
    rows = []
    for (band, family, task, metric), g in values.groupby(["band", "family", "task", "metric"], sort=True):
        alpha = g["alpha"].dropna()
        rows.append({"band": band, "family": family, "alpha": float(alpha.abs().iloc[0]) if len(alpha) else None,
                     "task": task, "metric": metric, **stats.random_band(g["value"].to_numpy())})
    return pd.DataFrame(rows, columns=BAND_COLUMNS)
