"""Pruning masks as pure tensor maths: no modules, no hooks.

Every matrix here is in (out, in) orientation (a row is one output unit). A mask is a
bool tensor, True where a weight is removed. Counts are exact: a rate r over n weights
removes round(r * n) of them (halves up), and ties in the score are broken by position
(lowest index first), so every function agrees with a plain sorted-list reference.
"""

from __future__ import annotations

import math

import torch


class MaskError(ValueError):
    """A pruning request that cannot be met on these shapes."""


def n_remove(rate: float, n: int) -> int:
    """How many of ``n`` weights a rate removes: round(rate * n), halves up, robust to 0.29*100."""
    if not 0.0 <= rate <= 1.0:
        raise MaskError(f"pruning rate must be in [0, 1], got {rate}")
    return min(n, math.floor(rate * n + 0.5 + 1e-9))


def magnitude_scores(W: torch.Tensor) -> torch.Tensor:
    """|W|: the smallest weights go first."""
    return W.abs().float()


def wanda_scores(W: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 (Sun et al. 2023); ``norms`` is (in,) for W (out, in)."""
    if norms.dim() != 1 or norms.shape[0] != W.shape[1]:
        raise MaskError(f"input norms have shape {tuple(norms.shape)} but the weight has {W.shape[1]} inputs")
    return W.abs().float() * norms.to(device=W.device, dtype=torch.float32).unsqueeze(0)


def row_mask(scores: torch.Tensor, rate: float) -> torch.Tensor:
    """Remove the round(rate * in) lowest scores of every row (Wanda's per-output comparison group)."""
    k = n_remove(rate, scores.shape[1])
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= scores.shape[1]:
        return torch.ones_like(scores, dtype=torch.bool)
    # One kthvalue per row instead of a stable sort of every row (the sort was 26 of 60 s of the CI's magnitude
    # sweep); the same mask: entries below the row's k-th value go, and of those equal to it the first ones by
    # position until the row has exactly k, as the stable sort's order would take them.
    t = torch.kthvalue(scores, k, dim=1, keepdim=True).values  # (out, 1)
    mask = scores < t
    need = k - mask.sum(dim=1, keepdim=True)  # (out, 1), >= 1 where the k-th value is tied or is the last taken
    tied = scores == t
    return mask | (tied & (torch.cumsum(tied, dim=1) <= need))


def lowest_k_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` lowest entries of a 1-d tensor, ties broken by position.

    One ``kthvalue`` instead of a full sort: entries below the k-th value go, and of the
    entries equal to it only the first ones needed to reach exactly k.
    """
    n = flat.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    t = torch.kthvalue(flat, k).values
    mask = flat < t
    need = k - int(torch.count_nonzero(mask))
    if need:
        tied = torch.nonzero(flat == t).squeeze(1)[:need]
        mask[tied] = True
    return mask


def matrix_mask(scores: torch.Tensor, rate: float) -> torch.Tensor:
    """Remove the round(rate * numel) lowest scores of the whole matrix (per-layer magnitude pruning)."""
    return lowest_k_mask(scores.reshape(-1), n_remove(rate, scores.numel())).view_as(scores)


def global_masks(scores: list[torch.Tensor], rate: float) -> list[torch.Tensor]:
    """One threshold over several matrices pooled together (global magnitude pruning)."""
    if not scores:
        return []
    flat = torch.cat([s.reshape(-1) for s in scores])
    mask = lowest_k_mask(flat, n_remove(rate, flat.numel()))
    out, start = [], 0
    for s in scores:
        out.append(mask[start:start + s.numel()].view_as(s))
        start += s.numel()
    return out


def parse_nm(structure: str) -> tuple[int, int] | None:
    """'unstructured' -> None; 'N:M' -> (N, M): keep at most N of every M consecutive inputs."""
    if structure == "unstructured":
        return None
    parts = structure.split(":")
    try:
        n, m = int(parts[0]), int(parts[1])
        if len(parts) != 2:
            raise ValueError
    except (ValueError, IndexError):
        raise MaskError(f"unknown structure '{structure}': use 'unstructured' or N:M such as 2:4") from None
    if not 0 < n < m:
        raise MaskError(f"structure {structure} needs 0 < N < M (N weights kept of every M), e.g. 2:4")
    return n, m


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Semi-structured N:M: in every run of M consecutive inputs of a row, remove the M - N lowest."""
    rows, cols = scores.shape
    if cols % m:
        raise MaskError(f"N:M sparsity with M={m} needs the input size to be a multiple of {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=2, stable=True).indices[..., : m - n]  # (rows, groups, M-N)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, order, True)
    return mask.view(rows, cols)
