"""The dequantised embedded model is trusted only while its weights match the recorded hash."""

import json
import os

from interp.model import embedded
from interp.model.gguf import is_valid


def _fake_cache(tmp_path, payload=b"weights" * 1000):
    target = tmp_path / "model"
    target.mkdir()
    (target / "model.safetensors").write_bytes(payload)
    (target / "interp_manifest.json").write_text(json.dumps({
        "weights_size": len(payload), "weights_sha256": embedded.sha256_file(target / "model.safetensors")}))
    return target


def test_valid_cache_is_trusted_and_remembered(tmp_path):
    target = _fake_cache(tmp_path)
    assert is_valid(target)
    meta = json.loads((target / "interp_manifest.json").read_text())
    assert meta["verified_mtime_ns"] == (target / "model.safetensors").stat().st_mtime_ns
    assert is_valid(target)


def test_tampered_weights_are_rejected(tmp_path):
    target = _fake_cache(tmp_path)
    assert is_valid(target)
    w = target / "model.safetensors"
    w.write_bytes(b"WEIGHTS" * 1000)  # same size, other bytes, new mtime
    os.utime(w, ns=(w.stat().st_atime_ns, w.stat().st_mtime_ns + 1_000_000))
    assert not is_valid(target)
    w.write_bytes(b"short")
    assert not is_valid(target)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "c"))
    assert embedded.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("INTERP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert embedded.cache_dir() == tmp_path / "x" / "interp"
