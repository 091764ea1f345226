"""Pruning masks against slow, obviously-correct references (plain loops over rows and sorted lists)."""

import pytest
import torch

from interp.interventions.pruning import masks


def _quantized(rows, cols, seed, levels=8.0):
    """Random weights on a coarse grid, so |w| has many ties (like the dequantised embedded model)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * levels).round() / levels


def _random(rows, cols, seed):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def ref_k(rate, n):
    """round(rate * n), halves up, computed with exact fractions."""
    from fractions import Fraction

    x = Fraction(str(rate)) * n
    return int(x + Fraction(1, 2)) if x.denominator != 1 else int(x)


def ref_row_mask(scores, rate):
    """Loop over rows: sort (score, column) pairs, prune the first k."""
    rows, cols = scores.shape
    k = ref_k(rate, cols)
    out = torch.zeros(rows, cols, dtype=torch.bool)
    for i in range(rows):
        order = sorted(range(cols), key=lambda j: (float(scores[i, j]), j))
        for j in order[:k]:
            out[i, j] = True
    return out


def ref_lowest(values, k):
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    chosen = set(order[:k])
    return [i in chosen for i in range(len(values))]


def ref_wanda_mask(W, norms, rate):
    """Wanda written out: score every weight with explicit loops, then prune per row."""
    rows, cols = W.shape
    scores = torch.empty(rows, cols)
    for i in range(rows):
        for j in range(cols):
            scores[i, j] = abs(float(W[i, j])) * float(norms[j])
    return ref_row_mask(scores, rate)


def ref_nm_mask(scores, n, m):
    rows, cols = scores.shape
    out = torch.zeros(rows, cols, dtype=torch.bool)
    for i in range(rows):
        for g in range(0, cols, m):
            order = sorted(range(g, g + m), key=lambda j: (float(scores[i, j]), j))
            for j in order[:m - n]:
                out[i, j] = True
    return out


@pytest.mark.parametrize("rate,n,expect", [(0.0, 10, 0), (1.0, 10, 10), (0.29, 100, 29), (0.5, 7, 4),
                                           (0.7, 10, 7), (0.3, 10, 3), (0.125, 8, 1)])
def test_n_remove_rounds_half_up_and_survives_float_error(rate, n, expect):
    assert masks.n_remove(rate, n) == expect == ref_k(rate, n)


def test_n_remove_rejects_rates_outside_0_1():
    with pytest.raises(masks.MaskError, match="in \\[0, 1\\]"):
        masks.n_remove(1.5, 10)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.33, 0.5, 0.77, 0.9, 1.0])
@pytest.mark.parametrize("make", [_quantized, _random])
def test_row_mask_equals_loop_reference_and_prunes_exactly_k_per_row(rate, make):
    s = make(12, 37, seed=int(rate * 100)).abs()
    mask = masks.row_mask(s, rate)
    assert torch.equal(mask, ref_row_mask(s, rate))
    assert (mask.sum(1) == ref_k(rate, 37)).all()


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.61, 0.9, 1.0])
def test_matrix_mask_equals_sorted_reference(rate):
    s = _quantized(9, 23, seed=3).abs()
    mask = masks.matrix_mask(s, rate)
    ref = torch.tensor(ref_lowest(s.reshape(-1).tolist(), ref_k(rate, s.numel()))).view_as(s)
    assert torch.equal(mask, ref)
    assert int(mask.sum()) == ref_k(rate, s.numel())


@pytest.mark.parametrize("rate", [0.1, 0.45, 0.8])
def test_global_masks_pool_every_matrix_under_one_threshold(rate):
    mats = [_quantized(5, 8, seed=1).abs(), _quantized(3, 16, seed=2).abs() * 2, _random(4, 4, seed=3).abs()]
    got = masks.global_masks(mats, rate)
    flat = [float(x) for m in mats for x in m.reshape(-1)]
    ref = ref_lowest(flat, ref_k(rate, len(flat)))
    assert [bool(x) for g in got for x in g.reshape(-1)] == ref
    assert sum(int(g.sum()) for g in got) == ref_k(rate, len(flat))
    # the threshold is shared: every kept score is >= every pruned score
    kept = [x for g, m in zip(got, mats) for x in m[~g].tolist()]
    pruned = [x for g, m in zip(got, mats) for x in m[g].tolist()]
    assert min(kept) >= max(pruned)


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("seed", [0, 1])
def test_wanda_mask_equals_explicit_loop_reference(rate, seed):
    W = _random(10, 24, seed)
    norms = _random(1, 24, seed + 10).abs().squeeze(0) * 5
    fast = masks.row_mask(masks.wanda_scores(W, norms), rate)
    assert torch.equal(fast, ref_wanda_mask(W, norms, rate))


@pytest.mark.parametrize("c", [1.0, 2.0, 0.37])
def test_wanda_with_equal_input_norms_is_per_row_magnitude(c):
    W = _random(16, 40, seed=5)
    norms = torch.full((40,), c)
    for rate in (0.25, 0.5, 0.75):
        assert torch.equal(masks.row_mask(masks.wanda_scores(W, norms), rate),
                           masks.row_mask(masks.magnitude_scores(W), rate))


def test_wanda_scores_check_the_norm_shape():
    with pytest.raises(masks.MaskError, match="5 inputs"):
        masks.wanda_scores(torch.ones(3, 5), torch.ones(4))


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 4)])
@pytest.mark.parametrize("make", [_quantized, _random])
def test_nm_mask_prunes_m_minus_n_in_every_group(n, m, make):
    s = make(6, 32, seed=n * 10 + m).abs()
    mask = masks.nm_mask(s, n, m)
    per_group = mask.view(6, 32 // m, m).sum(-1)
    assert (per_group == m - n).all()
    assert torch.equal(mask, ref_nm_mask(s, n, m))


def test_two_four_has_exactly_two_zeros_in_every_group_of_four():
    mask = masks.nm_mask(_random(8, 64, seed=9).abs(), 2, 4)
    assert (mask.view(8, 16, 4).sum(-1) == 2).all()


@pytest.mark.parametrize("bad,msg", [("2-4", "unknown structure"), ("4:2", "0 < N < M"), ("0:4", "0 < N < M"),
                                     ("2:4:8", "unknown structure"), ("a:b", "unknown structure")])
def test_parse_nm_rejects_bad_patterns(bad, msg):
    with pytest.raises(masks.MaskError, match=msg):
        masks.parse_nm(bad)


def test_nm_needs_inputs_divisible_by_m():
    with pytest.raises(masks.MaskError, match="multiple of 8"):
        masks.nm_mask(torch.rand(2, 12), 4, 8)


def test_lowest_k_mask_breaks_ties_by_position():
    flat = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 2.0])
    assert masks.lowest_k_mask(flat, 3).tolist() == [True, True, False, False, True, False]
    assert masks.lowest_k_mask(flat, 0).sum() == 0 and masks.lowest_k_mask(flat, 6).all()
