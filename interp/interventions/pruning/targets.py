"""Which weight matrices a pruning spec touches, resolved against an architecture's site table.

Selectors are projection names (q, k, v, o, gate, up, down), the groups ``qkv``, ``attn``
and ``mlp``, or ``all``. A selector the architecture does not have is refused with the names
it does have. In a fused matrix (GPT-2 c_attn, GPT-NeoX query_key_value, Falcon, Phi-3
qkv_proj and gate_up_proj) each projection is a set of rows (``ArchSites.slices``), so
``q`` prunes exactly the query rows and the report counts each projection on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from interp.model.sites import ArchSites, Rows, param

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
"""Every projection name any supported architecture uses (ArchSites.proj keys)."""
GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q", "k", "v"),
    "attn": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down"),
    "all": PROJECTIONS,
}
"""Group selector -> projections it covers (those the architecture has)."""
SELECTORS = (*PROJECTIONS, *GROUPS)


class ModuleSelectionError(ValueError):
    """A module selector that this architecture does not have."""


def check_selector(name: str) -> str:
    if name not in SELECTORS:
        raise ModuleSelectionError(f"unknown module '{name}': use q, k, v, o, gate, up, down, qkv, "
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
    raise ModuleSelectionError(f"this model has no '{selector}' projection: use one of "
                               f"{', '.join(have)}, qkv, attn, mlp or all")


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
    """One weight matrix to prune: a whole module, or some rows of a fused one."""

    layer: int
    name: str
    """Projection name (q, k, ..., down)."""
    module: nn.Module
    rate: float
    conv1d: bool
    """GPT-2 Conv1D: the stored weight is (in, out)."""
    rows: Rows | None = None
    """Rows of the (out, in) weight that are this projection, when the module is fused."""

    @property
    def param(self) -> torch.Tensor:
        """The module's weight parameter."""
        return param(self.module)

    def full(self) -> torch.Tensor:
        """The module's whole weight in (out, in) orientation; a view of the parameter."""
        w = self.param.data
        return w.t() if self.conv1d else w

    @property
    def index(self) -> torch.Tensor | None:
        if self.rows is None:
            return None
        return torch.cat([torch.arange(a, b) for a, b in self.rows]).to(self.param.device)

    @property
    def weight(self) -> torch.Tensor:
        """This projection's weight (out, in): a view for a whole module, a copy of the rows for a slice."""
        idx = self.index
        return self.full() if idx is None else self.full()[idx]

    def write(self, w: torch.Tensor) -> None:
        """Put ``w`` (shaped like ``weight``) back into the module."""
        idx = self.index
        if idx is None:
            self.full().copy_(w)
        else:
            self.full()[idx] = w

    def zero(self, mask: torch.Tensor) -> torch.Tensor:
        """Zero the weights where ``mask`` is True; returns the pruned weight."""
        w = self.weight
        w.masked_fill_(mask.to(w.device), 0)
        if self.rows is not None:
            self.write(w)
        return w

    @property
    def n_params(self) -> int:
        n_in = self.full().shape[1]
        return n_in * sum(b - a for a, b in self.rows) if self.rows is not None else self.param.numel()


def resolve(model: nn.Module, arch: ArchSites, rates: tuple[tuple[str, float], ...]) -> list[Target]:
    """Every (layer, projection) a spec prunes, layer by layer."""
    per_proj = module_rates(arch, rates)
    blocks = cast(nn.ModuleList, model.get_submodule(arch.layers))
    return [Target(layer, proj, blk.get_submodule(arch.proj[proj]), rate, arch.conv1d, arch.slices.get(proj))
            for layer, blk in enumerate(blocks) for proj, rate in per_proj.items()]


def all_targets(model: nn.Module, arch: ArchSites) -> list[Target]:
    """Every prunable projection of every layer (rate 0): what a one-shot calibration covers."""
    return resolve(model, arch, (("all", 0.0),))
