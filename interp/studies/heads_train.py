"""Training a head router (base weights frozen, router only) with the language-modelling loss
plus the load-balancing loss, resumable from checkpoints; and its held-out statistics.

Batches follow a fixed seeded schedule indexed by step, so a run resumed from a checkpoint
(router and optimiser state) continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from interp.interventions.router import HeadRouter, load_balance, routed
from interp.model.loading import Loaded
from interp.studies.heads_importance import final_hidden, row_metrics
from interp.studies.heads_text import Scored, lm_batch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class RouterCfg:
    """How one router is trained."""

    top_k: int
    """Active heads per token and layer during training."""
    steps: int = 200
    """Optimiser steps."""
    batch_size: int = 4
    """Text sequences per step."""
    lr: float = 1e-3
    """AdamW learning rate for the router (weight decay 0)."""
    lb_coef: float = 0.01
    """Weight of the load-balancing loss (Switch Transformer used 0.01)."""
    ckpt_every: int = 25
    """Steps between checkpoints written to the store."""
    seed: int = 0
    """Seed of the batch schedule."""

    def __post_init__(self) -> None:
        for name in ("top_k", "batch_size", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"router {name} must be at least 1, not {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"router steps must be >= 0, not {self.steps}")
        if self.lr <= 0 or self.lb_coef < 0:
            raise ValueError("router lr must be > 0 and lb_coef >= 0")


def schedule(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Sequence indices of a step: consecutive slices of one seeded permutation per epoch."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(pos, n)
        perm = list(range(n))
        random.Random(seed * 100_003 + epoch).shuffle(perm)
        out.append(perm[i])
    return out


def losses(loaded: Loaded, router: HeadRouter, k: int, batch: Scored) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(mean next-token NLL, mean over layers of the load-balancing loss, per-layer record)."""
    record: dict = {}
    with routed(loaded, router, k, record):
        hidden = final_hidden(loaded, batch)
    nll, _, _ = row_metrics(loaded.logits, hidden, batch.targets)
    mask = batch.kwargs["attention_mask"].to(loaded.device)
    lb = torch.stack([load_balance(p, c, mask) for _, p, c in record.values()]).mean()
    return nll.mean(), lb, record


def _state(router: HeadRouter, opt: torch.optim.Optimizer) -> bytes:
    buf = io.BytesIO()
    torch.save({"router": router.state_dict(), "optimizer": opt.state_dict()}, buf)
    return buf.getvalue()


def train_router(loaded: Loaded, cfg: RouterCfg, seqs: list[list[int]], *,
                 resume: tuple[int, bytes] | None = None,
                 checkpoint: Callable[[int, bytes, pd.DataFrame], None] | None = None,
                 progress: bool = False) -> HeadRouter:
    """Train a router on ``seqs`` (equal-length token lists); ``checkpoint(step, state, rows)``
    stores progress every ``ckpt_every`` steps and at the end."""
    if not seqs:
        raise ValueError("no training text for the router")
    router = HeadRouter(loaded.n_layers, loaded.d_model, loaded.n_heads).to(loaded.device)
    opt = torch.optim.AdamW(router.parameters(), lr=cfg.lr, weight_decay=0.0)
    start = 0
    if resume is not None:
        start, blob = resume
        state = torch.load(io.BytesIO(blob), weights_only=True)
        router.load_state_dict(state["router"])
        opt.load_state_dict(state["optimizer"])
    rows: list[dict] = []
    pad_id = cast("PreTrainedTokenizerBase", loaded.tokenizer).pad_token_id
    bar = tqdm(total=cfg.steps, initial=start, desc=f"router k={cfg.top_k}", unit="step", disable=not progress)
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        batch = lm_batch([seqs[i] for i in schedule(step, cfg.batch_size, len(seqs), cfg.seed)], pad_id)
        with torch.enable_grad():
            lm, lb, _ = losses(loaded, router, cfg.top_k, batch)
            loss = lm + cfg.lb_coef * lb
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rows.append({"step": step, "lm_loss": lm.item(), "lb_loss": lb.item(), "loss": loss.item(),
                     "seconds": time.perf_counter() - t0})
        bar.set_postfix_str(f"lm {lm.item():.3f} lb {lb.item():.3f}")
        bar.update(1)
        done = step + 1
        if checkpoint is not None and (done % cfg.ckpt_every == 0 or done == cfg.steps):
            checkpoint(done, _state(router, opt), pd.DataFrame(rows))
            rows = []
    bar.close()
    return router.requires_grad_(False)


@torch.no_grad()
def usage(loaded: Loaded, router: HeadRouter, k: int, batches: list[Scored]) -> tuple[pd.DataFrame, float, float]:
    """Per-layer, per-head activation frequency, mean gate and mean probability on ``batches``
    (real tokens only); plus the mean NLL and load-balancing loss there."""
    L, H = loaded.n_layers, loaded.n_heads
    freq, gate, prob = np.zeros((L, H)), np.zeros((L, H)), np.zeros((L, H))
    tokens, nll_sum, lbs = 0, 0.0, []
    for b in batches:
        nll, lb, record = losses(loaded, router, k, b)
        mask = b.kwargs["attention_mask"].to(loaded.device).bool()
        for layer, (g, p, c) in record.items():
            freq[layer] += c[mask].double().sum(0).cpu().numpy()
            gate[layer] += g[mask].double().sum(0).cpu().numpy()
            prob[layer] += p[mask].double().sum(0).cpu().numpy()
        n = int(mask.sum())
        tokens += n
        nll_sum += float(nll) * b.rows
        lbs.append(float(lb) * b.rows)
    rows = sum(b.rows for b in batches)
    df = pd.DataFrame({
        "layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
        "frequency": (freq / tokens).ravel(), "mean_gate": (gate / tokens).ravel(),
        "mean_prob": (prob / tokens).ravel(), "n_tokens": tokens,
    })
    return df, nll_sum / rows, sum(lbs) / rows


@torch.no_grad()
def mean_nll(loaded: Loaded, batches: list[Scored]) -> float:
    """Mean over sequences of the mean next-token NLL, with whatever edits are active."""
    vals = [row_metrics(loaded.logits, final_hidden(loaded, b), b.targets)[0] for b in batches]
    return float(torch.cat(vals).mean())
