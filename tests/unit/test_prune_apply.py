"""PruneSpec on tiny Llama and GPT-2 models: exact restore, exact sparsity, module selection, Wanda calibration."""

import pytest
import torch

from interp.interventions import from_json, to_json
from interp.interventions.prune import PruneSpec, PruneSpecError
from interp.interventions.pruning import masks
from interp.interventions.pruning.calibdata import CalibData, calibration_windows
from interp.interventions.pruning.calibrate import input_norms, layerwise_norms
from interp.interventions.pruning.norms import MemoryNorms
from interp.interventions.pruning.targets import ModuleSelectionError, all_targets, resolve

CALIB = CalibData(windows=3, length=32)


def _bits(loaded):
    """Every parameter as raw int32 bits (so -0.0 != 0.0 and NaN payloads count)."""
    return {k: v.detach().clone().view(torch.int32) for k, v in loaded.model.state_dict().items()}


def _same_bits(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _logits(loaded):
    ids = torch.tensor([[5, 17, 99, 3, 42, 7, 250, 11]])
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits


SPECS = [
    PruneSpec("magnitude", 0.5),
    PruneSpec("magnitude", 0.3, group="matrix"),
    PruneSpec("magnitude", {"attn": 0.2, "mlp": 0.6}, group="global"),
    PruneSpec("wanda", 0.5, calib=CALIB),
    PruneSpec("wanda", {"attn": 0.2, "mlp": 0.6}, calib=CALIB),
    PruneSpec("wanda", 0.4, group="global", calibration="oneshot", calib=CALIB),
    PruneSpec("wanda", None, structure="2:4", calib=CALIB),
    PruneSpec("magnitude", None, ("mlp",), structure="4:8"),
]


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label())
def test_weights_are_bit_identical_after_exit(request, fixture, spec):
    loaded = request.getfixturevalue(fixture)
    before = _bits(loaded)
    with spec.apply(loaded) as report:
        assert report.totals()["n_pruned"] > 0
        assert not _same_bits(before, _bits(loaded))
    assert _same_bits(before, _bits(loaded))


def test_weights_are_restored_after_an_error_inside(tiny):
    before = _bits(tiny)
    with pytest.raises(RuntimeError, match="boom"), PruneSpec("wanda", 0.5, calib=CALIB).apply(tiny):
        raise RuntimeError("boom")
    assert _same_bits(before, _bits(tiny))


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_pruning_zero_percent_changes_nothing(request, fixture, method):
    loaded = request.getfixturevalue(fixture)
    before, logits = _bits(loaded), _logits(loaded)
    spec = PruneSpec(method, 0.0, calib=CALIB)
    assert spec.is_noop
    with spec.apply(loaded) as report:
        assert _same_bits(before, _bits(loaded))
        assert torch.equal(_logits(loaded), logits)
        assert report.totals()["n_pruned"] == 0


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("rate", [0.3, 0.5, 0.9])
def test_row_group_prunes_exactly_the_rate_in_every_output_row(request, fixture, method, rate):
    loaded = request.getfixturevalue(fixture)
    with PruneSpec(method, rate, calib=CALIB).apply(loaded) as report:
        for t in all_targets(loaded.model, loaded.arch):
            W = t.weight  # (out, in) also for GPT-2's Conv1D
            zeros = (W == 0).sum(1)
            assert (zeros == masks.n_remove(rate, W.shape[1])).all(), (t.layer, t.name)
    df = report.frame()
    assert (df["n_pruned"] == df["n_zero"]).all()  # random init has no zeros of its own
    assert report.totals()["n_pruned"] == sum(masks.n_remove(rate, t.weight.shape[1]) * t.weight.shape[0]
                                              for t in all_targets(loaded.model, loaded.arch))


def test_matrix_and_global_groups_hit_their_counts(tiny):
    targets = all_targets(tiny.model, tiny.arch)
    with PruneSpec("magnitude", 0.37, group="matrix").apply(tiny) as report:
        for t in targets:
            assert int((t.weight == 0).sum()) == masks.n_remove(0.37, t.n_params)
    assert list(report.frame()["n_pruned"]) == [masks.n_remove(0.37, t.n_params) for t in targets]
    total = sum(t.n_params for t in targets)
    ref = masks.global_masks([t.module.weight.abs() for t in targets], 0.37)  # the pure function, pooled
    with PruneSpec("magnitude", 0.37, group="global").apply(tiny) as report:
        zeros = sum(int((t.weight == 0).sum()) for t in targets)
        for t, r in zip(targets, ref):
            assert torch.equal(t.module.weight == 0, r)  # random init has no zeros of its own
    assert zeros == masks.n_remove(0.37, total) == report.totals()["n_pruned"]
    assert report.frame()["sparsity"].nunique() > 1  # one threshold: matrices end up with different sparsities


