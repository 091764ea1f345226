"""LoRA healing of a dropped model: held-out windows, learning, determinism, exact restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.evals import ppl
from interp.interventions import from_json, to_json
from interp.interventions.heal import HealCfg, HealError, healed, mlp_targets, training_windows
from interp.interventions.layers import HealedDrop, HealLog, LayerDrop, skip_layers


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(seed))


def _logits(loaded, ids) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(input_ids=ids, use_cache=False).logits


def _snapshot(model) -> dict:
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "grad": [p.requires_grad for p in model.parameters()],
            "modules": [(n, type(m)) for n, m in model.named_modules()], "training": model.training}


def _assert_restored(model, snap) -> None:
    state = model.state_dict()
    assert state.keys() == snap["state"].keys()
    assert all(torch.equal(state[k], v) for k, v in snap["state"].items())
    assert [p.requires_grad for p in model.parameters()] == snap["grad"]
    assert [(n, type(m)) for n, m in model.named_modules()] == snap["modules"]
    assert model.training == snap["training"]


def test_training_windows_leave_out_exactly_the_evaluated_windows(tiny):
    cfg = HealCfg(steps=1, holdout_tokens=2048, holdout_seed=3)
    train, info = training_windows(tiny, cfg)
    ecfg = cfg.eval_cfg()
    length = ppl.window_length(tiny, ecfg)
    docs, source = ppl.corpus_texts(ecfg)
    every = ppl.make_windows(tiny.tokenizer, docs, length, None, 3, "book", source).windows
    scored = ppl.make_windows(tiny.tokenizer, docs, length, ecfg.count("ppl"), 3, "book", source).windows
    assert len(scored) == 8 and info["held_out"] == 8
    assert not set(train) & set(scored)
    assert len(train) + len(scored) == len(every)  # nothing else is lost
    assert all(len(w) == length for w in train)


def test_mlp_targets(tiny, tiny_gpt):
    assert mlp_targets(tiny) == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]
    assert mlp_targets(tiny_gpt) == ["mlp.c_fc", "mlp.c_proj"]


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt"])
def test_healing_learns_is_deterministic_and_restores_the_model(request, fixture):
    loaded = request.getfixturevalue(fixture)
    snap = _snapshot(loaded.model)
    ids = _ids()
    cfg = HealCfg(steps=6, lr=3e-2, batch=2, rank=4, log_every=1, holdout_tokens=512, window=64)
    with skip_layers(loaded, [1]):
        dropped = _logits(loaded, ids)
        with healed(loaded, cfg) as made:
            first = _logits(loaded, ids)
        with healed(loaded, cfg) as made2:
            second = _logits(loaded, ids)
        log, log2 = made.log, made2.log
        assert torch.equal(_logits(loaded, ids), dropped)  # adapters gone, drop still active
    _assert_restored(loaded.model, snap)
    assert not torch.allclose(first, dropped, atol=1e-4), "healing changed nothing"
    torch.testing.assert_close(first, second, rtol=0, atol=1e-5)
    assert list(log["step"]) == list(range(1, 7)) and log["loss"].equals(log2["loss"])
    assert log["loss"].iloc[-2:].mean() < log["loss"].iloc[:2].mean() - 0.05, "training loss did not fall"


def test_healed_drop_is_a_value_and_records_its_log(tiny):
    spec = HealedDrop((2, 1), HealCfg(steps=2, batch=1, holdout_tokens=256, window=32))
    assert spec.layers == (1, 2) and spec.label() == "drop[1-2]+heal2"
    assert from_json(to_json(spec)) == spec
    assert spec != HealedDrop((1, 2), HealCfg(steps=3, batch=1, holdout_tokens=256, window=32))
    snap = _snapshot(tiny.model)
    with pytest.raises(RuntimeError, match="boom"), spec.apply(tiny) as made:
        assert tiny.n_layers == 2
        raise RuntimeError("boom")
    _assert_restored(tiny.model, snap)
    assert isinstance(made, HealLog) and list(made.log["step"]) == [1, 2]
    b = {n: m for n, m in made.adapters.items() if "lora_B" in n}  # lora_B starts at zero: trained ones moved
    assert len(b) == len(made.adapters) // 2 > 0 and all(np.abs(m).max() > 0 for m in b.values())
    assert LayerDrop((1, 2)).label() + "+heal2" == spec.label()


def test_bad_heal_settings_are_refused():
    with pytest.raises(HealError, match="steps must be at least 1"):
        HealCfg(steps=0)
    with pytest.raises(HealError, match="rank"):
        HealCfg(steps=1, rank=0)
    with pytest.raises(HealError, match="unknown heal corpus"):
        HealCfg(steps=1, corpus="web")
    with pytest.raises(HealError, match="learning rate"):
        HealCfg(steps=1, lr=0)
