"""Per-layer linear probes with controls a reviewer can check.

For every (hook, layer, position) and problem in ``safety_data.PROBLEMS``, on the balanced train split:
- ``cv``: the closed-form ridge probe (``analyses/ridge.py``) cross-validated over seeded group folds
  (pairs kept in one fold), out-of-fold predictions pooled: accuracy and ROC-AUC, each against a
  permutation null of ``permutations`` label permutations drawn fresh for this cell (seeded by the
  cell) and scored by the same estimator: null mean, null 95th percentile, p = (1 + k) / (1 + N);
- ``length``: the same probe, folds and test on prompt length alone (tokens, log tokens): the shortcut
  a probe could take without reading any content;
- ``cv_logistic``: a second, labelled probe: logistic regression, stratified group k-fold, mean and std
  over folds (no null: each permutation would cost a full refit);
- ``held_out``: the ridge probe fitted on the whole balanced train split, scored on the balanced test
  split, with a 95% interval (accuracy: exact binomial; binary ROC-AUC: Hanley-McNeil);
- biased_vs_counterpart: the held-out probe on each kind of stereotype pair (``held_out:group_kept``:
  the counterpart still names the group, so only the stereotype separates the pair;
  ``held_out:group_swapped``: detecting any group mention is enough);
- harmful_vs_neutral: cross-source generalisation ``cross:A->B`` (fit on source A's train split, score on
  source B's test split) beside ``within:B``, and the same for the difference-of-means classifier
  (``cross_dm:A->B``, ``within_dm:B``).
``best_layers`` picks each problem's layer on the train split only (cross-validated scores) and reports
the held-out score beside it. Vectors stream from the store one layer at a time; no model is imported.

Memory bound: one (hook, layer, position) at a time, so flat in the number of layers and sites, but
linear in the number of prompts P of that layer: its vectors (P x d float32, as read), a standardised
float64 copy of the training rows, and the ridge probe's dual form, which holds the n x n Gram matrix
of a fold's n training rows (float64; 8 n^2 bytes: 80 MB at 3,200 training prompts) and an
(n_test x n) hat matrix shared by every permutation. At 10x the prompts the Gram term is 100x: the
probe is meant for labelled probing sets (thousands of prompts), not for whole activation datasets
(``bench/scaling.py`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from analyses import ridge, stats
from analyses.safety_data import (
    HARMFUL_SOURCES,
    PROBLEMS,
    SafetyDataError,
    balanced,
    iter_layers,
    stable_seed,
    xy,
)

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from store.db import Store

METRICS = ("accuracy", "roc_auc")
ROW = ["problem", "hook", "layer", "position", "setting", "metric", "mean", "std", "n", "folds", "lo", "hi",
       "null_mean", "null_p95", "p", "permutations"]
NAN = float("nan")


@dataclass(frozen=True)
class ProbeCfg:
    """How probes are fitted and checked."""

    folds: int = 5
    """Cross-validation folds (seeded group folds for the ridge probe; stratified for the logistic one)."""
    ridge: float = 1.0
    """Ridge penalty in units of the mean squared norm of a standardised training vector."""
    permutations: int = 500
    """Label permutations per (problem, hook, layer, position) cell for the permutation null."""
    C: float = 0.1
    """Inverse L2 strength of the logistic regression (on standardised features)."""
    logistic: bool = True
    """Also cross-validate the logistic-regression probe (setting cv_logistic)."""
    seed: int = 0
    """Seed for folds, permutations and class balancing."""
    max_iter: int = 2000
    """lbfgs iteration cap of the logistic regression."""
    problems: tuple[str, ...] = tuple(PROBLEMS)
    """Which problems to probe (names from safety_data.PROBLEMS)."""

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"probe folds must be at least 2, not {self.folds}")
        if self.C <= 0 or self.ridge <= 0:
            raise ValueError(f"probe C and ridge must be positive, not {self.C} and {self.ridge}")
        if self.permutations < 1:
            raise ValueError(f"permutations must be at least 1 per cell, not {self.permutations}")
        bad = [p for p in self.problems if p not in PROBLEMS]
        if bad or not self.problems:
            raise ValueError(f"unknown probe problem '{','.join(bad)}': use some of {', '.join(PROBLEMS)}")
        object.__setattr__(self, "problems", tuple(self.problems))


def make_probe(cfg: ProbeCfg) -> Pipeline:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=cfg.C, max_iter=cfg.max_iter))


def fold_indices(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that never split a group; fewer folds when a class is too small (logistic probe)."""
    from sklearn.model_selection import StratifiedGroupKFold

    k = min(folds, int(np.bincount(y).min()))
    if k < 2:
        raise SafetyDataError("a class has fewer than 2 examples: too few prompts to cross-validate")
    return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups))