def test_global_pools_modules_that_share_a_rate(tiny):
    targets = {(t.layer, t.name): t for t in all_targets(tiny.model, tiny.arch)}
    with PruneSpec("magnitude", {"attn": 0.2, "mlp": 0.6}, group="global").apply(tiny) as report:
        by = report.by_module().set_index("module")
    attn = sum(t.n_params for (l, n), t in targets.items() if n in "qkvo")
    mlp = sum(t.n_params for (l, n), t in targets.items() if n in ("gate", "up", "down"))
    assert by.loc[["q", "k", "v", "o"], "n_pruned"].sum() == masks.n_remove(0.2, attn)
    assert by.loc[["gate", "up", "down"], "n_pruned"].sum() == masks.n_remove(0.6, mlp)


def test_single_module_selection_touches_only_that_projection(tiny):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    with PruneSpec("magnitude", 0.5, ("up",)).apply(tiny) as report:
        after = tiny.model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)}
    assert set(report.frame()["module"]) == {"up"}


def test_per_module_rates(tiny):
    with PruneSpec("wanda", {"attn": 0.25, "mlp": 0.75}, calib=CALIB).apply(tiny) as report:
        by = report.by_module().set_index("module")["sparsity"]
    assert by[["q", "k", "v", "o"]].tolist() == [0.25] * 4
    assert by[["gate", "up"]].tolist() == [0.75] * 2 and by["down"] == 0.75


def test_gpt2_refuses_projections_it_does_not_have(tiny_gpt):
    with pytest.raises(ModuleSelectionError, match="no 'gate' projection.*q, k, v, o, up, down, qkv"):
        resolve(tiny_gpt.model, tiny_gpt.arch, (("gate", 0.5),))
    names = {t.name for t in all_targets(tiny_gpt.model, tiny_gpt.arch)}
    assert names == {"q", "k", "v", "o", "up", "down"}


