"""Probes and the safety dataset on synthetic data, checked against hand-rolled computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analyses import probes
from analyses.probes import ProbeCfg, best_layers, cross_validate, fold_indices, probe_layer
from analyses.safety_data import (
    SafetyDataError,
    assign_splits,
    balanced,
    dataset_frame,
    prompt_class,
    xy,
)


def _blobs(n: int, d: int, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    X = rng.normal(size=(n, d))
    X[:, 0] += np.where(y == 0, shift, -shift)
    return X, y


def _hand_accuracy(pred, y) -> float:
    right = 0
    for p, t in zip(pred, y):
        right += int(p == t)
    return right / len(y)


def _hand_auc(score, y) -> float:
    """Probability that a random positive (y == 1) outscores a random negative; ties count half."""
    pos = [s for s, t in zip(score, y) if t == 1]
    neg = [s for s, t in zip(score, y) if t == 0]
    total = 0.0
    for p in pos:
        for q in neg:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos) * len(neg))


def test_perfectly_separable_data_scores_one():
    X, y = _blobs(120, 10, shift=20.0)
    res = cross_validate(X, y, np.arange(len(y)), ProbeCfg(folds=5))
    assert res["accuracy"] == [1.0] * 5 and res["roc_auc"] == [1.0] * 5


def test_cross_validation_matches_hand_rolled_loop():
    X, y = _blobs(200, 8, shift=0.6, seed=3)
    cfg = ProbeCfg(folds=4, C=0.5)
    groups = np.arange(len(y))
    folds = fold_indices(y, groups, 4, seed=0)
    got = cross_validate(X, y, groups, cfg, folds)
    seen = np.zeros(len(y), int)
    for i, (train, test) in enumerate(folds):
        seen[test] += 1
        assert abs(np.mean(y[test]) - 0.5) < 0.05  # stratified
        model = probes.make_probe(cfg).fit(X[train], y[train])
        scores = model.decision_function(X[test])
        pred = [1 if s > 0 else 0 for s in scores]
        assert got["accuracy"][i] == pytest.approx(_hand_accuracy(pred, y[test]), abs=1e-12)
        assert got["roc_auc"][i] == pytest.approx(_hand_auc(list(scores), list(y[test])), abs=1e-12)
    assert (seen == 1).all()  # every example tested exactly once
    assert 0.6 < np.mean(got["accuracy"]) < 0.9


def test_multiclass_auc_is_one_vs_rest_mean():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 40)
    X = rng.normal(size=(120, 6))
    X[np.arange(120), y] += 1.5
    folds = fold_indices(y, np.arange(120), 3, 0)
    got = cross_validate(X, y, np.arange(120), ProbeCfg(folds=3), folds)
    train, test = folds[0]
    model = probes.make_probe(ProbeCfg()).fit(X[train], y[train])
    proba = model.predict_proba(X[test])
    hand = np.mean([_hand_auc(list(proba[:, c]), list((y[test] == c).astype(int))) for c in range(3)])
    assert got["roc_auc"][0] == pytest.approx(hand, abs=1e-12)


def _synthetic_dataset(n: int = 60, d: int = 16, seed: int = 0):
    """Prompts of every class with vectors in which harmful/toxic/biased are shifted."""
    rng = np.random.default_rng(seed)
    rows, vecs = [], []
    spec = [("harmful", "harmbench"), ("harmful", "donotanswer"), ("toxic", "realtoxicityprompts"),
            ("neutral", "interp")]
    for dataset, source in spec:
        for i in range(n):
            rows.append({"prompt_id": f"{source}-{i:03d}", "dataset": dataset, "source": source,
                         "label": dataset, "grp": None})
    for i in range(n):
        for lab, suffix in (("biased", "b"), ("neutral", "n")):
            rows.append({"prompt_id": f"stereo-{i:03d}-{suffix}", "dataset": "stereotypes", "source": "interp",
                         "label": lab, "grp": f"stereo-{i:03d}"})
    frame = pd.DataFrame(rows)
    shift = {"harmful": 0, "toxic": 1, "biased": 2}
    for r in rows:
        v = rng.normal(size=d)
        cls = prompt_class(r["dataset"], r["label"])
        if cls in shift:
            v[shift[cls]] += 5.0
        vecs.append(v)
    return frame, (frame["prompt_id"].tolist(), np.array(vecs, np.float32))


def test_splits_are_fixed_stratified_and_keep_pairs():
    frame, _ = _synthetic_dataset()
    held = {"harmbench-000", "toxic-x"}
    data = dataset_frame(frame, 0.25, seed=0, heldout=held)
    again = dataset_frame(frame.sample(frac=1, random_state=5), 0.25, seed=0, heldout=held)
    assert data.equals(again)  # order of input does not matter
    assert data.set_index("prompt_id").loc["harmbench-000", "split"] == "heldout"
    for (_ds, _src), g in data[data["split"] != "heldout"].groupby(["dataset", "source"]):
        assert abs((g["split"] == "test").mean() - 0.25) < 0.05
    pairs = data[data["dataset"] == "stereotypes"].groupby("grp")["split"].nunique()
    assert (pairs == 1).all()
    other = dataset_frame(frame, 0.25, seed=1)
    assert not other["split"].equals(data["split"])
    with pytest.raises(SafetyDataError, match="between 0 and 1"):
        assign_splits(frame.assign(cls="x"), 1.5, 0)


def test_balanced_subsets_are_equal_sized_and_seeded():
    frame, _ = _synthetic_dataset()
    data = dataset_frame(frame, 0.25, seed=0, heldout={f"interp-{i:03d}" for i in range(20)})
    b = balanced(data, ("harmful", "neutral"), "train", seed=0)
    counts = b["cls"].value_counts()
    assert counts["harmful"] == counts["neutral"] == (data[(data.cls == "neutral") & (data.split == "train")]).shape[0]
    assert b.equals(balanced(data, ("harmful", "neutral"), "train", seed=0))
    only = balanced(data, ("harmful", "neutral"), "test", 0, {"harmful": "donotanswer"})
    assert set(only.loc[only.cls == "harmful", "source"]) == {"donotanswer"}
    with pytest.raises(SafetyDataError, match="too few prompts"):
        balanced(data, ("harmful", "neutral"), "heldout", 0)


def test_probe_layer_rows_and_controls():
    frame, vectors = _synthetic_dataset(n=60)
    data = dataset_frame(frame, 0.3, seed=0)
    lengths = pd.Series({p: float(5 + i % 7) for i, p in enumerate(vectors[0])})  # unrelated to the class
    rows = probes.frame(probe_layer(vectors, data, ("resid_post", 3, "last"), ProbeCfg(folds=4, permutations=100),
                                    lengths))
    cv = rows[(rows.setting == "cv") & (rows.metric == "accuracy")].set_index("problem")
    assert (cv["mean"] > 0.9).all(), cv
    # the permutation null: at chance, and the planted signal beats every permutation
    assert (abs(cv["null_mean"].drop("multiclass") - 0.5) < 0.1).all()
    assert abs(cv.loc["multiclass", "null_mean"] - 0.25) < 0.08
    assert cv["p"].tolist() == pytest.approx([1 / 101] * 4)
    assert (cv["permutations"] == 100).all() and (cv["folds"] == 4).all()
    length = rows[(rows.setting == "length") & (rows.metric == "roc_auc")].set_index("problem")
    assert (length["p"] > 0.01).all() and (length["mean"] < 0.8).all()  # length carries no class signal here
    logistic = rows[rows.setting == "cv_logistic"]
    assert (logistic["folds"] == 4).all() and logistic["std"].notna().all() and logistic["p"].isna().all()
    held = rows[(rows.setting == "held_out") & (rows.metric == "accuracy")]
    assert ((held["lo"] <= held["mean"]) & (held["mean"] <= held["hi"])).all()
    settings = set(rows.loc[rows.problem == "harmful_vs_neutral", "setting"])
    assert {"cross:harmbench->donotanswer", "cross:donotanswer->harmbench", "within:harmbench"} <= settings
    cross = rows[(rows.setting == "cross:harmbench->donotanswer") & (rows.metric == "roc_auc")]["mean"].iloc[0]
    assert cross > 0.9  # the synthetic harmful shift is shared by both sources
    dm = rows[(rows.setting == "cross_dm:harmbench->donotanswer")].set_index("metric")["mean"]
    assert dm["roc_auc"] > 0.9 and dm["accuracy"] > 0.8 and "within_dm:donotanswer" in settings


def test_mean_difference_classifier_matches_hand_computation():
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(40, 3)), np.repeat([0, 1], 20)
    X[y == 0, 2] += 1.0
    Xt, yt = rng.normal(size=(30, 3)), np.repeat([0, 1], 15)
    Xt[yt == 0, 2] += 1.0
    got = probes._mean_difference_score((X, y), (Xt, yt))
    mu0 = [sum(X[i, j] for i in range(40) if y[i] == 0) / 20 for j in range(3)]
    mu1 = [sum(X[i, j] for i in range(40) if y[i] == 1) / 20 for j in range(3)]
    r = [a - b for a, b in zip(mu0, mu1)]
    cut = (sum(a * b for a, b in zip(mu0, r)) + sum(a * b for a, b in zip(mu1, r))) / 2
    scores = [sum(Xt[i, j] * r[j] for j in range(3)) for i in range(30)]
    assert got["accuracy"][0] == pytest.approx(_hand_accuracy([0 if v > cut else 1 for v in scores], yt))
    assert got["roc_auc"][0] == pytest.approx(_hand_auc(scores, list((yt == 0).astype(int))))


def test_shuffled_control_near_chance_on_pure_noise():
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(300, 30)), np.repeat([0, 1], 150)
    perm = rng.permutation(300)
    res = cross_validate(X, y[perm], np.arange(300), ProbeCfg(folds=5))
    assert abs(np.mean(res["accuracy"]) - 0.5) < 0.08 and abs(np.mean(res["roc_auc"]) - 0.5) < 0.08


def test_best_layer_and_margins():
    nan = float("nan")
    rows = []
    for layer, acc in [(0, 0.6), (1, 0.95), (2, 0.95)]:
        auc = {0: 0.62, 1: 0.99, 2: 0.99}[layer]
        held = {0: 0.99, 1: 0.8, 2: 0.9}[layer]  # held-out scores must not sway the choice
        for setting, a, u in [("cv", acc, auc), ("held_out", held, held), ("length", 0.55, 0.56),
                              ("cross:harmbench->donotanswer", 0.8, 0.85), ("cross:donotanswer->harmbench", 0.7, 0.75)]:
            null = [0.5, 0.6, 0.002, 500] if setting == "cv" else [nan, nan, nan, None]
            lo_hi = [held - 0.1, held + 0.05] if setting == "held_out" else [nan, nan]
            rows += [["harmful_vs_neutral", "resid_pre", layer, "last", setting, m, v, 0.01, 50, 5, *lo_hi,
                      *(null if m == "accuracy" else [0.48, 0.62, 0.004, 500] if setting == "cv" else null)]
                     for m, v in (("accuracy", a), ("roc_auc", u))]
    best = best_layers(probes.frame(rows)).iloc[0]
    assert best["layer"] == 1 and best["layers_compared"] == 3  # CV ties go to the earlier layer
    assert best["margin_accuracy"] == pytest.approx(0.45) and best["margin_roc_auc"] == pytest.approx(0.51)
    assert best["shuffled_roc_auc"] == 0.48 and best["null_p95_roc_auc"] == 0.62 and best["p_roc_auc"] == 0.004
    assert (best["held_out_accuracy"], best["held_out_accuracy_lo"], best["held_out_accuracy_hi"]) == \
        pytest.approx((0.8, 0.7, 0.85))
    assert best["length_roc_auc"] == 0.56 and best["cross_source_accuracy"] == pytest.approx(0.75)


def test_xy_reports_missing_vectors():
    frame, (ids, X) = _synthetic_dataset(n=10)
    data = dataset_frame(frame, 0.3, 0)
    with pytest.raises(SafetyDataError, match="no stored vector"):
        xy((ids[1:], X[1:]), data, ("harmful", "toxic", "biased", "counterpart", "neutral"))


def test_probe_cfg_validation():
    with pytest.raises(ValueError, match="unknown probe problem 'nope'"):
        ProbeCfg(problems=("nope",))
    with pytest.raises(ValueError, match="permutations must be at least 1"):
        ProbeCfg(permutations=0)
    with pytest.raises(ValueError, match="at least 2"):
        ProbeCfg(folds=1)
