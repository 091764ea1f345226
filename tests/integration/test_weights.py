"""Pruning the real embedded model (dequantised Q4 weights: many exact ties in |W|)."""

import pytest
import torch

from interp.interventions.prune import PruneSpec
from interp.interventions.pruning import masks
from interp.interventions.pruning.calibdata import CalibData, calibration_windows
from interp.interventions.pruning.calibrate import layerwise_norms
from interp.interventions.pruning.targets import all_targets

pytestmark = pytest.mark.integration
CALIB = CalibData(windows=2, length=64)


def loop_row_mask(W: list[list[float]], norms: list[float] | None, rate: float) -> torch.Tensor:
    """The slow reference: score each weight in plain Python, sort each row, prune its lowest k."""
    cols = len(W[0])
    k = masks.n_remove(rate, cols)
    out = []
    for row in W:
        scores = [abs(w) * (norms[j] if norms is not None else 1.0) for j, w in enumerate(row)]
        order = sorted(range(cols), key=lambda j: (scores[j], j))
        pruned = set(order[:k])
        out.append([j in pruned for j in range(cols)])
    return torch.tensor(out)


@pytest.fixture(scope="module")
def real_norms(embedded):
    """One-shot Wanda norms of blocks 0-2 from real calibration text."""
    windows, _ = calibration_windows(embedded.tokenizer, CALIB)
    targets = [t for t in all_targets(embedded.model, embedded.arch) if t.layer <= 2]
    blocks = embedded.model.get_submodule(embedded.arch.layers)
    return layerwise_norms(embedded.model, blocks, targets, windows)


@pytest.mark.parametrize("name", ["down", "k"])
def test_wanda_mask_equals_the_loop_reference_on_real_weights_and_norms(embedded, real_norms, name):
    t = next(t for t in all_targets(embedded.model, embedded.arch) if t.layer == 2 and t.name == name)
    norms = real_norms[(2, name)]
    assert norms.shape == (t.weight.shape[1],) and (norms > 0).all()
    fast = masks.row_mask(masks.wanda_scores(t.weight, norms), 0.5)
    assert torch.equal(fast, loop_row_mask(t.weight.tolist(), norms.tolist(), 0.5))


def test_magnitude_with_quantisation_ties_equals_the_loop_reference(embedded):
    t = next(t for t in all_targets(embedded.model, embedded.arch) if t.layer == 5 and t.name == "o")
    W = t.weight
    assert W.abs().unique().numel() < W.numel() // 4  # the tie-breaking actually matters here
    assert torch.equal(masks.row_mask(masks.magnitude_scores(W), 0.6), loop_row_mask(W.tolist(), None, 0.6))


def test_sequential_wanda_on_the_embedded_model_is_exact_and_reversible(embedded):
    before = {k: v.clone() for k, v in embedded.model.state_dict().items()}
    ids = torch.tensor([embedded.tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        dense = embedded.model(input_ids=ids).logits[0, -1]
    spec = PruneSpec("wanda", 0.5, ("k", "down"), calib=CALIB)
    with spec.apply(embedded) as report, torch.no_grad():
        pruned = embedded.model(input_ids=ids).logits[0, -1]
        by = report.by_module().set_index("module")
    assert set(by.index) == {"k", "down"}
    assert (by["n_pruned"] * 2 == by["n_params"]).all()
    assert (by["sparsity"] >= 0.5).all() and (by["sparsity"] < 0.501).all()  # plus the model's own zeros
    assert not torch.equal(dense, pruned)
    after = embedded.model.state_dict()
    assert all(torch.equal(before[k].view(torch.int32), after[k].view(torch.int32)) for k in before)
