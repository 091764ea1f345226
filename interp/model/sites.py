"""Hook-site addressing: TransformerLens hook names as the public vocabulary, mapped onto
the Hugging Face module tree by a small per-architecture table (data, not if-chains).

A *site* is one (hook, layer) pair such as ``blocks.5.hook_resid_post``. Users may write
the short hook name (``resid_post``, every layer), ``resid_post:5`` / ``resid_post:3-7``,
or the full TransformerLens name.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ArchSites:
    """Where each part of a decoder block lives, as attribute paths."""

    layers: str
    """Path from the causal-LM object to the ModuleList of decoder blocks."""
    attn: str
    """Attention module, relative to a block; its output[0] is what attention adds to the residual."""
    mlp: str
    """MLP module, relative to a block; its output is what the MLP adds to the residual."""
    o_proj: str
    """Attention output projection, relative to a block; its input is the per-head z, concatenated."""
    embed: str
    """Token embedding, from the model root."""
    final_norm: str
    """Norm applied after the last block, from the model root."""
    lm_head: str
    """Unembedding, from the model root."""
    proj: dict[str, str]
    """Named linear projections relative to a block (q, k, v, o, gate, up, down), for pruning."""
    conv1d: bool = False
    """GPT-2 style Conv1D weights stored as (in, out) instead of nn.Linear's (out, in)."""


_LLAMA = ArchSites(
    layers="model.layers",
    attn="self_attn",
    mlp="mlp",
    o_proj="self_attn.o_proj",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
    proj={
        "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
        "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    },
)
_GPT2 = ArchSites(
    layers="transformer.h",
    attn="attn",
    mlp="mlp",
    o_proj="attn.c_proj",
    embed="transformer.wte",
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    proj={"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
    conv1d=True,
)

ARCHITECTURES: dict[str, ArchSites] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gpt2": _GPT2,
}
"""model_type (from the HF config) -> site table. Anything else is refused at load time."""

HOOKS: dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "z": "blocks.{layer}.attn.hook_z",
}
"""Short hook name -> TransformerLens hook name template."""


class UnknownSiteError(ValueError):
    """A hook or layer name that does not exist for this model."""


@dataclass(frozen=True, order=True)
class Site:
    hook: str
    layer: int

    @property
    def tl_name(self) -> str:
        return HOOKS[self.hook].format(layer=self.layer)


def unsupported_architecture_message(model_type: str) -> str:
    supported = ", ".join(sorted(ARCHITECTURES))
    return (
        f"unsupported architecture '{model_type}': interp knows {supported}; "
        "add its module paths to interp.model.sites.ARCHITECTURES to use it"
    )


def arch_for(model_type: str) -> ArchSites:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ValueError(unsupported_architecture_message(model_type)) from None


def all_tl_names(n_layers: int) -> list[str]:
    return [t.format(layer=l) for l in range(n_layers) for t in HOOKS.values()]


def _nearest(name: str, n_layers: int) -> str:
    """Closest valid names: short names, plus full names at the layer the user typed (or 0)."""
    m = re.search(r"blocks\.(\d+)", name)
    layer = int(m.group(1)) if m and int(m.group(1)) < n_layers else 0
    pool = list(HOOKS) + [t.format(layer=layer) for t in HOOKS.values()]
    near = difflib.get_close_matches(name, pool, n=3, cutoff=0.5)
    return ", ".join(near) if near else ", ".join(HOOKS)


_TL_RE = re.compile(r"^blocks\.(\d+)\.(?:attn\.)?hook_(\w+)$")
_SHORT_RE = re.compile(r"^(\w+)(?::(\d+)(?:-(\d+))?)?$")


def parse_sites(specs: str | list[str], n_layers: int, layers: list[int] | None = None) -> list[Site]:
    """Turn user hook specs into sites, validating names and layer ranges.

    ``layers`` restricts short names given without an explicit layer.
    """
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    if not specs:
        raise UnknownSiteError("no hooks given: pass e.g. --hooks resid_post,attn_out")
    sites: set[Site] = set()
    for raw in specs:
        spec = raw.strip()
        m = _TL_RE.match(spec)
        if m and spec == HOOKS.get(m.group(2), "").format(layer=m.group(1)):
            found = [(m.group(2), int(m.group(1)), int(m.group(1)))]
        elif (m2 := _SHORT_RE.match(spec)) and m2.group(1) in HOOKS:
            hook = m2.group(1)
            if m2.group(2) is None:
                chosen = layers if layers is not None else list(range(n_layers))
                found = [(hook, l, l) for l in chosen]
            else:
                lo = int(m2.group(2))
                hi = int(m2.group(3)) if m2.group(3) is not None else lo
                found = [(hook, lo, hi)]
        else:
            raise UnknownSiteError(
                f"unknown hook '{spec}'; nearest valid names: {_nearest(spec, n_layers)}"
            )
        for hook, lo, hi in found:
            if not (0 <= lo <= hi < n_layers):
                raise UnknownSiteError(
                    f"layer {lo if lo >= n_layers or lo < 0 else hi} out of range in '{spec}': "
                    f"this model has layers 0..{n_layers - 1}"
                )
            sites.update(Site(hook, l) for l in range(lo, hi + 1))
    return sorted(sites)


def check_hook_names(specs: str | list[str]) -> None:
    """Validate hook names before a model is loaded (layer ranges are checked later)."""
    parse_sites(specs, n_layers=10_000)


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def block(model: nn.Module, arch: ArchSites, layer: int) -> nn.Module:
    return model.get_submodule(arch.layers)[layer]


def site_module(model: nn.Module, arch: ArchSites, site: Site) -> tuple[nn.Module, str]:
    """The module to hook for a site and whether to read its ``input`` or ``output``."""
    blk = block(model, arch, site.layer)
    return {
        "resid_pre": (blk, "input"),
        "resid_post": (blk, "output"),
        "attn_out": (blk.get_submodule(arch.attn), "output"),
        "mlp_out": (blk.get_submodule(arch.mlp), "output"),
        "z": (blk.get_submodule(arch.o_proj), "input"),
    }[site.hook]