def test_gpt2_prunes_only_the_selected_slice_of_c_attn(tiny_gpt):
    w = tiny_gpt.model.transformer.h[0].attn.c_attn.weight  # Conv1D (in, out): columns are q | k | v
    before = w.detach().clone()
    with PruneSpec("magnitude", 0.5, ("k",)).apply(tiny_gpt) as report:
        d = tiny_gpt.d_model
        zero = (w == 0)
        assert not zero[:, :d].any() and not zero[:, 2 * d:].any()
        assert zero[:, d:2 * d].sum(0).tolist() == [d // 2] * d  # every k output unit lost half its inputs
    assert torch.equal(w, before)
    assert set(report.frame()["module"]) == {"k"} and report.totals()["sparsity"] == 0.5


def test_a_projection_selected_twice_is_refused(tiny):
    with pytest.raises(ModuleSelectionError, match="'q' is selected twice"):
        resolve(tiny.model, tiny.arch, (("attn", 0.2), ("q", 0.5)))


@pytest.mark.parametrize("kwargs,msg", [
    ({"method": "random"}, "unknown pruning method 'random'"),
    ({"rate": 1.5}, "in \\[0, 1\\]"),
    ({"rate": "half"}, "in \\[0, 1\\]"),
    ({"modules": ("ffn",)}, "unknown module 'ffn'"),
    ({"group": "layer"}, "unknown comparison group"),
    ({"structure": "2:4", "rate": 0.3}, "removes exactly 50%"),
    ({"structure": "2:4", "group": "global"}, "use group='row'"),
    ({"method": "wanda", "group": "global"}, "calibration='oneshot'"),
    ({"method": "wanda", "calibration": "twice"}, "unknown Wanda calibration"),
    ({"rate": {"attn": 0.2}, "modules": ("mlp",)}, "not both"),
])
def test_bad_specs_are_refused_with_a_fix(kwargs, msg):
    with pytest.raises(PruneSpecError, match=msg):
        PruneSpec(**kwargs)


@pytest.mark.parametrize("spec", SPECS + [PruneSpec("wanda", 0.5, ("q", "down"), calibration="oneshot")],
                         ids=lambda s: s.label())
def test_specs_round_trip_through_json(spec):
    assert from_json(to_json(spec)) == spec
    assert hash(from_json(to_json(spec))) == hash(spec)


def test_labels_tell_points_apart():
    labels = [s.label() for s in SPECS]
    assert len(set(labels)) == len(labels)
    assert PruneSpec("magnitude", 0.5).label() == "magnitude all=50%"
    assert PruneSpec("wanda", {"attn": 0.2, "mlp": 0.6}).label() == "wanda attn=20%,mlp=60%"
    assert PruneSpec("magnitude", None, structure="2:4").rate == 0.5


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
def test_block_by_block_norms_equal_a_plain_forward(request, fixture):
    """The replayed decoder blocks see exactly what a normal forward pass feeds them."""
    loaded = request.getfixturevalue(fixture)
    windows, _ = calibration_windows(loaded.tokenizer, CALIB)
    targets = all_targets(loaded.model, loaded.arch)
    blocks = loaded.model.get_submodule(loaded.arch.layers)
    fast = layerwise_norms(loaded.model, blocks, targets, windows)
    with input_norms({f"{t.layer}.{t.name}": t.module for t in targets}) as acc, torch.no_grad():
        loaded.model(input_ids=torch.tensor(windows), use_cache=False)
    ref = acc.norms()
    assert fast.keys() == {(t.layer, t.name) for t in targets}
    for (layer, name), v in fast.items():
        torch.testing.assert_close(v, ref[f"{layer}.{name}"], rtol=1e-5, atol=1e-6)
    assert acc.tokens[f"0.{targets[0].name}"] == CALIB.n_tokens


def test_sequential_norms_are_measured_on_the_pruned_prefix(tiny):
    """Block l's stored norms equal a plain forward through the final pruned blocks < l with block l dense."""
    spec = PruneSpec("wanda", 0.6, calib=CALIB)
    dense = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    windows, _ = calibration_windows(tiny.tokenizer, CALIB)
    sess = MemoryNorms()
    with spec.apply(tiny, norms=sess) as report:
        norms = sess.get_norms(report.calib_id)
        targets = all_targets(tiny.model, tiny.arch)
        for layer in range(tiny.n_layers):
            here = [t for t in targets if t.layer == layer]
            pruned = {t.name: t.module.weight.clone() for t in here}
            for t in here:  # block l dense again, blocks < l stay pruned
                t.module.weight.data.copy_(dense[f"model.layers.{layer}.{tiny.arch.proj[t.name]}.weight"])
            with input_norms({t.name: t.module for t in here}) as acc, torch.no_grad():
                tiny.model(input_ids=torch.tensor(windows), use_cache=False)
            for t in here:
                torch.testing.assert_close(norms[(layer, t.name)], acc.norms()[t.name], rtol=1e-5, atol=1e-6)
                t.module.weight.data.copy_(pruned[t.name])
    oneshot = PruneSpec("wanda", 0.6, calibration="oneshot", calib=CALIB)
    sess2 = MemoryNorms()
    with oneshot.apply(tiny, norms=sess2) as rep2:
        dense_norms = sess2.get_norms(rep2.calib_id)
    assert torch.equal(dense_norms[(0, "q")], norms[(0, "q")])  # block 0 sees the same input either way
    assert not torch.allclose(dense_norms[(3, "down")], norms[(3, "down")])


def test_stored_norms_are_reused_and_give_the_same_masks(tiny):
    spec = PruneSpec("wanda", 0.5, calib=CALIB)
    sess = MemoryNorms()
    with spec.apply(tiny, norms=sess) as computed:
        first = {k: (v == 0).clone() for k, v in tiny.model.state_dict().items()}
    with spec.apply(tiny, norms=sess) as found:
        second = {k: (v == 0).clone() for k, v in tiny.model.state_dict().items()}
    with spec.apply(tiny) as alone:  # no source: computed again, the same masks
        third = {k: (v == 0).clone() for k, v in tiny.model.state_dict().items()}
    assert len(sess.computed) == 1
    assert found.totals()["sparsity"] == 0.5 and found.calib_id == computed.calib_id
    assert computed.norms is not None and found.norms is None  # only what an apply computed is stored
    assert alone.norms is not None and len(sess.computed) == 1  # an apply without the source leaves it alone
    assert all(torch.equal(first[k], second[k]) and torch.equal(first[k], third[k]) for k in first)


def test_calibration_windows_avoid_the_evaluation_windows(tiny):
    from interp.data.prompts import book_corpus
    from interp.evals.ppl import make_windows

    exclude = (64, 4096, 0)
    data = CalibData(windows=40, length=48, seed=1, exclude=exclude)
    windows, ds = calibration_windows(tiny.tokenizer, data)
    evals = make_windows(tiny.tokenizer, book_corpus(), 64, 4096, 0)
    ids = tiny.tokenizer("\n\n".join(d for d in book_corpus() if d.strip()), add_special_tokens=False)["input_ids"]
    spans = [i * 64 for i in range(len(ids) // 64) if tuple(ids[i * 64:(i + 1) * 64]) in set(evals.windows)]
    assert len(spans) >= len(evals.windows) == 64
    for start, w in zip(ds["starts"], windows):
        assert ids[start:start + 48] == w
        assert all(start + 48 <= s or s + 64 <= start for s in spans)
    assert windows == calibration_windows(tiny.tokenizer, data)[0]  # seeded
