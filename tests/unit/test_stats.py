"""The statistics behind every reported comparison (analyses/stats.py, analyses/ridge.py): permutation
p-values that are uniform without signal and minimal with a planted one, the closed-form ridge probe
against scikit-learn, paired intervals that cover a known difference at their nominal rate, the
detectable-effect formula against simulated power, and headlines that say when a change is noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analyses import ridge, stats
from analyses.probes import ProbeCfg, permutation_cv

N_PERM = 200


def _cell(rng, n=40, d=12, shift=0.0):
    """One independent synthetic cell: balanced labels, Gaussian features, feature 0 shifted by class."""
    y = rng.permutation(np.repeat([0, 1], n // 2))
    X = rng.normal(size=(n, d))
    X[:, 0] += shift * (y == 0)
    return X, y


def test_permutation_pvalues_are_uniform_without_signal_and_nulls_hold_the_nominal_rate():
    rng = np.random.default_rng(0)
    cfg = ProbeCfg(folds=4, permutations=N_PERM)
    p_auc, inside = [], []
    for cell in range(200):  # 200 independent cells: fresh data, fresh labels, fresh permutations
        X, y = _cell(rng)
        observed, null, _ = permutation_cv(X, y, np.arange(len(y)).astype(str), 2, cfg, seed=1000 + cell)
        p_auc.append(stats.permutation_p(observed["roc_auc"], null["roc_auc"]))
        inside.append(observed["roc_auc"] <= np.quantile(null["roc_auc"], 0.95))
    assert sps.kstest(p_auc, "uniform").pvalue > 0.01
    assert 0.90 <= np.mean(inside) <= 0.99  # inside the null band (below its 95th percentile) ~95% of the time
    assert 0.01 <= np.mean(np.array(p_auc) <= 0.05) <= 0.10


def test_planted_signal_gets_the_smallest_p_value():
    X, y = _cell(np.random.default_rng(1), n=60, shift=4.0)
    observed, null, folds = permutation_cv(X, y, np.arange(60).astype(str), 2, ProbeCfg(folds=5, permutations=N_PERM),
                                           seed=3)
    assert folds == 5 and observed["accuracy"] > 0.9 and observed["roc_auc"] > 0.95
    for m in ("accuracy", "roc_auc"):
        s = stats.null_summary(observed[m], null[m])
        assert s["p"] == pytest.approx(1 / (1 + N_PERM)) and s["permutations"] == N_PERM
        assert s["null_mean"] < s["null_p95"] < observed[m]


def test_permutation_p_counts_ties_and_the_observed_draw():
    assert stats.permutation_p(0.7, [0.1, 0.7, 0.9, 0.2]) == pytest.approx(3 / 5)
    assert stats.permutation_p(1.0, np.zeros(99)) == pytest.approx(1 / 100)


def test_ridge_cross_validation_matches_scikit_learn_fold_by_fold():
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 30)) * rng.uniform(0.1, 5, size=30)
    y = rng.integers(0, 3, size=50)
    folds = ridge.group_folds(np.arange(50).astype(str), 5, seed=0)
    Y = ridge.one_hot(y, 3)
    got = ridge.cv_predict(X, folds, Y, ridge=0.7)
    for train, test in folds:
        scaler = StandardScaler().fit(X[train])
        _, lam = ridge.hat(X[train], X[test], 0.7)
        want = Ridge(alpha=lam).fit(scaler.transform(X[train]), Y[train]).predict(scaler.transform(X[test]))
        np.testing.assert_allclose(got[test], want, atol=1e-9)
    perms = ridge.permutations(np.arange(50).astype(str), 3, seed=0)
    batch = ridge.cv_predict(X, folds, ridge.one_hot(y[perms], 3), ridge=0.7)  # all permutations in one product
    np.testing.assert_allclose(batch[1], ridge.cv_predict(X, folds, ridge.one_hot(y[perms[1]], 3), 0.7), atol=1e-12)


def test_scores_match_scikit_learn_including_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    s = np.round(rng.normal(size=(4, 30)), 1)  # ties
    pos = rng.random((4, 30)) < 0.5
    for row in range(4):
        assert ridge.auc(s, pos)[row] == pytest.approx(roc_auc_score(pos[row], s[row]), abs=1e-12)
    pred = rng.normal(size=(30, 3))
    y = rng.integers(0, 3, 30)
    got = ridge.score(pred, y)
    assert got["accuracy"] == pytest.approx(np.mean(pred.argmax(1) == y))
    assert got["roc_auc"] == pytest.approx(np.mean([roc_auc_score(y == c, pred[:, c]) for c in range(3)]))


def test_permutations_stay_within_pairs_and_folds_ignore_labels():
    groups = np.array(["a", "a", "b", "b", "c", "d", "e", "f"])
    perms = ridge.permutations(groups, 200, seed=0)
    assert all(sorted(p) == list(range(8)) for p in perms)
    assert set(map(tuple, perms[:, :2])) == {(0, 1), (1, 0)} and set(map(tuple, perms[:, 2:4])) == {(2, 3), (3, 2)}
    assert set(perms[:, 4:].ravel()) == {4, 5, 6, 7} and len({tuple(p[4:]) for p in perms}) > 10
    folds = ridge.group_folds(groups, 3, seed=1)
    assert sorted(np.concatenate([t for _, t in folds])) == list(range(8))
    for _, test in folds:  # a pair is never split across folds
        assert {0, 1} <= set(test) or not {0, 1} & set(test)


def test_paired_intervals_cover_a_known_difference_at_the_nominal_rate():
    rng = np.random.default_rng(4)
    cover_cont, cover_bin = [], []
    for _ in range(500):
        base = rng.normal(size=40)
        edited = 0.6 * base + rng.normal(scale=0.8, size=40) + 0.3  # true mean difference 0.3
        r = stats.paired(base, edited, resamples=999)
        cover_cont.append(r.lo <= 0.3 <= r.hi)
        u = rng.random(60)  # each item flips 0 -> 1 with p 0.2, 1 -> 0 with p 0.05: difference 0.15
        b = np.where(u < 0.2, 0.0, np.where(u < 0.25, 1.0, (rng.random(60) < 0.5).astype(float)))
        e = np.where(u < 0.2, 1.0, np.where(u < 0.25, 0.0, b))
        r = stats.paired(b, e)
        cover_bin.append(r.lo <= 0.15 <= r.hi)
        assert r.method.startswith("mcnemar")
    assert 0.92 <= np.mean(cover_cont) <= 0.98, np.mean(cover_cont)
    assert 0.92 <= np.mean(cover_bin) <= 0.98, np.mean(cover_bin)


def test_paired_p_values_are_the_exact_tests():
    b = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1], float)
    e = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 1], float)  # 6 items up, none down
    r = stats.paired(b, e)
    assert r.p == pytest.approx(2 * 0.5 ** 6) and r.delta == pytest.approx(0.6) and not r.noise
    d = np.array([0.5, -0.2, 0.3, 0.4, 0.1, 0.6])  # 2^6 sign flips: exact
    r = stats.paired(np.zeros(6), d)
    flips = np.array([[1 if (k >> i) & 1 else -1 for i in range(6)] for k in range(64)]) * d
    want = np.mean(np.abs(flips.mean(1)) >= abs(d.mean()) - 1e-12)
    assert r.p == pytest.approx(want) and r.method == "sign-flip / t"
    same = stats.paired(np.ones(5), np.ones(5))
    assert same.delta == 0 and same.p == 1 and same.noise
    with pytest.raises(ValueError, match="same length"):
        stats.paired([1, 2], [1, 2, 3])


def test_minimum_detectable_effect_has_the_promised_power():
    rng = np.random.default_rng(5)
    for n in (8, 40):
        effect = stats.mde(n, sd=1.0)
        d = rng.normal(loc=effect, size=(4000, n))
        power = np.mean(sps.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05)
        assert abs(power - 0.8) < 0.03, (n, power)
    assert stats.mde(100, 1.0) == pytest.approx((sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) / 10, rel=0.02)
    assert np.isnan(stats.mde(10, 0.0))


def test_held_out_intervals():
    lo, hi = stats.proportion_ci(18, 20)
    assert lo < 0.9 < hi and (lo, hi) == pytest.approx(sps.binomtest(18, 20).proportion_ci(method="exact"))
    lo, hi = stats.auc_ci(1.0, 19, 19)
    assert 0.8 < lo < 1.0 and hi == 1.0  # a perfect small-sample AUC still gets an interval
    lo, hi = stats.auc_ci(0.5, 200, 200)
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.5 * 0.5 / 3 / 200 + 0.5 * 0.5 / 3 / 200), rel=0.05)


def test_random_band_is_a_prediction_interval():
    rng = np.random.default_rng(6)
    hits = []
    for _ in range(2000):
        v = rng.normal(size=6)
        band = stats.random_band(v[:5])
        hits.append(band["lo"] <= v[5] <= band["hi"])
    assert abs(np.mean(hits) - 0.95) < 0.015


def test_compare_items_maps_perplexity_through_nll():
    base = pd.DataFrame({"task": "ppl", "metric": "nll", "item": [f"w{i}" for i in range(20)],
                         "value": np.linspace(3.0, 4.0, 20)})
    point = base.assign(value=base["value"] + 0.05 + 0.01 * np.sin(np.arange(20)))
    out = stats.compare_items(base, point).set_index("metric")
    nll, ppl = out.loc["nll"], out.loc["perplexity"]
    assert ppl["base_value"] == pytest.approx(np.exp(base["value"].mean()))
    assert ppl["value"] == pytest.approx(np.exp(point["value"].mean()))
    assert ppl["lo"] == pytest.approx(ppl["base_value"] * np.expm1(nll["lo"]))
    assert ppl["p"] == nll["p"] and nll["lo"] > 0  # a consistent shift is detected


def test_a_headline_whose_interval_contains_zero_says_so():
    from reports.common import change_text

    noisy = change_text("toxicity", 0.0418, 0.0855, -0.012, 0.099)
    assert noisy == "toxicity 0.0418 -> 0.0855: no detectable change at this budget (95% CI -0.012..+0.099)"
    real = change_text("refusal rate", 0.2, 0.05, -0.25, -0.05)
    assert "no detectable change" not in real and "95% CI -0.25..-0.05" in real and "-0.15" in real
    assert "no interval" in change_text("kl", 0.0, 0.1, None, None)
    assert change_text("toxicity", 0.04, 0.04, 0.0, 0.0) == "toxicity 0.04 -> 0.04: no item changed"


def test_standard_error_is_sd_over_root_n_and_agrees_with_the_evals_helper():
    from analyses.stats import standard_error
    from interp.evals.config import mean_se

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7))
    slow = [np.sqrt(sum((v - row.mean()) ** 2 for v in row) / (len(row) - 1) / len(row)) for row in x]
    np.testing.assert_allclose(standard_error(x, axis=-1), slow, rtol=1e-12)
    assert np.isclose(mean_se(x[0])[1], slow[0]) and mean_se([2.0])[1] is None
    assert np.isnan(standard_error(x[:, :1], axis=-1)).all() and standard_error(x[:, :1], axis=-1).shape == (3,)
