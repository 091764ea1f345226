"""Direction analyses: difference of means, probe directions, selection rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analyses.directions import (
    CANDIDATE_COLUMNS,
    MeanFitter,
    SelectRule,
    diff_of_means,
    directions_layer,
    probe_direction,
    projection_separation,
    select,
)
from analyses.probes import ProbeCfg
from analyses.safety_data import dataset_frame


def test_diff_of_means_matches_plain_loops_in_float64():
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(101, 7)) * 1e3 + 1e4).astype(np.float32)  # large offset: float32 sums would drift
    y = rng.integers(0, 2, 101)
    got, norm = diff_of_means(X, y, chunk=16)
    sums = [[0.0] * 7, [0.0] * 7]
    counts = [0, 0]
    for row, label in zip(X, y):
        counts[label] += 1
        for j in range(7):
            sums[label][j] += float(row[j])
    diff = [sums[0][j] / counts[0] - sums[1][j] / counts[1] for j in range(7)]
    length = sum(v * v for v in diff) ** 0.5
    assert norm == pytest.approx(length, rel=1e-12)
    assert np.allclose(got, np.array(diff) / length, atol=1e-12)
    assert got.dtype == np.float64 and np.linalg.norm(got) == pytest.approx(1.0, abs=1e-12)


def test_mean_fitter_streaming_equals_one_batch():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(50, 4)), rng.integers(0, 3, 50)
    whole = MeanFitter(3, 4).update(X, y).means()
    f = MeanFitter(3, 4)
    for s in range(0, 50, 7):
        f.update(X[s:s + 7], y[s:s + 7])
    assert np.allclose(f.means(), whole) and np.allclose(whole[1], X[y == 1].mean(0))
    with pytest.raises(ValueError, match="no examples"):
        MeanFitter(2, 4).update(X[:3], np.zeros(3, int)).means()


def test_probe_direction_is_in_activation_coordinates():
    """Features on wildly different scales: the probe (fitted on standardised features) must map
    back to the separating direction in the original coordinates."""
    rng = np.random.default_rng(2)
    n, d = 400, 5
    y = np.repeat([0, 1], n // 2)
    X = rng.normal(size=(n, d))
    X[:, 1] += np.where(y == 0, 2.0, -2.0)
    scales = np.array([100.0, 0.01, 5.0, 1.0, 30.0])
    r, _ = probe_direction(X * scales, y, ProbeCfg(C=10.0))
    assert abs(r[1]) > 0.95 and r[1] > 0  # points to class 0, along the informative axis
    assert np.linalg.norm(r) == pytest.approx(1.0)
    sep = projection_separation(r, X * scales, y)
    assert sep["projection_auc"] > 0.97 and sep["projection_d"] > 3


def test_directions_layer_on_synthetic_store_vectors():
    rng = np.random.default_rng(3)
    rows, vecs = [], []
    true = rng.normal(size=12)
    for ds, src, n in [("harmful", "harmbench", 40), ("harmful", "donotanswer", 40), ("toxic", "rtp", 60),
                       ("neutral", "interp", 80)]:
        for i in range(n):
            rows.append({"prompt_id": f"{src}-{i}", "dataset": ds, "source": src, "label": ds, "grp": None})
            vecs.append(rng.normal(size=12) + (3 * true if ds == "harmful" else 0))
    frame = pd.DataFrame(rows)
    data = dataset_frame(frame, 0.3, 0)
    d, m = directions_layer((frame["prompt_id"].tolist(), np.array(vecs)), data, ("resid_pre", 4, "last"),
                            ("harmful",), ProbeCfg())
    dm = np.array(d[0][-1])
    assert d[0][4] == "diff_means" and d[1][4] == "probe" and d[0][6] == d[0][7]  # balanced: n_pos == n_neg
    assert dm @ true / np.linalg.norm(true) > 0.95
    metrics = {row[4]: row[5] for row in m}
    assert metrics["cosine_dm_probe"] > 0.5 and metrics["projection_auc"] > 0.99
    assert metrics["diff_norm"] == pytest.approx(d[0][5])


def _cands(**cols) -> pd.DataFrame:
    n = len(cols["layer"])
    base = {"concept": ["harmful"] * n, "hook": ["resid_pre"] * n, "position": ["last"] * n,
            "separability": [0.99] * n, "projection_d": [2.0] * n, "refusal_drop": [0.0] * n,
            "refusal_logprob_drop": [0.0] * n, "kl": [0.01] * n, "n_refusal": [20] * n}
    return pd.DataFrame({**base, **cols})[CANDIDATE_COLUMNS]


def test_select_rule_prefers_ablation_effect_within_kl_budget():
    c = _cands(layer=[2, 5, 8], refusal_drop=[0.1, 0.3, 0.5], kl=[0.01, 0.05, 0.5])
    out = select(c, SelectRule(kl_max=0.1)).set_index("criterion")
    assert out.loc["ablation", "layer"] == 8  # the raw criterion ignores KL
    assert out.loc["kl", "layer"] == 2
    assert out.loc["chosen", "layer"] == 5 and "largest ablation effect" in out.loc["chosen", "reason"]


def test_select_rule_falls_back_to_separability_without_refusals():
    c = _cands(layer=[2, 5, 8], separability=[0.95, 0.999, 0.97], refusal_drop=[0.05, 0.0, 0.0])
    out = select(c, SelectRule(min_flips=2)).set_index("criterion")
    assert out.loc["chosen", "layer"] == 5 and "no measurable ablation effect" in out.loc["chosen", "reason"]
    assert out.loc["separability", "layer"] == 5
    nothing = select(_cands(layer=[1, 2], kl=[0.5, 0.3]), SelectRule(kl_max=0.1)).set_index("criterion")
    assert nothing.loc["chosen", "layer"] == 2 and "no admissible" in nothing.loc["chosen", "reason"]
    with pytest.raises(ValueError, match="columns"):
        select(pd.DataFrame({"layer": [1]}), SelectRule())
