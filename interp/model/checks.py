"""Model problems found before (or right after) loading, each as one line that says what to do.

- ``check_device``: a device this machine does not have (``--device cuda`` without CUDA);
- ``check_files``: a local model directory with truncated or missing weight files, or without
  a tokenizer (transformers would print five lines suggesting sentencepiece);
- ``check_vocab``: a tokenizer that can produce ids the model's embedding does not have (the
  first such prompt would crash a run half-way and leave it stuck at ``running``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "tokenizer_config.json")


class ModelFileError(RuntimeError):
    """A model that cannot be used as given; the message says why and what to do."""


def check_device(device: str | None, device_map: str | None = None) -> None:
    """Refuse a device string torch does not know, or a device this machine does not have."""
    if device_map or not device:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelFileError(f"unknown device '{device}': use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch is built without CUDA" if torch.version.cuda is None else "torch finds no GPU"
            raise ModelFileError(f"--device {device}: this machine has no CUDA device ({why}, "
                                 f"torch {torch.__version__}): use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelFileError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                                 f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelFileError(f"--device {device}: MPS is not available here: use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ModelFileError(f"--device {device}: use cpu, cuda, cuda:N or mps")


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be complete (its header names more bytes than it has)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, too short for a header"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"its header claims {n} bytes but the file has {size}"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "its header is not valid JSON"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and "data_offsets" in t]
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"{size} bytes, its header needs {need}"
    return None


def check_files(path: Path) -> None:
    """A local model directory: every weight file complete, every indexed shard present."""
    name = str(path)
    for index in path.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except ValueError:
            raise ModelFileError(f"{index} is not valid JSON: re-save the model (save_pretrained)") from None
        missing = sorted(s for s in shards if not (path / s).exists())
        if missing:
            raise ModelFileError(f"model directory '{name}' lacks weight file(s) {', '.join(missing[:3])} named in "
                                 f"{index.name}: copy the whole directory again")
    for f in sorted(path.glob("*.safetensors")):
        problem = _safetensors_problem(f)
        if problem:
            raise ModelFileError(f"weights file {f} is truncated or damaged ({problem}): re-save or copy the model "
                                 "again")
    for f in sorted(path.glob("*.bin")):
        if f.name.startswith(("pytorch_model", "model")) and not zipfile.is_zipfile(f):
            raise ModelFileError(f"weights file {f} is truncated or damaged (not a complete torch archive): re-save "
                                 "or copy the model again")


def check_tokenizer_files(path: Path) -> None:
    """A local model directory must carry its tokenizer (transformers' own error is five lines)."""
    if not any((path / t).exists() for t in TOKENIZER_FILES):
        raise ModelFileError(f"model directory '{path}' has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}, ...): "
                             "save it beside the weights with tokenizer.save_pretrained(DIR)")


def tokenizer_error(spec: str, e: Exception) -> ModelFileError:
    first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    return ModelFileError(f"cannot load the tokenizer of '{spec}' ({first}): the model needs its tokenizer "
                          "files (tokenizer.json or tokenizer_config.json with its vocabulary)")


def check_vocab(rows: int | None, tokenizer: PreTrainedTokenizerBase, spec: str) -> None:
    """Refuse a tokenizer with more tokens than the model's input embedding has ``rows`` (checked
    against the config's vocab_size before the weights load, and the real embedding after)."""
    n = len(tokenizer)
    if rows is not None and n > rows:
        raise ModelFileError(f"the tokenizer of '{spec}' has {n} tokens but the model's embedding has {rows} rows: "
                             "token ids past the embedding would crash a run; use the tokenizer saved with these "
                             "weights")
