"""A closed-form ridge probe whose predictions are linear in the labels, so that a permutation null
costs one matrix product per fold instead of one fit per permutation.

For a training set with standardised features Z (fitted on the training rows, as scikit-learn's
StandardScaler) and one-hot targets Y, ridge regression with an intercept predicts, for new rows Z',

    Y' = H Y,   H = Z' Z^T (Z Z^T + lam I)^-1 (I - 11^T / n) + 11^T / n

(the dual form; Z is centred, so the intercept is the mean target). H depends on the features
only: the same H scores the true labels and every permutation of them. The class is the argmax
of Y'; the score for ROC-AUC is Y'[:, c] (binary: Y'[:, 0] - Y'[:, 1]). ``lam`` is ``ridge`` times
the mean squared norm of the standardised training rows, so the penalty does not depend on the
width of the model. Equal to ``sklearn.linear_model.Ridge(alpha=lam)`` on the same features
(tests/unit/test_probes.py checks it).

Folds never depend on the labels (seeded group folds, pairs kept together), so the permutation
test is exact: the statistic is the same function of (X, y) for the true and the permuted labels.
Permutations move labels among items of one exchangeable block: within each group of several
items (a stereotype pair swaps its two labels or not), and among all single items.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def standardise(train: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, other) scaled by the training rows' mean and standard deviation (0 -> 1, as StandardScaler)."""
    train = np.asarray(train, np.float64)
    mean, std = train.mean(0), train.std(0)
    std[std == 0] = 1.0
    return (train - mean) / std, (np.asarray(other, np.float64) - mean) / std


def hat(train: np.ndarray, test: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    """(H (test, train), lam): predictions on ``test`` are H @ Y for training targets Y."""
    Z, Zt = standardise(train, test)
    n = len(Z)
    K = Z @ Z.T
    lam = ridge * max(float(np.trace(K)) / n, 1e-12)  # all-constant features: predict the mean target
    centre = np.eye(n) - 1.0 / n
    return Zt @ Z.T @ np.linalg.solve(K + lam * np.eye(n), centre) + 1.0 / n, lam


def group_folds(groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: groups shuffled with ``seed`` and dealt round-robin into
    min(folds, groups) folds. Labels play no part, which keeps the permutation test exact."""
    uniq, code = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    k = min(folds, len(uniq))
    if k < 2:
        raise ValueError("cross-validation needs at least 2 groups of examples")
    fold_of_group = np.empty(len(uniq), np.int64)
    fold_of_group[np.random.default_rng(seed).permutation(len(uniq))] = np.arange(len(uniq)) % k
    fold = fold_of_group[code]
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """(..., n) integer labels -> (..., n, n_classes) float64."""
    return (np.asarray(y)[..., None] == np.arange(n_classes)).astype(np.float64)


def cv_predict(X: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], Y: np.ndarray, ridge: float) -> np.ndarray:
    """Out-of-fold predictions (..., n, C) for targets Y (..., n, C): each row predicted by the probe
    fitted on the other folds. A leading batch axis scores many label permutations at once."""
    X = np.asarray(X, np.float64)
    out = np.zeros(Y.shape, np.float64)
    for train, test in folds:
        H, _ = hat(X[train], X[test], ridge)
        out[..., test, :] = np.einsum("st,...tc->...sc", H, Y[..., train, :])
    return out


def auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC-AUC along the last axis (ties count half, as sklearn's roc_auc_score); NaN without both classes."""
    ranks = rankdata(scores, axis=-1)
    pos = positive.astype(np.float64)
    n_pos = pos.sum(-1)
    n_neg = pos.shape[-1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * pos).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def score(pred: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and ROC-AUC (binary: class 0 against class 1; more classes: one-vs-rest macro mean
    over the classes present) of predictions (..., n, C) against labels (..., n)."""
    n_classes = pred.shape[-1]
    acc = (pred.argmax(-1) == y).mean(-1)
    if n_classes == 2:
        return {"accuracy": acc, "roc_auc": auc(pred[..., 0] - pred[..., 1], y == 0)}
    per = np.stack([auc(pred[..., c], y == c) for c in range(n_classes)], -1)
    with np.errstate(invalid="ignore"):
        return {"accuracy": acc, "roc_auc": np.nanmean(per, -1) if np.isfinite(per).any() else per[..., 0]}


def permutations(groups: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, items) index arrays: labels[perm] moves labels within each group of several items, and
    among the single items."""
    g = np.asarray(groups).astype(str)
    uniq, code, counts = np.unique(g, return_inverse=True, return_counts=True)
    block = np.where(counts[code] > 1, code, -1)  # singletons form one block
    canon = np.argsort(block, kind="stable")
    keys = block[None, :] * 2.0 + np.random.default_rng(seed).random((n, len(g)))
    out = np.empty((n, len(g)), np.int64)
    out[:, canon] = np.argsort(keys, axis=1, kind="stable")
    return out
