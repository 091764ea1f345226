"""Per-layer linear probes (scikit-learn logistic regression) with controls.

For every (hook, layer, position) and problem in ``safety_data.PROBLEMS``:
- ``cv``: stratified k-fold cross-validation on the balanced train split (pairs kept in one
  fold): accuracy and ROC-AUC, mean and std over folds;
- ``shuffled``: the same cross-validation with permuted labels (should sit at chance);
- ``held_out``: fitted on the whole balanced train split, scored on the balanced test split;
- for biased_vs_counterpart, the same held-out probe scored on each kind of stereotype pair
  (``held_out:group_kept``: the counterpart still names the group, so only the stereotype
  separates the pair; ``held_out:group_swapped``: the group is swapped out, so detecting a
  mention of any group is enough): a probe that reads group mention, not the stereotype, scores
  high on the second and near chance on the first;
- for harmful_vs_neutral, cross-source generalisation ``cross:A->B`` (fit on source A's
  train split, score on source B's test split) beside ``within:B`` (fit and score on B), and
  the same for the difference-of-means classifier (``cross_dm:A->B``, ``within_dm:B``).
Vectors stream from the store one layer at a time; no model is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from analyses.safety_data import HARMFUL_SOURCES, PROBLEMS, SafetyDataError, balanced, iter_layers, xy

METRICS = ("accuracy", "roc_auc")
ROW = ["problem", "hook", "layer", "position", "setting", "metric", "mean", "std", "n", "folds"]


@dataclass(frozen=True)
class ProbeCfg:
    """How probes are fitted and checked."""

    folds: int = 5
    """Cross-validation folds (stratified; stereotype pairs kept within one fold)."""
    C: float = 0.1
    """Inverse L2 strength of the logistic regression (on standardised features)."""
    shuffles: int = 1
    """Shuffled-label control repeats per layer (each a full cross-validation)."""
    seed: int = 0
    """Seed for folds, label shuffles and class balancing."""
    max_iter: int = 2000
    """lbfgs iteration cap."""
    problems: tuple[str, ...] = tuple(PROBLEMS)
    """Which problems to probe (names from safety_data.PROBLEMS)."""

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"probe folds must be at least 2, not {self.folds}")
        if self.C <= 0:
            raise ValueError(f"probe C must be positive, not {self.C}")
        if self.shuffles < 1:
            raise ValueError("shuffled-label controls must be at least 1 per layer")
        bad = [p for p in self.problems if p not in PROBLEMS]
        if bad or not self.problems:
            raise ValueError(f"unknown probe problem '{','.join(bad)}': use some of {', '.join(PROBLEMS)}")
        object.__setattr__(self, "problems", tuple(self.problems))


def make_probe(cfg: ProbeCfg):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=cfg.C, max_iter=cfg.max_iter))


def fold_indices(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that never split a group; fewer folds when a class is too small."""
    from sklearn.model_selection import StratifiedGroupKFold

    k = min(folds, int(np.bincount(y).min()))
    if k < 2:
        raise SafetyDataError("a class has fewer than 2 examples: too few prompts to cross-validate")
    return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups))


