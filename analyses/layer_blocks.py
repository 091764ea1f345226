"""Which layers to drop: the block-selection rules of the layer study, as pure functions.

Strategies for a block size n on a model with L layers:
- ``angular``: Gromov et al.'s rule, the contiguous block l*(n)..l*(n)+n-1 whose input and
  output states are closest in angular distance (last token, un-normalised residual);
- ``deepest``: the n deepest layers except the last one (L-1-n .. L-2);
- ``shallowest``: layers 0..n-1;
- ``random``: a contiguous block at a uniformly random start (one draw per seed), the
  control for the angular rule;
- ``influence``: ShortGPT's rule, the n layers with the lowest Block Influence (not
  necessarily contiguous);
- ``single``: each layer on its own (n = 1, every layer).
"""

from __future__ import annotations

import random

import pandas as pd

STRATEGIES = ("angular", "deepest", "shallowest", "random", "influence")
"""Block strategies (``single`` is the separate all-layers sweep)."""


class BlockPlanError(ValueError):
    """A block size or strategy that does not fit the model."""


def check_size(n: int, n_layers: int) -> None:
    if not 1 <= n <= n_layers - 1:
        raise BlockPlanError(f"block size {n} out of range: this model allows 1..{n_layers - 1} "
                             "(one layer must stay)")


def angular_block(angular: pd.DataFrame, n: int, position: str = "last") -> tuple[int, ...]:
    """The block starting at l*(n), the start with the smallest mean angular distance."""
    rows = angular[(angular["n"] == n) & (angular["position"] == position)]
    if rows.empty:
        raise BlockPlanError(f"no angular distances for block size {n} at position '{position}'")
    start = int(rows.loc[rows["distance"].idxmin(), "start_layer"])
    return tuple(range(start, start + n))


def deepest_block(n_layers: int, n: int) -> tuple[int, ...]:
    """The n deepest layers except the last: L-1-n .. L-2."""
    check_size(n, n_layers)
    return tuple(range(n_layers - 1 - n, n_layers - 1))


def shallowest_block(n_layers: int, n: int) -> tuple[int, ...]:
    check_size(n, n_layers)
    return tuple(range(n))


def random_block(n_layers: int, n: int, seed: int) -> tuple[int, ...]:
    """A contiguous block of n layers at a random start in 0..L-n (the same for the same seed and n)."""
    check_size(n, n_layers)
    start = random.Random(seed * 1_000_003 + n).randrange(0, n_layers - n + 1)
    return tuple(range(start, start + n))


def influence_layers(influence: pd.DataFrame, n: int, position: str = "last") -> tuple[int, ...]:
    """The n layers with the lowest Block Influence (ties: the deeper layer goes first)."""
    rows = influence[influence["position"] == position]
    check_size(n, len(rows) or n + 1)
    ranked = rows.sort_values(["block_influence", "layer"], ascending=[True, False])
    return tuple(sorted(int(x) for x in ranked["layer"].head(n)))


def plan(n_layers: int, sizes: list[int], strategies: tuple[str, ...], seeds: tuple[int, ...],
         angular: pd.DataFrame | None = None, influence: pd.DataFrame | None = None,
         singles: list[int] | None = None) -> pd.DataFrame:
    """Every (strategy, n, seed) -> layers row of a sweep; ``singles`` adds strategy 'single'."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise BlockPlanError(f"unknown strategy '{unknown[0]}': use some of {', '.join(STRATEGIES)}")
    rows: list[dict] = [{"strategy": "single", "n": 1, "seed": None, "layers": (l,)} for l in (singles or [])]
    for n in sizes:
        check_size(n, n_layers)
        for s in strategies:
            if s == "angular":
                if angular is None:
                    raise BlockPlanError("the angular strategy needs the angular-distance table")
                rows.append({"strategy": s, "n": n, "seed": None, "layers": angular_block(angular, n)})
            elif s == "influence":
                if influence is None:
                    raise BlockPlanError("the influence strategy needs the Block Influence table")
                rows.append({"strategy": s, "n": n, "seed": None, "layers": influence_layers(influence, n)})
            elif s == "random":
                rows += [{"strategy": s, "n": n, "seed": seed, "layers": random_block(n_layers, n, seed)}
                         for seed in seeds]
            else:
                fn = deepest_block if s == "deepest" else shallowest_block
                rows.append({"strategy": s, "n": n, "seed": None, "layers": fn(n_layers, n)})
    df = pd.DataFrame(rows, columns=["strategy", "n", "seed", "layers"])
    df["seed"] = df["seed"].astype("Int64")
    return df
