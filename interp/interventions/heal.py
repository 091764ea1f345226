"""Healing: a short LoRA fine-tune (peft) of the MLP projections of an edited model on a text
corpus, undone on exit (Gromov et al. heal dropped models with QLoRA on C4).

The training windows come from the same corpus as the perplexity evaluation, cut on the
same grid, *minus the windows the evaluation scores* (rebuilt from the evaluation's own
seed and token count), so a healed model is never trained on the text it is scored on.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from interp.provenance import LATER
from store.layers import add_heal_log

if TYPE_CHECKING:
    import duckdb

    from interp.evals import EvalCfg
    from interp.model.loading import Loaded

SCHEDULES = ("constant", "cosine", "linear")


class HealError(ValueError):
    """A healing config that cannot run (bad numbers, no training text left)."""


@dataclass(frozen=True, eq=False)
class HealLog:
    """By-product of healing a point: its training log and the LoRA adapters it trained, stored in
    ``layer_heal`` and ``layer_heal_adapters`` by the sweep."""

    log: pd.DataFrame
    """step, loss, seconds: the training loss every few steps."""
    adapters: dict[str, np.ndarray] = field(default_factory=dict)
    """peft parameter name -> trained LoRA matrix (float32; lora_A (rank, in), lora_B (out, rank))."""

    def save(self, con: duckdb.DuckDBPyConnection, run_id: int, point: str) -> None:
        add_heal_log(con, run_id, point, self.log, self.adapters)


@dataclass(frozen=True)
class HealCfg:
    """How to heal. Part of the healed sweep point's identity."""

    steps: int
    """Optimiser steps (0 is refused: use the plain drop instead)."""
    rank: int = 8
    """LoRA rank r."""
    alpha: float = 16.0
    """LoRA scaling numerator (updates are scaled by alpha / r)."""
    lr: float = 2e-4
    """AdamW learning rate (no weight decay, constant schedule)."""
    batch: int = 4
    """Windows per step."""
    seed: int = 0
    """Seed for window sampling and LoRA initialisation."""
    corpus: str = "book"
    """Training corpus: book (offline), wikitext2, c4 or text (as in the evaluation config)."""
    corpus_path: str | None = None
    """Local file/folder for wikitext2, c4 or text."""
    window: int | None = None
    """Training window in tokens; None: the evaluation's perplexity window."""
    holdout_tokens: int = 2048
    """The evaluation's perplexity token count (``EvalCfg.count('ppl')``): its windows are left out of training."""
    holdout_seed: int = 0
    """The evaluation's seed (which windows it scores)."""
    log_every: int = 10
    """Record the training loss every this many steps (and at the last step)."""
    dropout: float = field(default=0.0, metadata=LATER)
    """LoRA dropout on the adapters' input (seeded: healing stays deterministic for a seed)."""
    schedule: str = field(default="constant", metadata=LATER)
    """Learning-rate schedule after the warm-up: constant, cosine or linear (decay to 0 at the last step)."""
    warmup: int = field(default=0, metadata=LATER)
    """Linear warm-up steps from 0 to ``lr`` (counted within ``steps``)."""

    def __post_init__(self) -> None:
        for name in ("steps", "rank", "batch", "log_every", "holdout_tokens"):
            if int(getattr(self, name)) < 1:
                raise HealError(f"heal {name} must be at least 1, not {getattr(self, name)}")
        if not self.lr > 0 or not self.alpha > 0:
            raise HealError("heal learning rate and alpha must be positive")
        if not 0 <= self.dropout < 1:
            raise HealError(f"heal dropout must be in [0, 1), not {self.dropout}")
        if self.schedule not in SCHEDULES:
            raise HealError(f"unknown heal schedule '{self.schedule}': use {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup < self.steps:
            raise HealError(f"heal warm-up must be 0 or more and below the {self.steps} steps, not {self.warmup}")
        if self.corpus not in ("book", "wikitext2", "c4", "text"):
            raise HealError(f"unknown heal corpus '{self.corpus}': use book, wikitext2, c4 or text")

    def eval_cfg(self) -> EvalCfg:
        """The perplexity evaluation whose windows are held out."""
        from interp.evals import EvalCfg

        # the keyword is named by the corpus (wikitext2_path, c4_path)
        paths: dict[str, Any] = {f"{self.corpus}_path": self.corpus_path} if self.corpus != "book" else {}
        return EvalCfg(tasks=("ppl",), budget=f"ppl={self.holdout_tokens}", seed=self.holdout_seed, corpus=self.corpus,
                       window=self.window, **paths)


_windows: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()


def training_windows(loaded: Loaded, cfg: HealCfg) -> tuple[list[tuple[int, ...]], dict]:
    """Every corpus window of the evaluation's grid that the evaluation does not score
    (cached per tokenizer, so a sweep with many healed points tokenises the corpus once)."""
    from interp.capture.batching import context_length

    key = (cfg.eval_cfg(), context_length(loaded.model))
    try:
        per_tok = _windows.setdefault(loaded.tokenizer, {})
    except TypeError:
        per_tok = {}
    if key not in per_tok:
        per_tok[key] = _training_windows(loaded, cfg)
    return per_tok[key]


def _training_windows(loaded: Loaded, cfg: HealCfg) -> tuple[list[tuple[int, ...]], dict]:
    from interp.evals import ppl

    ecfg = cfg.eval_cfg()
    length = ppl.window_length(loaded, ecfg)
    docs, source = ppl.corpus_texts(ecfg)
    every = ppl.make_windows(loaded.tokenizer, docs, length, None, ecfg.seed, ecfg.corpus, source)
    scored = set(ppl.make_windows(loaded.tokenizer, docs, length, ecfg.count("ppl"), ecfg.seed,
                                  ecfg.corpus, source).windows)
    train = [w for w in every.windows if w not in scored]
    if not train:
        raise HealError(f"corpus '{cfg.corpus}' has no windows left after holding out the evaluation's "
                        f"{len(scored)}: use a bigger corpus or a smaller evaluation budget")
    return train, {"corpus": cfg.corpus, "source": source, "window": length, "train_windows": len(train),
                   "held_out": len(scored)}


def mlp_targets(loaded: Loaded) -> list[str]:
    """peft target names of the MLP's linear layers (e.g. mlp.gate_proj, mlp.up_proj, mlp.down_proj)."""
    mlp = loaded.arch.mlp + "."
    return sorted({p for p in loaded.arch.proj.values() if p.startswith(mlp)})


def _scheduler(opt: torch.optim.Optimizer, cfg: HealCfg) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' learning-rate schedules (warm-up, then constant, cosine or linear decay)."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    return get_scheduler(name, opt, num_warmup_steps=cfg.warmup, num_training_steps=cfg.steps)


@contextlib.contextmanager
def healed(loaded: Loaded, cfg: HealCfg, progress: bool = False) -> Iterator[HealLog]:
    """Fine-tune LoRA adapters on the MLPs of the model *as it is now*; yields the training log
    (step, loss, seconds) and the trained adapters. They are removed on exit, restoring the model exactly."""
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    windows, _ = training_windows(loaded, cfg)
    model = loaded.model
    was_training = model.training
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    # peft annotates lora_alpha as int, but any positive number works (it scales updates by alpha / r)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha,  # type: ignore[arg-type]
                      lora_dropout=cfg.dropout, bias="none", target_modules=mlp_targets(loaded),
                      fan_in_fan_out=loaded.arch.conv1d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, lora)
    try:
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        sched = _scheduler(opt, cfg)
        rows, t0 = [], time.perf_counter()
        model.eval()  # the model's own dropout off; LoRA dropout (seeded above) on when asked for
        for name, module in peft_model.named_modules():
            if name.endswith("lora_dropout"):
                module.train(cfg.dropout > 0)
        with torch.enable_grad():
            for step in tqdm(range(1, cfg.steps + 1), desc="heal", unit="step", disable=not progress, leave=False):
                picked = rng.sample(range(len(windows)), min(cfg.batch, len(windows)))
                ids = torch.tensor([windows[i] for i in picked], dtype=torch.long, device=loaded.device)
                loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
                loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                if step % cfg.log_every == 0 or step == cfg.steps or step == 1:
                    rows.append((step, float(loss.detach()), time.perf_counter() - t0))
        for p in params:
            p.requires_grad_(False)
        adapters = {n: p.detach().float().cpu().numpy().copy() for n, p in peft_model.named_parameters()
                    if "lora_" in n}
        yield HealLog(pd.DataFrame(rows, columns=["step", "loss", "seconds"]), adapters)
    finally:
        peft_model.unload()
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        model.train(was_training)
