"""The labelled safety dataset: classes, fixed seeded splits, balanced subsets, and per-layer
vectors streamed from the store. Pure: prompts and store rows in, DataFrames and arrays out.

Classes (``cls``): harmful (HarmBench and Do-Not-Answer, kept apart by ``source``), toxic
(RealToxicityPrompts openings), biased (stereotype-bearing prompts) and counterpart (their
minimal-pair neutral rewrites), neutral (hand-written neutral prompts).

Splits: ``heldout`` (prompts an evaluation task uses: never fitted), then a seeded ``test``
fraction per (dataset, source) stratum, ``train`` for the rest. Stereotype pairs share a split, and
are stratified by ``group_kept`` too (whether the counterpart still names the biased prompt's group),
so both kinds of pair reach the test split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from store.db import Store

PROBLEMS: dict[str, tuple[str, ...]] = {
    "harmful_vs_neutral": ("harmful", "neutral"),
    "toxic_vs_neutral": ("toxic", "neutral"),
    "biased_vs_counterpart": ("biased", "counterpart"),
    "multiclass": ("harmful", "toxic", "biased", "neutral"),
}
"""Probe problems: name -> classes (binary problems: positive class first)."""

CONCEPTS: dict[str, tuple[str, str]] = {"harmful": ("harmful", "neutral"), "toxic": ("toxic", "neutral")}
"""Directions: concept -> (positive class, negative class); direction = mean(pos) - mean(neg)."""

HARMFUL_SOURCES = ("harmbench", "donotanswer")
COLUMNS = ["prompt_id", "cls", "source", "dataset", "grp", "group_kept", "split"]


class SafetyDataError(ValueError):
    """A dataset that cannot support the requested analysis (a class missing or too small)."""


def prompt_class(dataset: str, label: str) -> str | None:
    """The probe class of a stored prompt, or None when it belongs to no class."""
    if dataset == "stereotypes":
        return "biased" if label == "biased" else "counterpart"
    return {"harmful": "harmful", "harmbench": "harmful", "donotanswer": "harmful", "toxic": "toxic",
            "neutral": "neutral"}.get(dataset)


def stable_seed(seed: int, *parts: str) -> int:
    """A 48-bit seed from a base seed and names (stable across runs and platforms)."""
    digest = hashlib.sha256("\x1f".join([str(seed), *parts]).encode()).hexdigest()
    return int(digest[:12], 16)


def _kept_key(frame: pd.DataFrame) -> pd.Series:
    """'' for prompts without a group_kept flag, else 'group_kept=True' / 'group_kept=False'."""
    if "group_kept" not in frame:
        return pd.Series("", index=frame.index, dtype=object)
    return pd.Series(["" if pd.isna(v) else f"group_kept={bool(v)}" for v in frame["group_kept"]],
                     index=frame.index, dtype=object)


def assign_splits(frame: pd.DataFrame, test_frac: float, seed: int, heldout: Iterable[str] = ()) -> pd.Series:
    """train / test / heldout per prompt; deterministic for the same prompts, seed and fraction.

    Groups (``grp``, e.g. a stereotype pair, or a contrastive pair whose sides lie in two strata: the first
    stratum decides) are split as units, held out whole; strata are (dataset, source)
    so every class and both harmful sources keep the same test fraction, and stereotype pairs are
    further stratified by ``group_kept`` (prompts without the flag keep the plain stratum's seed).
    """
    if not 0.0 < test_frac < 1.0:
        raise SafetyDataError(f"test fraction must be between 0 and 1, not {test_frac}")
    held = set(heldout)
    split = pd.Series("train", index=frame.index, dtype=object)
    grp = frame["grp"].where(frame["grp"].notna(), frame["prompt_id"])
    usable = ~grp.isin(set(grp[frame["prompt_id"].isin(held)]))  # a group with a held-out member: held out whole
    strata = frame[["dataset", "source"]].assign(_kept=_kept_key(frame))
    decided: dict[str, str] = {}  # a group spanning strata (a contrastive pair's two sides) takes its first split
    for (dataset, source, kept), idx in strata[usable].groupby(["dataset", "source", "_kept"]).groups.items():
        groups = sorted(set(grp[idx]) - set(decided))
        rng = np.random.default_rng(stable_seed(seed, dataset, source, *((kept,) if kept else ())))
        order = [groups[i] for i in rng.permutation(len(groups))]
        test_groups = set(order[: int(round(test_frac * len(groups)))])
        decided.update({g: "test" if g in test_groups else "train" for g in groups})
        split[idx] = [decided[g] for g in grp[idx]]
    split[~usable] = "heldout"
    return split


def dataset_frame(prompts: pd.DataFrame, test_frac: float, seed: int, heldout: Iterable[str] = ()) -> pd.DataFrame:
    """Labelled prompts with splits from stored prompt rows (prompt_id, dataset, source, label, grp and,
    for stereotype pairs, group_kept: True / False, None elsewhere)."""
    df = prompts.copy()
    df["cls"] = [prompt_class(d, l) for d, l in zip(df["dataset"], df["label"])]
    df = df[df["cls"].notna()].sort_values("prompt_id").reset_index(drop=True)
    if "grp" not in df:
        df["grp"] = None
    kept = df["group_kept"] if "group_kept" in df else [None] * len(df)
    df["group_kept"] = pd.Series([None if pd.isna(v) else bool(v) for v in kept], index=df.index, dtype=object)
    mixed = df[df["grp"].notna() & df["group_kept"].notna()].groupby("grp")["group_kept"].nunique()
    if (mixed > 1).any():
        raise SafetyDataError(f"pair '{mixed[mixed > 1].index[0]}' has rows with different group_kept flags: "
                              "both rows of a pair must agree")
    df["split"] = assign_splits(df, test_frac, seed, heldout)
    return df[COLUMNS]


def balanced(frame: pd.DataFrame, classes: tuple[str, ...], split: str | tuple[str, ...], seed: int,
             sources: dict[str, str] | None = None) -> pd.DataFrame:
    """Equal numbers of each class (the smallest class's count), a seeded subset of the rest.

    ``sources`` restricts a class to one source, e.g. {"harmful": "harmbench"}.
    """
    splits = (split,) if isinstance(split, str) else split
    parts = []
    for c in classes:
        sel = frame[(frame["cls"] == c) & frame["split"].isin(splits)]
        if sources and c in sources:
            sel = sel[sel["source"] == sources[c]]
        parts.append(sel.sort_values("prompt_id"))
    n = min(len(p) for p in parts)
    if n < 2:
        counts = ", ".join(f"{c}: {len(p)}" for c, p in zip(classes, parts))
        raise SafetyDataError(f"too few prompts in split {'/'.join(splits)} ({counts}): capture more prompts "
                              "(raise the per-set limit)")
    out = []
    for c, p in zip(classes, parts):
        rng = np.random.default_rng(stable_seed(seed, "balance", c, *splits, *(sources or {}).values()))
        out.append(p.iloc[np.sort(rng.permutation(len(p))[:n])])
    return pd.concat(out, ignore_index=True)


def xy(vectors: tuple[list[str], np.ndarray], subset: pd.DataFrame,
       classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, groups) for ``subset``'s prompts: y indexes ``classes``; groups keep pairs together."""
    ids, X = vectors
    row = {p: i for i, p in enumerate(ids)}
    missing = [p for p in subset["prompt_id"] if p not in row]
    if missing:
        raise SafetyDataError(f"{len(missing)} prompts have no stored vector (e.g. '{missing[0]}'): "
                              "resume the cache run to complete it")
    rows = np.array([row[p] for p in subset["prompt_id"]], dtype=np.int64)
    y = np.array([classes.index(c) for c in subset["cls"]], dtype=np.int64)
    grp = subset["grp"].where(subset["grp"].notna(), subset["prompt_id"]).to_numpy()
    return X[rows], y, grp


def layer_vectors(con: duckdb.DuckDBPyConnection, store: Store, run_id: int, hook: str, layer: int, position: str) -> tuple[list[str], np.ndarray]:
    """(prompt_ids, X (prompt, d) float32) of one layer, read from the store."""
    from store.activations import read_vectors

    meta, X = read_vectors(con, store, run_id, hook, [layer], position)
    return meta["prompt_id"].tolist(), X


def iter_layers(con: duckdb.DuckDBPyConnection, store: Store, run_id: int, hooks: Iterable[str], positions: Iterable[str],
                layers: Iterable[int]) -> Iterator[tuple[str, int, str, tuple[list[str], np.ndarray]]]:
    """Stream (hook, layer, position, (ids, X)) one layer at a time: memory is one layer's vectors."""
    for hook in hooks:
        for layer in layers:
            for position in positions:
                yield hook, layer, position, layer_vectors(con, store, run_id, hook, layer, position)
