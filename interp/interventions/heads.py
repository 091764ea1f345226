"""Head interventions: static head masks (pruning) and Mixture-of-Head routing.

``HeadMask(heads)`` zeroes the chosen heads' ``z`` (the per-head input of the output
projection): the same as zeroing those heads' columns of the output projection, but
reversible and weight-free. ``HeadRouting(router, top_k)`` activates the top-k heads per
token as scored by a trained router, identified by the digest of its parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, SupportsInt

import torch

from interp.interventions import register

if TYPE_CHECKING:
    from interp.interventions.gating import LayerGate
    from interp.model.loading import Loaded


class HeadSpecError(ValueError):
    """A head mask or routing spec that does not fit the model."""


def _norm_heads(heads: Iterable[Iterable[SupportsInt | str]]) -> tuple[tuple[int, int], ...]:
    out: set[tuple[int, int]] = set()
    for item in heads:
        try:
            layer, head = (int(x) for x in item)
        except (TypeError, ValueError):
            raise HeadSpecError(f"head {item!r} must be a (layer, head) pair of whole numbers") from None
        if layer < 0 or head < 0:
            raise HeadSpecError(f"head ({layer}, {head}) has a negative index")
        out.add((layer, head))
    return tuple(sorted(out))


@register
@dataclass(frozen=True)
class HeadMask:
    """Remove a set of attention heads (query heads on grouped-query models): their ``z`` is
    zeroed, or with ``means`` replaced by its mean over a text sample, a constant that could be
    folded into the output projection's bias (mean pruning)."""

    kind: ClassVar[str] = "head_mask"
    heads: tuple[tuple[int, int], ...] = ()
    """(layer, head) pairs to mask; stored sorted and without duplicates."""
    name: str = ""
    """Short tag for the point label, e.g. 'gradient' for heads chosen by gradient importance."""
    means: str = ""
    """Digest of head means (``router_dir()/means-<digest>.safetensors``, also in the store table
    heads_means); empty: masked heads output zero."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", _norm_heads(self.heads))

    @classmethod
    def from_dict(cls, data: dict) -> HeadMask:
        return cls(heads=tuple(tuple(h) for h in data.get("heads", ())), name=data.get("name", ""),
                   means=data.get("means", ""))

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for layer, head in self.heads:
            out.setdefault(layer, []).append(head)
        return out

    def check(self, loaded: Loaded) -> None:
        for layer, head in self.heads:
            if layer >= loaded.n_layers or head >= loaded.n_heads:
                raise HeadSpecError(f"head ({layer}, {head}) does not exist: the model has layers "
                                    f"0..{loaded.n_layers - 1} and heads 0..{loaded.n_heads - 1}")

    @contextlib.contextmanager
    def apply(self, loaded: Loaded) -> Iterator[None]:
        from interp.interventions.gating import LayerGate, head_gates, load_means

        self.check(loaded)
        means = load_means(self.means, router_dir()) if self.means and self.heads else None
        if means is not None and tuple(means.shape) != (loaded.n_layers, loaded.n_heads, loaded.d_head):
            raise HeadSpecError(f"head means {self.means} have shape {tuple(means.shape)}, the model needs "
                                f"{(loaded.n_layers, loaded.n_heads, loaded.d_head)}")
        layers: dict[int, LayerGate] = {}
        for layer, heads in self.by_layer().items():
            gates = torch.ones(loaded.n_heads)
            gates[heads] = 0.0
            layers[layer] = LayerGate(gates, None if means is None else means[layer])
        with head_gates(loaded, layers):
            yield

    def label(self) -> str:
        return f"{self.name or 'mask'}-{len(self.heads)}"

    def first_layer(self, n_layers: int) -> int:
        """The lowest layer with a masked head (gates act inside that block's attention)."""
        return min((layer for layer, _ in self.heads), default=n_layers)


def router_dir() -> Path:
    """Where trained routers and head means live, content-addressed by digest:
    $INTERP_ROUTER_DIR, else ``routers`` beside the model cache."""
    import os

    from interp.model.embedded import cache_dir

    env = os.environ.get("INTERP_ROUTER_DIR")
    return Path(env).expanduser() if env else cache_dir() / "routers"


@register
@dataclass(frozen=True)
class HeadRouting:
    """Keep the top-k heads per token and layer as scored by a trained Mixture-of-Head router."""

    kind: ClassVar[str] = "head_routing"
    router: str
    """Digest of the router's parameters (its file is ``router_dir()/<digest>.safetensors``)."""
    top_k: int
    """Active heads per token in every layer."""

    def __post_init__(self) -> None:
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise HeadSpecError(f"top_k must be a whole number >= 1, not {self.top_k!r}")
        if not self.router:
            raise HeadSpecError("head routing needs a router digest: train one with `invoke heads`")

    @contextlib.contextmanager
    def apply(self, loaded: Loaded) -> Iterator[None]:
        from interp.interventions.router import load_router, routed

        router = load_router(self.router, router_dir()).to(loaded.device).requires_grad_(False)
        with routed(loaded, router, self.top_k):
            yield

    def label(self) -> str:
        return f"router-k{self.top_k}"
