"""GGUF files as models: check, dequantise once with transformers' GGUF reader, cache as safetensors.

One piece of code serves the embedded SmolLM2, the packaged Gemma 3 270M and any ``.gguf``
file a user names. ``cached_conversion(target, ...)`` builds the cache directory under a
temporary name and renames it when complete, under a file lock, so an interrupted or failed
conversion leaves nothing half-written; the cache is trusted only while its weights match
the size and sha256 recorded in its manifest.
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
from collections.abc import Callable, Iterator
from pathlib import Path

MANIFEST = "interp_manifest.json"


GGUF_FAMILIES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
                 "gemma3": "gemma3_text", "phi3": "phi3", "gpt2": "gpt2", "falcon": "falcon", "stablelm": "stablelm",
                 "starcoder2": "starcoder2"}
"""GGUF ``general.architecture`` -> the model type transformers' GGUF reader builds, for the ones in
``interp.model.families.FAMILIES``; any other is refused before anything is dequantised."""


class GGUFError(RuntimeError):
    """A GGUF file that cannot become a model; the message says why and what to do."""


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


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def architecture(path: Path) -> str:
    """The GGUF's ``general.architecture``, after checking that the file parses whole and that
    transformers' GGUF reader knows the architecture."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): "
                        "pass a .gguf model file, a model directory or a hub id")
    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
        size = path.stat().st_size
        for t in reader.tensors:  # a truncated file has tensors that end past its last byte
            if int(t.data_offset) + int(t.n_bytes) > size:
                raise ValueError(f"tensor {t.name} ends past the end of the file")
    except (ValueError, KeyError, IndexError, OSError, UnicodeDecodeError) as e:
        raise GGUFError(f"GGUF file {path} is corrupt or truncated ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'unreadable'}): download it again") from None
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"GGUF file {path} holds a '{arch}' model, which transformers' GGUF reader cannot read "
                        f"(it reads {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}): convert the checkpoint "
                        "to a Hugging Face directory instead")
    if arch not in GGUF_FAMILIES:
        raise GGUFError(f"GGUF file {path} holds a '{arch}' model, which interp does not support: GGUF files of "
                        f"{', '.join(GGUF_FAMILIES)} work (other families through a Hugging Face directory)")
    return arch


def convert(gguf: Path, out: Path, name: str) -> None:
    """Dequantise ``gguf`` to a float32 model of its own class, saved in ``out`` as safetensors.

    The GGUF loader marks the model quantized, which blocks ``save_pretrained``; the weights
    are already dequantised float32, so a fresh model of the same class without that marker
    holds them (every key must match; a tied unembedding is re-tied).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name
    model = type(quant)(config)
    missing, unexpected = model.load_state_dict(quant.state_dict(), strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise GGUFError(f"GGUF conversion of {gguf.name} does not match {type(quant).__name__}: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def is_valid(target: Path) -> bool:
    """The cached conversion is trusted only if its weights match the recorded size and hash.

    The full sha256 is recomputed whenever the file's size or mtime differs from the last
    verification, so an unchanged file loads in about a second and a changed one is caught.
    """
    manifest = target / MANIFEST
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


def cached_conversion(target: Path, source: str, source_sha256: str, name: str,
                      get_gguf: Callable[[Path], Path]) -> Path:
    """``target``, a verified dequantised model directory, built on first use.

    ``get_gguf(workdir)`` returns the (already verified) GGUF file; it may write it inside
    ``workdir``, a temporary directory deleted afterwards. The result is built under a
    temporary name beside ``target`` and renamed into place when complete.
    """
    if is_valid(target):
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if is_valid(target):  # another process finished it while we waited
            return target
        work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            gguf = get_gguf(work)
            architecture(gguf)
            print(f"interp: dequantising {gguf.name} once into {target} (about a minute)...", file=sys.stderr)
            out = work / "model"
            try:
                convert(gguf, out, name)
            except GGUFError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever transformers raises on a file it cannot map to a model
                first = str(e).splitlines()[0] if str(e) else ""
                raise GGUFError(f"transformers could not build a model from {gguf.name} ({type(e).__name__}: "
                                f"{first[:200]}): the file may be incomplete or of an unsupported variant") from None
            weights = out / "model.safetensors"
            manifest = {"source": source, "source_sha256": source_sha256, "name": name,
                        "weights_size": weights.stat().st_size, "weights_sha256": sha256_file(weights)}
            (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
            if target.exists():
                shutil.rmtree(target)
            os.replace(out, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _known_sha(path: Path) -> str:
    """sha256 of a user's GGUF file, remembered per (path, size, mtime) so a second load is fast."""
    st = path.stat()
    index = cache_dir() / "models" / "gguf-hashes.json"
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    known = json.loads(index.read_text()) if index.exists() else {}
    if key not in known:
        known[key] = sha256_file(path)
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, index)
    return known[key]


def gguf_model_dir(path: Path) -> tuple[Path, str]:
    """(dequantised model directory, revision string) for a user's ``.gguf`` file."""
    path = path.expanduser().resolve()
    architecture(path)  # refuse a bad file before hashing it
    sha = _known_sha(path)
    target = cache_dir() / "models" / f"gguf-{sha[:16]}"
    cached_conversion(target, str(path), sha, path.stem, lambda _work: path)
    return target, f"gguf:{path.name}/sha256:{sha[:12]}"
