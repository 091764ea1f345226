"""Pure tensor edits used by interventions. No hooks, no models: property-tested in isolation.

Shapes: ``h`` is any (..., d) activation; directions ``r`` are (d,) and need not be unit
norm unless said so (we normalise where the maths needs it).
"""

from __future__ import annotations

import torch


def unit(r: torch.Tensor) -> torch.Tensor:
    n = r.norm()
    if n == 0:
        raise ValueError("direction has zero norm")
    return r / n


def project_out(h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Remove the component of ``h`` along ``r``: h - (h . r^) r^ (leaves zero component)."""
    ru = unit(r).to(h.dtype)
    return h - (h @ ru).unsqueeze(-1) * ru


def add(h: torch.Tensor, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """Activation addition: h + alpha * r (alpha < 0 subtracts)."""
    return h + alpha * r.to(h.dtype)


def mean_ablate(h: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Replace ``h`` by the mean activation ``mu`` (broadcast over leading dims)."""
    return mu.to(h.dtype).expand_as(h).clone()


def zero_ablate(h: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(h)


def orthogonalize_rows(W: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """W with its output (row) space made orthogonal to ``r``: (I - r^ r^T) W for W (d, k)."""
    ru = unit(r).to(W.dtype)
    return W - torch.outer(ru, ru @ W)


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarity along the last dim."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)


def gate_heads(z: torch.Tensor, gates: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Per-head gating of ``z`` (batch, pos, head, d_head): z * g + (1 - g) * fill.

    ``gates`` broadcasts against (batch, pos, head): (head,), (batch, 1, head) or
    (batch, pos, head). A gate of 1 keeps the head, 0 replaces it by ``fill`` (zero when
    None; a (head, d_head) mean for mean ablation, or (batch, 1, head, d_head) per row).
    Gates in {0, 1} give exact results; fractional gates interpolate (gradient importance).
    """
    g = gates.to(z.dtype).unsqueeze(-1)
    if fill is None:
        return z * g
    return z * g + (1 - g) * fill.to(z.dtype)
