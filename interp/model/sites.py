"""Hook-site addressing: TransformerLens hook names as the public vocabulary, mapped onto
the Hugging Face module tree by a per-model table (data, not if-chains) that
``interp.model.families`` reads from TransformerLens's architecture adapters.

A *site* is one (hook, layer) pair such as ``blocks.5.hook_resid_post``. Users may write
the short hook name (``resid_post``, every layer), ``resid_post:5`` / ``resid_post:3-7``,
or the full TransformerLens name. Sites mean the same in every family: ``attn_out`` and
``mlp_out`` are what the sublayer adds to the residual stream (after a post-sublayer norm
where there is one, times the residual multiplier where there is one), ``z`` is the per-head
input of the attention output projection.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

Rows = tuple[tuple[int, int], ...]
"""Row spans (start, stop) of a fused weight in (out, in) orientation."""


@dataclass(frozen=True)
class ArchSites:
    """Where each part of a decoder block lives, as attribute paths, and how the block combines
    them. Built per model by ``interp.model.families.arch_sites`` from TransformerLens's adapter."""

    layers: str
    """Path from the causal-LM object to the ModuleList of decoder blocks."""
    attn: str
    """Attention module, relative to a block (its input is the normed residual stream)."""
    mlp: str
    """MLP module, relative to a block."""
    o_proj: str
    """Attention output projection, relative to a block; its input is the per-head z, concatenated."""
    embed: str
    """Token embedding, from the model root."""
    final_norm: str
    """Norm applied after the last block, from the model root."""
    lm_head: str
    """Unembedding, from the model root."""
    proj: dict[str, str]
    """Linear projections relative to a block (q, k, v, o, gate, up, down). A fused matrix
    (GPT-2 c_attn, GPT-NeoX query_key_value, Phi-3 gate_up_proj) appears under each name it
    holds, with the rows of each in ``slices``."""
    conv1d: bool = False
    """GPT-2 style Conv1D weights stored as (in, out) instead of nn.Linear's (out, in)."""
    slices: dict[str, Rows] = field(default_factory=dict)
    """Projection name -> its rows inside a fused weight; absent: the whole module."""
    family: str = ""
    """HF model_type."""
    adapter: str = ""
    """The transformer-lens adapter class the table was read from."""
    pos_embed: str | None = None
    """Learned position embedding from the model root (GPT-2): it also writes to the residual stream."""
    post_attn_norm: str | None = None
    """Norm applied to the attention output before it joins the residual (Gemma 2/3, OLMo 2)."""
    post_mlp_norm: str | None = None
    """Norm applied to the MLP output before it joins the residual."""
    norm_offset: float = 0.0
    """RMSNorm scale is (offset + weight): 1.0 for the Gemma family, 0.0 elsewhere."""
    parallel: bool = False
    """Attention and MLP both read the block input (GPT-J, GPT-NeoX, Phi, Falcon, Cohere)."""
    residual_scale: float = 1.0
    """Each sublayer output is multiplied by this before the residual add (Granite)."""
    inplace_mlp: bool = False
    """The block adds the attention output into the MLP output tensor in place (Falcon)."""
    logit_scale: float = 1.0
    """The unembedding's output is multiplied by this (Cohere's logit_scale, Granite's 1 / logits_scaling)."""
    logit_softcap: float | None = None
    """Then soft-capped: cap * tanh(x / cap) (Gemma 2's final_logit_softcapping)."""

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """lm_head output -> the model's logits."""
        if self.logit_scale != 1.0:
            out = out * self.logit_scale
        if self.logit_softcap:
            out = torch.tanh(out / self.logit_softcap) * self.logit_softcap
        return out

    @property
    def attn_out(self) -> str:
        """Module whose output is what attention adds to the residual (before ``residual_scale``)."""
        return self.post_attn_norm or self.attn

    @property
    def mlp_out(self) -> str:
        """Module whose output is what the MLP adds to the residual (before ``residual_scale``)."""
        return self.post_mlp_norm or self.mlp


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


def param(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``module.<name>``, a weight or bias parameter (nn.Module types its attribute lookup as Tensor | Module)."""
    return cast(torch.Tensor, getattr(module, name))


def block(model: nn.Module, arch: ArchSites, layer: int) -> nn.Module:
    return cast(nn.ModuleList, model.get_submodule(arch.layers))[layer]


def site_module(model: nn.Module, arch: ArchSites, site: Site) -> tuple[nn.Module, str]:
    """The module to hook for a site and whether to read its ``input`` or ``output``."""
    blk = block(model, arch, site.layer)
    return {
        "resid_pre": (blk, "input"),
        "resid_post": (blk, "output"),
        "attn_out": (blk.get_submodule(arch.attn_out), "output"),
        "mlp_out": (blk.get_submodule(arch.mlp_out), "output"),
        "z": (blk.get_submodule(arch.o_proj), "input"),
    }[site.hook]
