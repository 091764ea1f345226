"""Which weight matrices a pruning spec touches, resolved against an architecture's site table.

Selectors are projection names (q, k, v, o, gate, up, down; qkv for GPT-2's fused
attention input), the groups ``attn`` and ``mlp``, or ``all``. A selector the
architecture does not have is refused with the names it does have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from interp.model.sites import ArchSites

PROJECTIONS = ("q", "k", "v", "qkv", "o", "gate", "up", "down")
"""Every projection name any supported architecture uses (ArchSites.proj keys)."""
GROUPS: dict[str, tuple[str, ...]] = {
    "attn": ("q", "k", "v", "qkv", "o"),
    "mlp": ("gate", "up", "down"),
    "all": PROJECTIONS,
}
"""Group selector -> projections it covers (those the architecture has)."""
SELECTORS = (*PROJECTIONS, *GROUPS)


class ModuleSelectionError(ValueError):
    """A module selector that this architecture does not have."""


def check_selector(name: str) -> str:
    if name not in SELECTORS:
        raise ModuleSelectionError(f"unknown module '{name}': use q, k, v, o, gate, up, down (qkv for GPT-2), "
                                   "attn, mlp or all")
    return name


def expand(arch: ArchSites, selector: str) -> tuple[str, ...]:
    """Projections of ``arch`` covered by a selector, in ``PROJECTIONS`` order."""
    check_selector(selector)
    have = [p for p in PROJECTIONS if p in arch.proj]
    if selector in GROUPS:
        return tuple(p for p in have if p in GROUPS[selector])
    if selector in arch.proj:
        return (selector,)
    hint = ""
    if selector in ("q", "k", "v") and "qkv" in arch.proj:
        hint = f" (its attention fuses q, k and v in {arch.proj['qkv']}: select qkv)"
    raise ModuleSelectionError(f"this model has no '{selector}' projection{hint}: use one of "
                               f"{', '.join(have)}, attn, mlp or all")


def module_rates(arch: ArchSites, rates: tuple[tuple[str, float], ...]) -> dict[str, float]:
    """Selector rates -> one rate per projection; a projection named twice is an error."""
    out: dict[str, float] = {}
    for selector, rate in rates:
        for proj in expand(arch, selector):
            if proj in out:
                raise ModuleSelectionError(f"projection '{proj}' is selected twice (by '{selector}' and another "
                                           "selector): give each projection one rate")
            out[proj] = rate
    return {p: out[p] for p in PROJECTIONS if p in out}


@dataclass
class Target:
    """One weight matrix to prune."""

    layer: int
    name: str
    """Projection name (q, k, ..., down)."""
    module: nn.Module
    rate: float
    conv1d: bool
    """GPT-2 Conv1D: the stored weight is (in, out)."""

    @property
    def weight(self) -> torch.Tensor:
        """The weight in (out, in) orientation; a view, so in-place edits reach the module."""
        w = self.module.weight.data
        return w.t() if self.conv1d else w

    @property
    def n_params(self) -> int:
        return self.module.weight.numel()


def resolve(model: nn.Module, arch: ArchSites, rates: tuple[tuple[str, float], ...]) -> list[Target]:
    """Every (layer, projection) a spec prunes, layer by layer."""
    per_proj = module_rates(arch, rates)
    blocks = model.get_submodule(arch.layers)
    return [Target(layer, proj, blk.get_submodule(arch.proj[proj]), rate, arch.conv1d)
            for layer, blk in enumerate(blocks) for proj, rate in per_proj.items()]


def all_targets(model: nn.Module, arch: ArchSites) -> list[Target]:
    """Every prunable projection of every layer (rate 0): what a one-shot calibration covers."""
    return resolve(model, arch, (("all", 0.0),))
