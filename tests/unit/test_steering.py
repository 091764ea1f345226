"""Activation addition on several layers at once and at chosen token positions (all, prompt, generated)."""

from __future__ import annotations

import pytest
import torch

from interp.interventions import describe, from_json, to_json
from interp.interventions.directions import ActivationAddition, DirectionError
from interp.model.loading import wrap
from tests.conftest import byte_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def model():
    return wrap(tiny_llama(), byte_tokenizer(chat=False), name="tiny-llama", revision="seed0")


R = tuple(torch.randn(64, generator=torch.Generator().manual_seed(3)).tolist())
IDS = torch.tensor([[5, 17, 99, 42, 7, 120]])


def _logits(loaded):
    with torch.no_grad():
        return loaded.model(input_ids=IDS).logits


def _scores(loaded):
    with torch.no_grad():
        out = loaded.model.generate(input_ids=IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=3,
                                    do_sample=False, output_scores=True, return_dict_in_generate=True,
                                    pad_token_id=256)
    return out.scores


def test_several_layers_equal_nested_single_layer_edits(model):
    multi = ActivationAddition(R, layer=1, alpha=3.0, more_layers=(3, 2))
    assert multi.layers == (1, 2, 3) and "@1,2,3" in multi.label()
    with multi.apply(model):
        got = _logits(model)
    with ActivationAddition(R, layer=1, alpha=3.0).apply(model), ActivationAddition(R, layer=2, alpha=3.0).apply(
            model), ActivationAddition(R, layer=3, alpha=3.0).apply(model):
        want = _logits(model)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert from_json(to_json(multi)) == multi


def test_positions_limit_steering_to_the_prompt_or_the_generated_tokens(model):
    base, plain = _scores(model), _logits(model)
    steered = {}
    for where in ("all", "prompt", "generated"):
        with ActivationAddition(R, layer=1, alpha=8.0, positions=where).apply(model):
            steered[where] = _scores(model)
    torch.testing.assert_close(steered["prompt"][0], steered["all"][0])   # the prompt pass is steered
    torch.testing.assert_close(steered["generated"][0], base[0])          # ... and only it
    assert not torch.allclose(steered["generated"][1], base[1])           # later passes are steered
    with ActivationAddition(R, layer=1, alpha=8.0, positions="generated").apply(model):
        torch.testing.assert_close(_logits(model), plain)   # a plain forward is unchanged


def test_old_specs_keep_their_json_and_bad_positions_are_refused():
    assert set(describe(ActivationAddition(R, layer=1, alpha=1.0))) == {"kind", "direction", "layer", "alpha",
                                                                         "scale", "hook", "name"}
    with pytest.raises(DirectionError, match="not one of all, prompt, generated"):
        ActivationAddition(R, layer=1, alpha=1.0, positions="prefix")
