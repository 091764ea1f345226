"""Head importance: zero / mean ablation of each head's ``z`` and the gradient importance of
Michel et al. (2019).

Gradient importance. A gate xi = 1 multiplies each head's output and I_h = mean |dL/dxi_h|.
Two variants differ in what one gate covers, and are stored under different method names:

- ``token`` (method ``gradient``, the default): one gate per head *per token position*,
  xi (layer, batch, pos, head). L is the batch's total next-token loss (sum over every
  scored token), so dL/dxi_{h,t} is the effect of head h at position t through everything
  it reaches (that position's prediction and all later ones of its sequence). One backward
  pass gives every position's gradient; I_h is the mean of |dL/dxi_{h,t}| over the real
  (unpadded) tokens of the sample. (The last token of each sequence predicts nothing scored
  and reaches nothing, so its gradient is 0 and it counts as such.) The absolute value is
  taken per token, so a head that helps some tokens and hurts others still scores high.
- ``sequence`` (method ``gradient_seq``): one gate per head per sequence (shared by all its
  positions), L(x) the sequence's *mean* token loss; I_h is the mean over sequences of
  |dL(x)/dxi_h|. A shared gate's gradient is the sum over positions of the per-token
  gradients, so signs cancel inside a sequence before |.| is taken. (The authors'
  released code takes |.| of whole-batch gradients; with one sequence per batch the two
  agree.) With one token per sequence the two variants are equal (tested).

Standard errors treat sequences as independent clusters (tokens of one sequence are not
independent): the ratio-estimator standard error of the token mean over per-sequence sums,
which for equal-length sequences is the standard deviation of the per-sequence means over
sqrt(sequences). Scores are then normalised per layer by their L2 norm and globally by
min-max, as in the original.

Ablation importance. For each head, ``z`` is replaced by zero or by its mean over real tokens
(``head_means``; the study takes it over its larger gradient sample), and the change of the per-sequence loss (and of a task metric) is averaged over
sequences, with standard errors. All edits of one layer share one wide forward pass that
starts at that layer (``Suffix``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from analyses.stats import standard_error
from interp.evals import lm
from interp.interventions import gating
from interp.interventions.gating import LayerGate, Suffix, head_gates
from interp.model.hooks import hooked
from interp.model.loading import Loaded
from interp.model.sites import Site
from interp.studies.heads_text import IGNORE, Scored

MODES = ("zero", "mean")

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""Final-norm hidden states (..., d_model) -> logits (..., vocab)."""