def scores(model: Pipeline, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and ROC-AUC of a fitted scikit-learn classifier (one-vs-rest macro for more than two classes)."""
    from sklearn.metrics import roc_auc_score

    proba = model.predict_proba(X)
    acc = float(np.mean(model.classes_[proba.argmax(1)] == y))
    present = [i for i, c in enumerate(model.classes_) if 0 < np.sum(y == c) < len(y)]
    if len(model.classes_) == 2:
        auc = roc_auc_score(y == model.classes_[1], proba[:, 1]) if present else np.nan
    else:
        aucs = [roc_auc_score(y == model.classes_[i], proba[:, i]) for i in present]
        auc = float(np.mean(aucs)) if aucs else np.nan
    return {"accuracy": acc, "roc_auc": float(auc)}


def cross_validate(X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: ProbeCfg,
                   folds: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, list[float]]:
    """Per-fold accuracy and ROC-AUC of a freshly fitted logistic probe on each fold."""
    folds = folds if folds is not None else fold_indices(y, groups, cfg.folds, cfg.seed)
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    with threadpool_limits(1):  # many small fits: threads only add overhead
        for train, test in folds:
            s = scores(make_probe(cfg).fit(X[train], y[train]), X[test], y[test])
            for m in METRICS:
                out[m].append(s[m])
    return out


def _row(key: tuple, setting: str, metric: str, value: float, n: int, folds: int, *, std: float | None = None, lo: float = NAN, hi: float = NAN,
         null: dict | None = None) -> list:
    null = null or {}
    return [*key, setting, metric, float(value), std, int(n), int(folds), float(lo), float(hi),
            null.get("null_mean", NAN), null.get("null_p95", NAN), null.get("p", NAN), null.get("permutations")]


def permutation_cv(X: np.ndarray, y: np.ndarray, groups: np.ndarray, n_classes: int, cfg: ProbeCfg,
                   seed: int) -> tuple[dict[str, float], dict[str, np.ndarray], int]:
    """(observed scores, null scores per metric, folds) of the cross-validated ridge probe; the null
    scores the same folds and estimator on ``cfg.permutations`` label permutations seeded by ``seed``."""
    folds = ridge.group_folds(groups, cfg.folds, cfg.seed)
    perms = ridge.permutations(groups, cfg.permutations, seed)
    labels = np.concatenate([y[None, :], y[perms]])  # (1 + N, n): the true labels first
    pred = ridge.cv_predict(X, folds, ridge.one_hot(labels, n_classes), cfg.ridge)
    got = ridge.score(pred, labels)
    return {m: float(v[0]) for m, v in got.items()}, {m: v[1:] for m, v in got.items()}, len(folds)


def _cv_rows(k: tuple, setting: str, X: np.ndarray, y: np.ndarray, g: np.ndarray, n_classes: int, cfg: ProbeCfg, seed: int) -> list[list]:
    observed, null, n_folds = permutation_cv(X, y, g, n_classes, cfg, seed)
    return [_row(k, setting, m, observed[m], len(y), n_folds, null=stats.null_summary(observed[m], null[m]))
            for m in METRICS]


def held_out_scores(train: tuple, test: tuple, n_classes: int, cfg: ProbeCfg) -> dict[str, tuple[float, float, float]]:
    """metric -> (value, lo, hi) of the ridge probe fitted on ``train`` and scored on ``test``."""
    (X, y), (Xt, yt) = train, test
    H, _ = ridge.hat(X, Xt, cfg.ridge)
    got = {m: float(v) for m, v in ridge.score(H @ ridge.one_hot(y, n_classes), yt).items()}
    lo_hi = {"accuracy": stats.proportion_ci(round(got["accuracy"] * len(yt)), len(yt)),
             "roc_auc": stats.auc_ci(got["roc_auc"], int((yt == 0).sum()), int((yt == 1).sum()))
             if n_classes == 2 else (NAN, NAN)}
    return {m: (got[m], *lo_hi[m]) for m in METRICS}


def _held_rows(k: tuple, setting: str, got: dict, n: int) -> list[list]:
    return [_row(k, setting, m, v, n, 1, lo=lo, hi=hi) for m, (v, lo, hi) in got.items()]


def length_features(ids: list[str], lengths: pd.Series) -> np.ndarray:
    """(n, 2): tokens and log tokens of each prompt."""
    n = lengths.reindex(ids).to_numpy(np.float64)
    if np.isnan(n).any():
        raise SafetyDataError("some prompts have no stored length: resume the cache run to complete it")
    return np.stack([n, np.log(np.maximum(n, 1.0))], 1)


def probe_layer(vectors: tuple[list[str], np.ndarray], data: pd.DataFrame, key: tuple, cfg: ProbeCfg,
                lengths: pd.Series | None = None) -> list[list]:
    """Rows (see ``ROW``) for one (hook, layer, position) from its vectors; ``lengths`` (prompt_id ->
    tokens) adds the length-only baseline."""
    rows: list[list] = []
    for problem in cfg.problems:
        classes = PROBLEMS[problem]
        k = (problem, *key)
        seed = stable_seed(cfg.seed, "permutations", problem, *map(str, key))
        train = balanced(data, classes, "train", cfg.seed)
        X, y, g = xy(vectors, train, classes)
        rows += _cv_rows(k, "cv", X, y, g, len(classes), cfg, seed)
        if lengths is not None:
            rows += _cv_rows(k, "length", length_features(list(train["prompt_id"]), lengths), y, g, len(classes),
                             cfg, seed + 1)
        if cfg.logistic:
            per_fold = cross_validate(X, y, g, cfg, fold_indices(y, g, cfg.folds, cfg.seed))
            rows += [_row(k, "cv_logistic", m, float(np.mean(v)), len(y), len(v), std=float(np.std(v)))
                     for m, v in per_fold.items()]
        try:
            test = xy(vectors, balanced(data, classes, "test", cfg.seed), classes)
            rows += _held_rows(k, "held_out", held_out_scores((X, y), test[:2], len(classes), cfg), len(test[1]))
        except SafetyDataError:
            pass  # test split too small for this problem (tiny budgets): cross-validation only
        if problem == "biased_vs_counterpart" and has_group_flags(data):
            rows += _group_control(vectors, data, k, cfg, (X, y))
        if problem == "harmful_vs_neutral":
            rows += _cross_source(vectors, data, k, cfg)
    return rows


GROUP_SETTINGS: dict[str, bool] = {"held_out:group_kept": True, "held_out:group_swapped": False}
"""biased_vs_counterpart settings -> the group_kept flag of the test pairs they score."""


def _flag_is(value: object, want: bool) -> bool:
    return value is not None and not pd.isna(value) and bool(value) == want


def has_group_flags(data: pd.DataFrame) -> bool:
    """Whether the stereotype pairs carry group_kept flags (runs stored before the flag existed do not)."""
    return "group_kept" in data and bool(data["group_kept"].notna().any())


def _group_control(vectors: tuple[list[str], np.ndarray], data: pd.DataFrame, k: tuple, cfg: ProbeCfg, train: tuple) -> list[list]:
    """The held-out biased_vs_counterpart probe (fitted on the whole balanced train split) scored on the test
    rows of each kind of pair, balanced within the kind. A kind with fewer than 2 test rows of a class gets
    NaN scores (n: its test rows, folds 0)."""
    classes = PROBLEMS["biased_vs_counterpart"]
    rows: list[list] = []
    for setting, want in GROUP_SETTINGS.items():
        part = data[[_flag_is(v, want) for v in data["group_kept"]]]
        try:
            test = balanced(part, classes, "test", cfg.seed)
        except SafetyDataError:  # too few test pairs of this kind to score
            n = int(((part["split"] == "test") & part["cls"].isin(classes)).sum())
            rows += [_row(k, setting, m, NAN, n, 0) for m in METRICS]
            continue
        Xt, yt, _ = xy(vectors, test, classes)
        rows += _held_rows(k, setting, held_out_scores(train, (Xt, yt), 2, cfg), len(yt))
    return rows


def _cross_source(vectors: tuple[list[str], np.ndarray], data: pd.DataFrame, k: tuple, cfg: ProbeCfg) -> list[list]:
    classes = PROBLEMS["harmful_vs_neutral"]
    present = set(data.loc[data["cls"] == "harmful", "source"])
    rows: list[list] = []
    for src in HARMFUL_SOURCES:
        for dst in HARMFUL_SOURCES:
            if src not in present or dst not in present:
                continue
            try:
                train = balanced(data, classes, "train", cfg.seed, {"harmful": src})
                test = balanced(data, classes, "test", cfg.seed, {"harmful": dst})
            except SafetyDataError:
                continue  # too few prompts of one source (tiny budgets): no cross-source rows
            X, y, _ = xy(vectors, train, classes)
            Xt, yt, _ = xy(vectors, test, classes)
            setting = f"within:{dst}" if src == dst else f"cross:{src}->{dst}"
            rows += _held_rows(k, setting, held_out_scores((X, y), (Xt, yt), 2, cfg), len(yt))
            dm = _mean_difference_score((X, y), (Xt, yt))
            rows += [_row(k, setting.replace(":", "_dm:", 1), m, v[0], len(yt), 1) for m, v in dm.items()]
    return rows


def _mean_difference_score(train: tuple, test: tuple) -> dict[str, list[float]]:
    """The difference-of-means direction as a classifier (no fitted weights to overfit): score =
    projection on mean(class 0) - mean(class 1), threshold halfway between the class means."""
    from sklearn.metrics import roc_auc_score

    X, y = np.asarray(train[0], np.float64), train[1]
    mu0, mu1 = X[y == 0].mean(0), X[y == 1].mean(0)
    r = mu0 - mu1
    s = np.asarray(test[0], np.float64) @ r
    pred = np.where(s > (mu0 @ r + mu1 @ r) / 2, 0, 1)
    auc = roc_auc_score(test[1] == 0, s) if 0 < np.sum(test[1] == 0) < len(test[1]) else np.nan
    return {"accuracy": [float(np.mean(pred == test[1]))], "roc_auc": [float(auc)]}


def run(con: duckdb.DuckDBPyConnection, store: Store, cache_run_id: int, data: pd.DataFrame, cfg: ProbeCfg, hooks: list[str], positions: list[str],
        layers: list[int], progress: bool = True, lengths: pd.Series | None = None) -> pd.DataFrame:
    """Probe every (hook, layer, position), streaming one layer's vectors at a time."""
    rows: list[list] = []
    total = len(hooks) * len(layers) * len(positions)
    it = iter_layers(con, store, cache_run_id, hooks, positions, layers)
    for hook, layer, position, vectors in tqdm(it, total=total, desc="probes", unit="site", disable=not progress):
        rows += probe_layer(vectors, data, (hook, layer, position), cfg, lengths)
    return frame(rows)


def frame(rows: list[list]) -> pd.DataFrame:
    """Rows of ``probe_layer`` as a DataFrame (permutations as a nullable integer)."""
    df = pd.DataFrame(rows, columns=ROW)
    df["permutations"] = df["permutations"].astype("Int64")
    return df


def best_layers(df: pd.DataFrame) -> pd.DataFrame:
    """The best-separating layer per (problem, hook, position), chosen on the train split only, and the
    held-out score that was not used to choose it.

    Rule: highest cross-validated (ridge) ROC-AUC, ties broken by CV accuracy, then the earlier layer.
    shuffled_* = the permutation null's mean at that cell (what shuffled labels score on average);
    margin_* = CV minus it; p_* = the cell's permutation p-value (not corrected for the choice among
    ``layers_compared`` layers: the held-out score, with its interval, is the number to quote).
    """
    key = ["problem", "hook", "position", "layer"]
    long = df.set_index([*key, "setting", "metric"])
    parts = []
    for col, suffix in (("mean", ""), ("null_mean", "_null"), ("null_p95", "_p95"), ("p", "_p"), ("lo", "_lo"),
                        ("hi", "_hi")):
        part = long[col].astype(float).unstack(["setting", "metric"])
        part.columns = [f"{s}_{m}{suffix}" for s, m in part.columns]
        parts.append(part)
    wide = pd.concat(parts, axis=1).reset_index()
    out = []
    for (problem, hook, position), g in wide.groupby(["problem", "hook", "position"]):
        g = g.copy()
        for c in ("cv_roc_auc", "cv_accuracy"):
            if c not in g:
                g[c] = np.nan
        best = g.sort_values(["cv_roc_auc", "cv_accuracy", "layer"], ascending=[False, False, True]).iloc[0]

        def get(col: str) -> float:
            return float(best[col]) if col in best.index and pd.notna(best[col]) else NAN

        row = {"problem": problem, "hook": hook, "position": position, "layer": int(best["layer"]),
               "layers_compared": int(len(g))}
        for m in METRICS:
            row.update({f"cv_{m}": get(f"cv_{m}"), f"shuffled_{m}": get(f"cv_{m}_null"),
                        f"margin_{m}": get(f"cv_{m}") - get(f"cv_{m}_null"), f"null_p95_{m}": get(f"cv_{m}_p95"),
                        f"p_{m}": get(f"cv_{m}_p"), f"held_out_{m}": get(f"held_out_{m}"),
                        f"held_out_{m}_lo": get(f"held_out_{m}_lo"), f"held_out_{m}_hi": get(f"held_out_{m}_hi"),
                        f"length_{m}": get(f"length_{m}")})
        for prefix, name in (("cross:", "cross_source"), ("cross_dm:", "cross_source_dm")):
            for m in METRICS:
                cols = [c for c in g.columns if c.startswith(prefix) and c.endswith(f"_{m}")]
                vals = best[cols].astype(float).dropna() if cols else pd.Series(dtype=float)
                row[f"{name}_{m}"] = float(vals.mean()) if len(vals) else NAN
        out.append(row)
    return pd.DataFrame(out)