def scores(model, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and ROC-AUC (one-vs-rest macro for more than two classes)."""
    from sklearn.metrics import roc_auc_score

    proba = model.predict_proba(X)
    acc = float(np.mean(model.classes_[proba.argmax(1)] == y))
    present = [i for i, c in enumerate(model.classes_) if 0 < np.sum(y == c) < len(y)]
    if len(model.classes_) == 2:
        auc = roc_auc_score(y == model.classes_[1], proba[:, 1]) if present else np.nan
    else:  # one-vs-rest macro average over the classes this test set has
        aucs = [roc_auc_score(y == model.classes_[i], proba[:, i]) for i in present]
        auc = float(np.mean(aucs)) if aucs else np.nan
    return {"accuracy": acc, "roc_auc": float(auc)}


def cross_validate(X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: ProbeCfg,
                   folds: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, list[float]]:
    """Per-fold accuracy and ROC-AUC of a freshly fitted probe on each fold."""
    folds = folds if folds is not None else fold_indices(y, groups, cfg.folds, cfg.seed)
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    with threadpool_limits(1):  # many small fits: threads only add overhead
        for train, test in folds:
            s = scores(make_probe(cfg).fit(X[train], y[train]), X[test], y[test])
            for m in METRICS:
                out[m].append(s[m])
    return out


def _rows(key: tuple, setting: str, per_fold: dict[str, list[float]], n: int) -> list[list]:
    return [[*key, setting, m, float(np.mean(v)), float(np.std(v)) if len(v) > 1 else None, n, len(v)]
            for m, v in per_fold.items()]


def _fit(cfg: ProbeCfg, X: np.ndarray, y: np.ndarray):
    with threadpool_limits(1):
        return make_probe(cfg).fit(X, y)


def _score(model, X: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    with threadpool_limits(1):
        s = scores(model, X, y)
    return {m: [s[m]] for m in METRICS}


def _fit_score(cfg: ProbeCfg, train: tuple, test: tuple) -> dict[str, list[float]]:
    return _score(_fit(cfg, train[0], train[1]), test[0], test[1])


GROUP_SETTINGS: dict[str, bool] = {"held_out:group_kept": True, "held_out:group_swapped": False}
"""biased_vs_counterpart settings -> the group_kept flag of the test pairs they score."""


def _flag_is(value, want: bool) -> bool:
    return value is not None and not pd.isna(value) and bool(value) == want


def has_group_flags(data: pd.DataFrame) -> bool:
    """Whether the stereotype pairs carry group_kept flags (runs stored before the flag existed do not)."""
    return "group_kept" in data and bool(data["group_kept"].notna().any())


def _group_control(vectors, data: pd.DataFrame, k: tuple, cfg: ProbeCfg, model) -> list[list]:
    """The held-out biased_vs_counterpart probe (``model``, fitted on the whole balanced train split)
    scored on the test rows of each kind of pair, balanced within the kind. A kind with fewer than 2
    test rows of a class gets NaN scores (n: its test rows, folds 0)."""
    classes = PROBLEMS["biased_vs_counterpart"]
    rows: list[list] = []
    for setting, want in GROUP_SETTINGS.items():
        part = data[[_flag_is(v, want) for v in data["group_kept"]]]
        try:
            test = balanced(part, classes, "test", cfg.seed)
        except SafetyDataError:  # too few test pairs of this kind to score
            n = int(((part["split"] == "test") & part["cls"].isin(classes)).sum())
            rows += [[*k, setting, m, np.nan, None, n, 0] for m in METRICS]
            continue
        Xt, yt, _ = xy(vectors, test, classes)
        rows += _rows(k, setting, _score(model, Xt, yt), len(yt))
    return rows


def probe_layer(vectors: tuple[list[str], np.ndarray], data: pd.DataFrame, key: tuple, cfg: ProbeCfg) -> list[list]:
    """Rows (see ``ROW``) for one (hook, layer, position) from its vectors."""
    rows: list[list] = []
    for problem in cfg.problems:
        classes = PROBLEMS[problem]
        k = (problem, *key)
        train = balanced(data, classes, "train", cfg.seed)
        X, y, g = xy(vectors, train, classes)
        folds = fold_indices(y, g, cfg.folds, cfg.seed)
        rows += _rows(k, "cv", cross_validate(X, y, g, cfg, folds), len(y))
        shuffled: dict[str, list[float]] = {m: [] for m in METRICS}
        for i in range(cfg.shuffles):
            ys = y[np.random.default_rng([cfg.seed, 1 + i]).permutation(len(y))]
            for m, v in cross_validate(X, ys, g, cfg, fold_indices(ys, g, cfg.folds, cfg.seed)).items():
                shuffled[m] += v
        rows += _rows(k, "shuffled", shuffled, len(y))
        model = None
        try:
            Xt, yt, _ = xy(vectors, balanced(data, classes, "test", cfg.seed), classes)
            model = _fit(cfg, X, y)
            rows += _rows(k, "held_out", _score(model, Xt, yt), len(yt))
        except SafetyDataError:
            pass  # test split too small for this problem (tiny budgets): cross-validation only
        if problem == "biased_vs_counterpart" and has_group_flags(data):
            rows += _group_control(vectors, data, k, cfg, model if model is not None else _fit(cfg, X, y))
        if problem == "harmful_vs_neutral":
            rows += _cross_source(vectors, data, k, cfg)
    return rows


def _cross_source(vectors, data: pd.DataFrame, k: tuple, cfg: ProbeCfg) -> list[list]:
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
            rows += _rows(k, setting, _fit_score(cfg, (X, y), (Xt, yt)), len(yt))
            rows += _rows(k, setting.replace(":", "_dm:", 1), _mean_difference_score((X, y), (Xt, yt)), len(yt))
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


def run(con, store, cache_run_id: int, data: pd.DataFrame, cfg: ProbeCfg, hooks: list[str], positions: list[str],
        layers: list[int], progress: bool = True) -> pd.DataFrame:
    """Probe every (hook, layer, position), streaming one layer's vectors at a time."""
    rows: list[list] = []
    total = len(hooks) * len(layers) * len(positions)
    it = iter_layers(con, store, cache_run_id, hooks, positions, layers)
    for hook, layer, position, vectors in tqdm(it, total=total, desc="probes", unit="site", disable=not progress):
        rows += probe_layer(vectors, data, (hook, layer, position), cfg)
    return pd.DataFrame(rows, columns=ROW)


def best_layers(df: pd.DataFrame) -> pd.DataFrame:
    """The best-separating layer per (problem, hook, position) and its margins over the controls.

    Rule: highest cross-validated ROC-AUC, ties broken by CV accuracy, then held-out AUC and
    accuracy, then the earlier layer. margin_* = CV value minus the shuffled-label control at
    that layer; for harmful_vs_neutral the mean cross-source accuracy/AUC of the probe and of
    the difference-of-means classifier are reported too.
    """
    wide = df.pivot_table(index=["problem", "hook", "position", "layer"], columns=["setting", "metric"],
                          values="mean").sort_index()
    wide.columns = [f"{s}_{m}" for s, m in wide.columns]
    wide = wide.reset_index()
    for setting in ("cv", "shuffled", "held_out"):
        for m in METRICS:
            if f"{setting}_{m}" not in wide:
                wide[f"{setting}_{m}"] = np.nan  # e.g. no held-out rows when the test split is tiny
    out = []
    for (problem, hook, position), g in wide.groupby(["problem", "hook", "position"]):
        keys = ["cv_roc_auc", "cv_accuracy", "held_out_roc_auc", "held_out_accuracy"]
        g = g.sort_values([*keys, "layer"], ascending=[False] * len(keys) + [True])
        best = g.iloc[0]
        row = {"problem": problem, "hook": hook, "position": position, "layer": int(best["layer"]),
               "cv_accuracy": best["cv_accuracy"], "cv_roc_auc": best["cv_roc_auc"],
               "shuffled_accuracy": best["shuffled_accuracy"], "shuffled_roc_auc": best["shuffled_roc_auc"],
               "margin_accuracy": best["cv_accuracy"] - best["shuffled_accuracy"],
               "margin_roc_auc": best["cv_roc_auc"] - best["shuffled_roc_auc"],
               "held_out_accuracy": best["held_out_accuracy"], "held_out_roc_auc": best["held_out_roc_auc"]}
        for prefix, name in (("cross:", "cross_source"), ("cross_dm:", "cross_source_dm")):
            cross = [c for c in g.columns if c.startswith(prefix)]
            for m in METRICS:
                cols = [c for c in cross if c.endswith(f"_{m}")]
                vals = best[cols].astype(float).dropna() if cols else pd.Series(dtype=float)
                row[f"{name}_{m}"] = float(vals.mean()) if len(vals) else np.nan
        out.append(row)
    return pd.DataFrame(out)