def _scored(logits_fn: LogitsFn, hidden: torch.Tensor,
            targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (scored, vocab), targets (scored,) and row index (scored,) of the scored positions."""
    r, p = (targets != IGNORE).nonzero(as_tuple=True)
    logits = logits_fn(hidden[r, p])  # (scored, vocab)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits, targets[r, p].to(logits.device), r.to(logits.device)


def _vocab(logits_fn: LogitsFn, hidden: torch.Tensor) -> int:
    """Output size of ``logits_fn`` (one position run through it)."""
    with torch.no_grad():
        return int(logits_fn(hidden.reshape(-1, hidden.shape[-1])[:1].detach()).shape[-1])


def _nll_hits(logits: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token NLL and hit (1.0 where the argmax is the target) of logits (n, vocab) and targets (n,).

    Differentiated (router training, gradient importance): ``cross_entropy`` and ``argmax``. Without
    autograd (every ablation) one ``max`` gives the hits and the shift, and the log-sum-exp is taken in
    place on ``logits``, which the caller hands over (a fresh unembedding). Measured on SmolLM2 (one
    thread): 0.09 s against 0.17 s of CPU per 1,365 x 49,152 chunk, 2.4% of the text sample's ablation;
    hits equal (``max`` and ``argmax`` both return the first maximal index); and closer to the float64
    value than ``cross_entropy`` on the clean text sample: largest token error 1.1e-6 against 1.5e-5,
    row means within 6e-9 relative against 2.1e-6 (so stored numbers move by up to ~3e-6 relative)."""
    if torch.is_grad_enabled() and logits.requires_grad:
        nll = F.cross_entropy(logits, tgt, reduction="none")
        return nll, (logits.argmax(-1) == tgt).to(nll.dtype)
    top, best = logits.max(-1)  # (n,)
    picked = logits.gather(-1, tgt[:, None])[:, 0]
    nll = logits.sub_(top[:, None]).exp_().sum(-1).log_() - (picked - top)  # as log_softmax orders it
    return nll, (best == tgt).to(nll.dtype)


def row_metrics(logits_fn: LogitsFn, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: mean NLL over scored positions, token accuracy, and exact match (all correct).

    ``hidden`` (rows, pos, d) is the final-norm output; ``logits_fn`` maps selected
    positions to logits, so the unembedding only runs where a target is scored. It must return a new
    tensor (without autograd its logits are overwritten in place, ``_nll_hits``).
    """
    rows = hidden.shape[0]
    r, p = (targets != IGNORE).nonzero(as_tuple=True)
    if not len(r):
        raise ValueError("a row has no scored position: every sequence needs at least one target")
    nll_parts: list[torch.Tensor] = []
    hit_parts: list[torch.Tensor] = []
    # The unembedding in chunks of positions: a batch of many ablations at once would otherwise hold
    # (positions, vocab) logits at a time (2 GB for 2048 positions of Gemma 3's 262k vocabulary).
    step = lm.positions_within(_vocab(logits_fn, hidden))  # the evaluations' bound
    for i in range(0, len(r), step):
        logits = logits_fn(hidden[r[i:i + step], p[i:i + step]])  # (chunk, vocab)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        tgt = targets[r[i:i + step], p[i:i + step]].to(logits.device)
        nll, hit = _nll_hits(logits, tgt)
        nll_parts.append(nll)
        hit_parts.append(hit)
    nll, hit = torch.cat(nll_parts), torch.cat(hit_parts)
    r = r.to(nll.device)
    zeros = torch.zeros(rows, dtype=nll.dtype, device=nll.device)
    count = zeros.index_add(0, r, torch.ones_like(nll))
    if bool((count == 0).any()):
        raise ValueError("a row has no scored position: every sequence needs at least one target")
    nll_row = zeros.index_add(0, r, nll) / count
    acc_row = zeros.index_add(0, r, hit) / count
    miss = zeros.index_add(0, r, 1 - hit)
    return nll_row.cpu(), acc_row.cpu(), (miss == 0).to(nll.dtype).cpu()


def _head(loaded: Loaded) -> LogitsFn:
    """Final hidden states -> logits, with the family's softcap / logit scale."""
    return loaded.logits


def final_hidden(loaded: Loaded, batch: Scored) -> torch.Tensor:
    """Final-norm output of a plain forward pass (whatever hooks are active); the unembedding is
    not run (callers unembed only the scored positions)."""
    return gating.final_hidden(loaded, batch.on(loaded.device))


@torch.no_grad()
def head_means(loaded: Loaded, batches: list[Scored]) -> torch.Tensor:
    """Mean of each head's ``z`` over every real token of the sample: (layer, head, d_head)."""
    L, H, D = loaded.n_layers, loaded.n_heads, loaded.d_head
    total = torch.zeros(L, H, D, dtype=torch.float64)
    state: dict[str, torch.Tensor] = {}

    def reader(layer: int) -> Callable[[torch.Tensor], None]:
        def fn(z: torch.Tensor) -> None:  # (batch, pos, head, d_head)
            m = state["mask"].to(z.dtype)[:, :, None, None]
            total[layer] += (z * m).sum((0, 1)).double().cpu()
        return fn

    n = 0
    with hooked(loaded.model, loaded.arch, {Site("z", l): reader(l) for l in range(L)}, H):
        for b in batches:
            state["mask"] = b.kwargs["attention_mask"].to(loaded.device)
            final_hidden(loaded, b)  # stops before the unembedding, which nothing here reads
            n += b.tokens
    return (total / n).float()


GRADIENT_METHODS = {"token": "gradient", "sequence": "gradient_seq"}
"""Gradient-importance variant (what one gate covers) -> the method name its scores are stored under."""


def _gate_dtype(loaded: Loaded) -> torch.dtype:
    p = next(loaded.model.parameters())
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def token_gradients(loaded: Loaded, batch: Scored) -> torch.Tensor:
    """dL/dxi_{l,b,t,h} with L the batch's total token loss: (layer, rows, pos, head).

    One gate per layer, row, position and query head; one backward pass."""
    rows, width = batch.kwargs["input_ids"].shape
    xi = torch.ones(loaded.n_layers, rows, width, loaded.n_heads, dtype=_gate_dtype(loaded), requires_grad=True)
    with torch.enable_grad(), head_gates(loaded, {l: LayerGate(xi[l]) for l in range(loaded.n_layers)}):
        logits, tgt, _ = _scored(_head(loaded), final_hidden(loaded, batch), batch.targets)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, tgt, reduction="sum"), xi)
    return grad.detach()


