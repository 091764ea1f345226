"""Mixture-of-Head style routing (after Jin et al. 2024, "MoH: Multi-Head Attention as
Head-of-Experts Attention"): a linear router per layer scores the heads of every token from
the attention input; only the top-k heads stay active and their outputs are re-weighted.

Gates: p = softmax(W_l x + b_l) over the layer's heads; the k highest-scoring heads keep
g_h = k * p_h / sum_{j in top-k} p_j, the others get 0. Active gates average 1, so a head's
output keeps its scale (as under static pruning), and with k = all heads and a uniform
router (zero weights, the initial state) every gate is 1: the base model exactly. MoH's
always-active shared heads are the special case of a large bias and are not built in.

Load balancing is the Switch Transformer auxiliary loss used by MoH:
LB = H * sum_h f_h * P_h, f_h the fraction of (token, slot) assignments that go to head h
(not differentiable) and P_h the mean router probability of h. A balanced router has
LB = 1. When the router's probabilities match its dispatch (P = f), LB = H * sum f_h^2 >= 1
with equality only for uniform use; in general LB can dip below 1 for routers whose
probabilities disagree with their choices, which is why it is a regulariser, not a metric.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from interp.interventions.gating import LayerGate, head_gates
from interp.model.hooks import InputHook
from interp.model.loading import Loaded
from interp.model.sites import block


class RouterError(ValueError):
    """A router that does not fit the model, or that cannot be found."""


class HeadRouter(nn.Module):
    """One linear router (d_model -> heads) per layer, zero-initialised (uniform)."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_layers, n_heads, d_model))
        self.bias = nn.Parameter(torch.zeros(n_layers, n_heads))

    @property
    def shape(self) -> tuple[int, int, int]:
        L, H, d = self.weight.shape
        return L, d, H

    def scores(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """(batch, pos, d_model) attention input -> (batch, pos, head) router logits."""
        return x.to(self.weight.dtype) @ self.weight[layer].T + self.bias[layer]

    def digest(self) -> str:
        """Content hash of the parameters: the router's identity in stored interventions."""
        h = hashlib.sha256(str(tuple(self.weight.shape)).encode())
        for t in (self.weight, self.bias):
            h.update(t.detach().float().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def route(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gates, probs, chosen) for router logits (..., head) keeping the top ``k`` heads."""
    H = scores.shape[-1]
    if not 1 <= k <= H:
        raise RouterError(f"top-k must be between 1 and the number of heads ({H}), not {k}")
    probs = torch.softmax(scores, dim=-1)
    idx = scores.topk(k, dim=-1).indices
    chosen = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, idx, True)
    kept = probs * chosen
    gates = k * kept / kept.sum(-1, keepdim=True)
    return gates, probs, chosen


def load_balance(probs: torch.Tensor, chosen: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-style load-balancing loss of one layer over real tokens (mask (batch, pos))."""
    H = probs.shape[-1]
    p = probs.reshape(-1, H)
    c = chosen.reshape(-1, H).to(probs.dtype)
    if mask is not None:
        keep = mask.reshape(-1).bool()
        p, c = p[keep], c[keep]
    f = c.sum(0) / c.sum()  # share of assignments per head
    P = p.mean(0)
    return H * (f * P).sum()


def _attn_input(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def routed(loaded: Loaded, router: HeadRouter, k: int,
           record: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None) -> Iterator[None]:
    """Route every layer's heads through ``router`` with top-``k`` during forward passes inside.

    ``record`` (a dict) receives layer -> (gates, probs, chosen) of the latest pass, with
    gradients, for the load-balancing loss and usage statistics.
    """
    L, d, H = router.shape
    if (L, d, H) != (loaded.n_layers, loaded.d_model, loaded.n_heads):
        raise RouterError(f"router is for {L} layers x {H} heads (d_model {d}) but the model has "
                          f"{loaded.n_layers} x {loaded.n_heads} (d_model {loaded.d_model})")
    route(torch.zeros(H), k)  # validates k before anything is hooked
    slots: dict[int, torch.Tensor] = {}

    def reader(layer: int) -> InputHook:
        def hook(_m: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            gates, probs, chosen = route(router.scores(layer, _attn_input(args, kwargs)), k)
            slots[layer] = gates
            if record is not None:
                record[layer] = (gates, probs, chosen)
        return hook

    handles = []
    try:
        for layer in range(L):
            attn = block(loaded.model, loaded.arch, layer).get_submodule(loaded.arch.attn)
            handles.append(attn.register_forward_pre_hook(reader(layer), with_kwargs=True))
        gates = {layer: LayerGate(_slot(slots, layer)) for layer in range(L)}
        with head_gates(loaded, gates):
            yield
    finally:
        for h in handles:
            h.remove()


def _slot(slots: dict[int, torch.Tensor], layer: int) -> Callable[[], torch.Tensor]:
    """The gates the router wrote for ``layer`` in the current forward pass."""
    return lambda: slots[layer]


def save_router(router: HeadRouter, directory: Path) -> tuple[str, Path]:
    """Write the router as ``<digest>.safetensors`` (content-addressed); returns (digest, path)."""
    from safetensors.torch import save_file

    digest = router.digest()
    path = Path(directory) / f"{digest}.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"weight": router.weight.detach().contiguous(), "bias": router.bias.detach().contiguous()},
                  str(tmp))
        tmp.replace(path)
    return digest, path


def load_router(digest: str, directory: Path) -> HeadRouter:
    """The router with this digest, checked against its content."""
    from safetensors.torch import load_file

    path = Path(directory) / f"{digest}.safetensors"
    if not path.exists():
        raise RouterError(f"router {digest} not found in {directory}: re-run `invoke heads` to train it, "
                          "or restore it from the store table heads_router_params")
    tensors = load_file(str(path))
    L, H, d = tensors["weight"].shape
    router = HeadRouter(L, d, H)
    with torch.no_grad():
        router.weight.copy_(tensors["weight"])
        router.bias.copy_(tensors["bias"])
    if router.digest() != digest:
        raise RouterError(f"router file {path} does not match its digest {digest}: delete it and re-run")
    return router
