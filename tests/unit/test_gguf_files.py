"""Bad model files give one clear line and leave nothing half-written in the model cache: a file
that is not GGUF, a truncated GGUF, a GGUF of an architecture transformers cannot read, and
Gemma chunk packages that do not reassemble to the sha256 their package states."""

from __future__ import annotations

import numpy as np
import pytest

from interp.model import gemma
from interp.model.gguf import GGUFError, architecture, gguf_model_dir
from interp.model.loading import ModelLoadError, load_model


def _write_gguf(path, arch: str) -> None:
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_tensor("token_embd.weight", np.arange(64 * 16, dtype=np.float32).reshape(64, 16))
    w.add_tensor("output_norm.weight", np.ones(16, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _nothing_written(cache) -> None:
    models = cache / "models"
    left = [p.name for p in models.iterdir() if not p.name.endswith((".lock", ".json"))] if models.exists() else []
    assert left == []


def test_a_whole_gguf_parses_and_names_its_architecture(tmp_path):
    _write_gguf(tmp_path / "ok.gguf", "llama")
    assert architecture(tmp_path / "ok.gguf") == "llama"


@pytest.mark.parametrize("damage,msg", [
    ("garbage", "is not a GGUF file"),
    ("truncated", "corrupt or truncated"),
    ("unreadable_arch", "holds a 'rwkv6' model, which transformers' GGUF reader cannot read"),
    ("unsupported_arch", "holds a 'mamba' model, which interp does not support: GGUF files of llama"),
])
def test_bad_gguf_files_are_refused_in_one_line(tmp_path, cache, damage, msg):
    path = tmp_path / "model.gguf"
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04 not a model" * 10)
    else:
        _write_gguf(path, {"unreadable_arch": "rwkv6", "unsupported_arch": "mamba"}.get(damage, "llama"))
        if damage == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(GGUFError, match=msg) as e:
        gguf_model_dir(path)
    assert "\n" not in str(e.value)
    with pytest.raises(ModelLoadError, match=msg):  # the same line from --model
        load_model(str(path))
    _nothing_written(cache)


def test_a_gguf_transformers_cannot_build_a_model_from(tmp_path, cache):
    _write_gguf(tmp_path / "bare.gguf", "llama")  # parses, but has no config or tokenizer metadata
    with pytest.raises(ModelLoadError, match="transformers could not build a model from bare.gguf") as e:
        load_model(str(tmp_path / "bare.gguf"))
    assert "\n" not in str(e.value)
    _nothing_written(cache)


def test_a_missing_gguf_file(cache):
    with pytest.raises(ModelLoadError, match="GGUF file 'nowhere/model.gguf' does not exist"):
        load_model("nowhere/model.gguf")


def _fake_packages(monkeypatch, tmp_path, chunks: list[bytes], stated: str) -> None:
    """Chunk packages as files, and an assembler package stating ``stated``."""
    files = {}
    for (package, chunk), data in zip(gemma.PARTS, chunks):
        files[(package, f"data/{chunk}")] = tmp_path / chunk
        (tmp_path / chunk).write_bytes(data)
    (tmp_path / "SHA256SUMS").write_text(f"{stated}  {gemma.GGUF_NAME}\n")
    files[(gemma.PACKAGE, "data/SHA256SUMS")] = tmp_path / "SHA256SUMS"
    monkeypatch.setattr(gemma, "_package_member", lambda package, rel: (files[(package, rel)], None))


def test_gemma_chunks_that_miss_the_stated_sha256_are_refused(tmp_path, cache, monkeypatch):
    _fake_packages(monkeypatch, tmp_path, [b"GGUF", b"part", b"of a", b"model"], gemma.SHA256)
    with pytest.raises(GGUFError, match="reassemble to sha256 .* the package states a5fd3b62230aa5ec") as e:
        gemma.gemma_model_dir()
    assert "\n" not in str(e.value)
    _nothing_written(cache)


def test_gemma_package_stating_another_sha256_is_refused(tmp_path, cache, monkeypatch):
    _fake_packages(monkeypatch, tmp_path, [b"a", b"b", b"c", b"d"], "0" * 64)
    with pytest.raises(GGUFError, match="states sha256 0000000000000000..., interp expects a5fd3b62230aa5ec"):
        gemma.gemma_model_dir()
    _nothing_written(cache)


def test_gemma_chunks_are_concatenated_in_order(tmp_path, monkeypatch):
    import hashlib

    chunks = [b"GGUF", b"-one", b"-two", b"-three"]
    whole = b"".join(chunks)
    _fake_packages(monkeypatch, tmp_path, chunks, gemma.SHA256)
    monkeypatch.setattr(gemma, "SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(gemma, "stated_sha256", lambda: gemma.SHA256)
    out = gemma.assemble(tmp_path / "whole.gguf")
    assert out.read_bytes() == whole and not (tmp_path / "whole.part").exists()


def test_gguf_families_are_supported_families():
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from interp.model.families import FAMILIES
    from interp.model.gguf import GGUF_FAMILIES

    assert set(GGUF_FAMILIES.values()) <= set(FAMILIES) and set(GGUF_FAMILIES) <= set(GGUF_SUPPORTED_ARCHITECTURES)
