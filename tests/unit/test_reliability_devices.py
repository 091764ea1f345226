"""Models beyond one device: accelerate device maps and offloading through every backend, and
nnsight remote execution (NDIF) up to the network boundary."""

import json

import numpy as np
import pytest
import torch

from interp.capture.backends import NNsightBackend
from interp.capture.batching import encode, pad
from interp.capture.capture import CaptureCfg, capture
from interp.model.loading import ModelCfg, load_model
from interp.model.sites import parse_sites
from store import Store
from store.activations import read_vectors
from store.check import check_store

TEXTS = ["the cat sat on the mat", "hi", "a longer prompt about gardens and rivers", "numbers 1 2 3"]
HOOKS = "resid_pre:0,resid_post,attn_out:2,mlp_out:1,z:3"


@pytest.fixture
def saved(tiny, tmp_path):
    d = tmp_path / "models" / "tiny"
    tiny.model.save_pretrained(d)
    tiny.tokenizer.save_pretrained(d)
    prompts = d.parent / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"q{i}", "text": t}) for i, t in enumerate(TEXTS)))
    return d, str(prompts)


def _vectors(loaded, store, prompts, backend):
    run = capture(loaded, store, CaptureCfg(prompts=prompts, hooks=HOOKS, positions="all", backend=backend,
                                            batch_size=3), progress=False)
    out = {}
    with store.connect(read_only=True) as con:
        for hook in ("resid_pre", "resid_post", "attn_out", "mlp_out", "z"):
            out[hook] = read_vectors(con, store, run, hook, None, "all")
    return out


def _same(a, b):
    for hook, (meta, X) in a.items():
        assert meta.equals(b[hook][0]), hook
        np.testing.assert_allclose(X, b[hook][1], rtol=1e-5, atol=1e-6, err_msg=hook)


def _offloaded(path, embed="cpu"):
    """The model dispatched by accelerate with blocks 1-2 on disk: their parameters sit on
    'meta' and accelerate's hooks load them at each forward. The LM head is tied to the
    embeddings, so it goes where they go (as accelerate's own device maps keep ties together)."""
    from accelerate import dispatch_model

    loaded = load_model(ModelCfg(str(path)))
    device_map = {"model.embed_tokens": embed, "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.layers.2": "disk", "model.layers.3": "cpu", "model.norm": "cpu",
                  "model.rotary_emb": "cpu", "lm_head": embed}
    loaded.model = dispatch_model(loaded.model, device_map=device_map,
                                  offload_dir=str(path.parent / f"offload-{embed}"))
    assert loaded.model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    return loaded


def _logits_match(loaded, path):
    with torch.no_grad():  # the dispatched model still works after the backend let go of it
        ids = torch.tensor([[1, 2, 3]])
        ref = load_model(ModelCfg(str(path))).model(input_ids=ids).logits
        np.testing.assert_allclose(loaded.model(input_ids=ids).logits.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "tl", "nnsight"])
def test_device_map_auto_and_offloaded_models_capture_the_same_vectors(saved, tmp_path, backend):
    path, prompts = saved
    plain = _vectors(load_model(ModelCfg(str(path))), Store(tmp_path / "plain.duckdb"), prompts, backend)
    auto = load_model(ModelCfg(str(path), device_map="auto"))
    assert auto.device == torch.device("cpu")
    _same(_vectors(auto, Store(tmp_path / "auto.duckdb"), prompts, backend), plain)
    off = _offloaded(path)
    store = Store(tmp_path / "off.duckdb")
    _same(_vectors(off, store, prompts, backend), plain)
    assert check_store(store).ok
    _logits_match(off, path)


@pytest.mark.parametrize("backend", ["torch", "tl"])
def test_offloaded_embeddings_send_inputs_to_the_execution_device(saved, tmp_path, backend):
    """Every parameter before the first block on 'meta': inputs go where accelerate runs them.
    (nnsight builds a transformers pipeline, which cannot start on a 'disk' device.)"""
    path, prompts = saved
    off = _offloaded(path, embed="disk")
    assert next(off.model.parameters()).device.type == "meta" and off.device == torch.device("cpu")
    plain = _vectors(load_model(ModelCfg(str(path))), Store(tmp_path / "plain.duckdb"), prompts, backend)
    _same(_vectors(off, Store(tmp_path / "off.duckdb"), prompts, backend), plain)
    _logits_match(off, path)


def _batch(loaded):
    enc = encode(loaded.tokenizer, TEXTS, loaded.is_chat, 256)
    return pad([e.ids for e in enc], loaded.tokenizer.pad_token_id, "left")


def test_nnsight_remote_path_dry_run_matches_local(tiny):
    """remote="local" serialises each trace exactly as for NDIF, then runs it in-process."""
    sites = parse_sites(HOOKS, tiny.n_layers)
    got = {}
    for mode in (False, "local"):
        out = {}
        NNsightBackend(tiny, remote=mode).run(_batch(tiny), sites, lambda s, x, out=out: out.__setitem__(s, x.clone()))
        got[mode] = out
    assert set(got["local"]) == set(sites)
    for s in sites:
        torch.testing.assert_close(got["local"][s], got[False][s], rtol=0, atol=0)


def test_ndif_backend_goes_as_far_as_the_network(tiny, store, tmp_path, monkeypatch):
    """The real remote path up to the socket: model key, API key header, serialised request."""
    import nnsight.modeling.huggingface as nn_hf
    import websocket
    from nnsight.intervention.backends.remote import RemoteBackend

    tiny.name, tiny.revision = "org/tiny-llama", "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setitem(nn_hf._ID_CACHE, tiny.name, tiny.name)  # the hub's canonical id, normally looked up
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    seen = {}
    real_serialize = RemoteBackend._serialize

    def serialize(self, tracer):
        seen["key"] = self.model_key
        seen["blob"] = real_serialize(self, tracer)
        return seen["blob"]

    def connect(url, header=None, **kw):
        seen["url"], seen["header"] = url, header
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(RemoteBackend, "_serialize", serialize)
    monkeypatch.setattr(websocket, "create_connection", connect)
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "hello"}))
    with pytest.raises(RuntimeError, match=r"remote nnsight run of org/tiny-llama on \S+ failed "
                                           r"\(ConnectionRefusedError.*NDIF_API_KEY") as e:
        capture(tiny, store, CaptureCfg(prompts=str(path), hooks="resid_post:1", backend="ndif"), progress=False)
    assert "\n" not in str(e.value)
    assert json.loads(seen["key"].split(":", 1)[1]) == {"repo_id": "org/tiny-llama", "revision": tiny.revision,
                                                        "task": "text-generation"}
    assert seen["url"].endswith("/subscribe") and seen["header"] == {"ndif-api-key": "test-key"}
    assert isinstance(seen["blob"], bytes) and len(seen["blob"]) > 100
    found = {f.check for f in check_store(store).problems}
    assert found == {"runs"}  # nothing half-written: the run waits to be resumed