def sequence_gradients(loaded: Loaded, batch: Scored) -> torch.Tensor:
    """dL(x)/dxi_{x,l,h} with L(x) each sequence's mean token loss and one gate per sequence: (rows, layer, head)."""
    xi = torch.ones(batch.rows, loaded.n_layers, loaded.n_heads, dtype=_gate_dtype(loaded), requires_grad=True)
    with torch.enable_grad(), head_gates(loaded, {l: LayerGate(xi[:, l]) for l in range(loaded.n_layers)}):
        nll, _, _ = row_metrics(_head(loaded), final_hidden(loaded, batch), batch.targets)
        (grad,) = torch.autograd.grad(nll.sum(), xi)
    return grad.detach()


def cluster_mean(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over units (tokens) grouped in independent clusters (sequences), and its standard error.

    ``sums`` (clusters, ...) are each cluster's sums, ``counts`` (clusters,) its units. The
    mean is sum(sums) / sum(counts); the standard error is the ratio estimator's,
    sqrt(n / (n - 1) * sum_c (s_c - mean * t_c)^2) / sum(counts), NaN for one cluster."""
    t = counts.reshape((-1,) + (1,) * (sums.ndim - 1)).astype(np.float64)
    total = t.sum()
    mean = sums.sum(0) / total
    n = sums.shape[0]
    if n < 2:
        return mean, np.full(mean.shape, np.nan)
    resid = sums - mean * t
    return mean, np.sqrt(n / (n - 1) * (resid ** 2).sum(0)) / total


def gradient_importance(loaded: Loaded, batches: list[Scored], per: str = "token",
                        progress: bool = False) -> dict[str, np.ndarray | int]:
    """Mean |dL/dxi_h| per (layer, head), one gate per token (``per='token'``) or per sequence.

    Returns {'mean': (L, H), 'stderr': (L, H) over sequences as clusters, 'n': sequences,
    'n_tokens': real tokens of the sample}. See the module docstring for the two variants."""
    if per not in GRADIENT_METHODS:
        raise ValueError(f"unknown gradient importance variant '{per}': use {' or '.join(GRADIENT_METHODS)}")
    sums, counts = [], []  # per sequence: |grad| summed over what is averaged (L, H), and how many
    for b in tqdm(batches, desc=f"gradient importance ({per})", unit="batch", disable=not progress):
        if per == "token":
            g = token_gradients(loaded, b).abs().double()  # (L, rows, pos, H)
            mask = b.kwargs["attention_mask"].to(g)  # (rows, pos): padded positions do not count
            sums.append(torch.einsum("lrph,rp->rlh", g, mask))
            counts.append(mask.sum(1))
        else:
            sums.append(sequence_gradients(loaded, b).abs().double())  # (rows, L, H)
            counts.append(torch.ones(b.rows, dtype=torch.float64))
    s, t = torch.cat(sums).cpu().numpy(), torch.cat(counts).cpu().numpy()
    mean, se = cluster_mean(s, t)
    return {"mean": mean, "stderr": se, "n": s.shape[0], "n_tokens": sum(b.tokens for b in batches)}


def normalise_layers(scores: np.ndarray) -> np.ndarray:
    """Each layer's scores divided by their L2 norm (Michel et al. 2019, after Molchanov et al.)."""
    norm = np.sqrt((scores ** 2).sum(-1, keepdims=True))
    return scores / (norm + 1e-20)


def normalise_global(scores: np.ndarray) -> np.ndarray:
    """Min-max over all heads to [0, 1], as in the authors' code."""
    lo, hi = scores.min(), scores.max()
    return (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)


@dataclass(frozen=True)
class Ablation:
    """Per-sequence metrics of one sample under every single-head ablation."""

    clean: dict[str, np.ndarray]
    """metric -> (rows,) values of the unedited model."""
    edited: dict[str, np.ndarray]
    """metric -> (mode, layer, head, rows) values with that head ablated."""

    def delta(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard error over rows of edited - clean: each (mode, layer, head)."""
        d = self.edited[metric] - self.clean[metric]
        return d.mean(-1), standard_error(d, axis=-1)


def ablation_importance(loaded: Loaded, batches: list[Scored], means: torch.Tensor | None,
                        modes: tuple[str, ...] = MODES, max_tokens: int = 2048, layers: range | None = None,
                        progress: bool = False) -> Ablation:
    """Ablate every head alone (each mode) and score every row of every batch.

    ``layers`` restricts the ablations to some layers (the others' entries stay zero).
    ``means`` (layer, head, d_head) is the fill for mean ablation. Up to ``max_tokens``
    tokens go through one forward pass: the batch repeated once per edit.
    """
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"unknown ablation mode '{','.join(bad)}': use zero and/or mean")
    if "mean" in modes and means is None:
        raise ValueError("mean ablation needs the head means: compute them with head_means first")
    L, H, D = loaded.n_layers, loaded.n_heads, loaded.d_head
    units = [(m, h) for m in modes for h in range(H)]
    metrics = ("nll", "acc", "exact")
    clean: dict[str, list[np.ndarray]] = {k: [] for k in metrics}
    edited = {k: np.full((len(modes), L, H, sum(b.rows for b in batches)), np.nan) for k in metrics}
    layers = range(L) if layers is None else layers
    bar = tqdm(total=len(batches) * len(layers), desc="ablation importance", unit="layer", disable=not progress)
    row0 = 0
    for b in batches:
        width = b.kwargs["input_ids"].shape[1]
        per_pass = max(1, min(len(units), max_tokens // (b.rows * width)))
        suffix = Suffix(loaded, b.kwargs)
        for k, c in zip(metrics, row_metrics(_head(loaded), suffix.final, b.targets)):
            clean[k].append(c.numpy())
        for layer in layers:
            for start in range(0, len(units), per_pass):
                chunk = units[start:start + per_pass]
                gates = torch.ones(len(chunk), H)
                fill = torch.zeros(len(chunk), H, D)
                for g, (mode, head) in enumerate(chunk):
                    gates[g, head] = 0.0
                    if mode == "mean":
                        assert means is not None  # checked above
                        fill[g] = means[layer]
                rows = gates.repeat_interleave(b.rows, 0), fill.repeat_interleave(b.rows, 0)
                with head_gates(loaded, {layer: LayerGate(*rows)}):
                    hidden = suffix.run(layer, len(chunk))
                out = row_metrics(_head(loaded), hidden, b.targets.repeat(len(chunk), 1))
                for k, t in zip(metrics, out):
                    v = t.view(len(chunk), b.rows).numpy()
                    for g, (mode, head) in enumerate(chunk):
                        edited[k][modes.index(mode), layer, head, row0:row0 + b.rows] = v[g]
            bar.update(1)
        suffix.close()
        row0 += b.rows
    bar.close()
    return Ablation({k: np.concatenate(v) for k, v in clean.items()}, edited)
