"""Configuration of the layer study: ``LayersCfg`` and its smoke / quick / full presets.

What each budget does on SmolLM2-135M (30 layers); a point without k of the 30 layers costs
(30 - k) / 30 of a full forward pass:
- smoke: 8 prompts, layers 0 and 29 alone, one block size (10) by angular / deepest / random,
  perplexity on one 256-token window: 6 points, seconds of model time;
- quick: 64 prompts (3421 tokens; every token's 31 residual states are stored for the
  per-token similarity: 254 MB of shards, measured), all 30 layers alone, n in
  1,2,4,8,12,16 by every strategy with 3 random seeds, ppl (1024 tokens) + facts (24 items)
  + arith (16 items, greedy generation): about 60 points, about 55 full-model evaluations.
  quick: 224 s measured on an idle 2-core machine (2026-11-23) before the per-token
  similarity and arith were added. Their parts, measured in CPU seconds on one thread under
  load: the streamed analysis 1.5 s (0.2 s without tokens), capture about +1 s, arith
  2.2 s per full-model evaluation (ppl + facts: 5.9 s), so roughly +80 s in all (an
  estimate, not a measurement of the whole study);
- full: 256 prompts (about 13.7k tokens, about 1 GB of per-token shards), n = 1..29, 5 random seeds, ppl (2048) + facts (60) + arith (50):
  about 280 points, about 150 full-model evaluations; not measured (an estimate from
  per-evaluation CPU time is over an hour on 2 idle cores). Healing adds steps x (one
  training step on 4 windows of 256 tokens) per healed point, so ``--heal-sizes`` keeps it
  affordable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from analyses.layer_blocks import STRATEGIES
from interp.data.prompts import check_prompt_specs
from interp.evals import EvalCfg
from interp.evals.config import CORPORA, corpus_args
from interp.interventions.heal import SCHEDULES, HealCfg
from interp.provenance import LATER
from interp.validate import Choice, InvalidValue, ListOf, Optional, Whole, key_name, refuse

BUDGETS = ("smoke", "quick", "full")
QUICK_SIZES = (1, 2, 4, 8, 12, 16)
"""Block sizes of a quick sweep (those below the model's layer count)."""
QUICK_EVAL = "ppl=1024,facts=24,arith=16"
"""Evaluation counts of a quick sweep: arithmetic at 16 items is one batch of greedy generation."""


class LayersCfgError(InvalidValue):
    """A layer-study setting that cannot work; the message names the fix."""


@dataclass(frozen=True)
class LayersCfg:
    """What the layer study computes and how much of it. Everything but batch_size is the run's identity."""

    CONFIG_SPECS: ClassVar[dict] = {"sizes": Optional(ListOf(Whole(min=1))), "heal_sizes": Optional(ListOf(Whole(min=1))),
                                      "limit": Optional(Whole(min=1)), "max_tokens": Optional(Whole(min=1)),
                                      "heal_steps": Whole(min=0), "corpus": Choice(CORPORA)}
    """Ranges checked on flags and config-file keys alike (interp.studies.config_file.fields_of)."""

    budget: str = "full"
    """smoke (CLI tests: seconds of work), quick (minutes on 2 CPU cores) or full; sets the defaults below."""
    prompts: str = "book"
    """Prompt sets (or .jsonl/.csv files) whose residual streams give the similarity statistics."""
    limit: int | None = None
    """Prompts per set for the statistics; None: from the budget (8 / 64 / 256)."""
    max_tokens: int | None = None
    """Truncate longer prompts to their last N tokens; None: from the budget (64 / 256 / 512)."""
    chat: bool = False
    """Wrap prompts in the chat template (off: the statistics are over plain text, like the perplexity)."""
    sizes: tuple[int, ...] | None = None
    """Block sizes n to sweep; None: from the budget (quick: 1,2,4,8,12,16; full: 1..L-1)."""
    strategies: tuple[str, ...] = STRATEGIES
    """Block strategies (see analyses.layer_blocks); single-layer removal always runs."""
    seeds: tuple[int, ...] | None = None
    """Seeds of the random-block control; None: from the budget (2 / 3 / 5 seeds)."""
    heal_steps: int = 0
    """LoRA healing steps for each healed point; 0: no healing."""
    heal_strategies: tuple[str, ...] = ("angular",)
    """Strategies whose blocks are also evaluated healed."""
    heal_sizes: tuple[int, ...] | None = None
    """Block sizes that get a healed point; None: every swept size (healing costs minutes per point)."""
    heal_rank: int = 8
    """LoRA rank of the healing adapters."""
    heal_lr: float = 2e-4
    """Healing learning rate."""
    heal_batch: int = 4
    """Training windows per healing step."""
    tasks: tuple[str, ...] | None = None
    """Evaluation tasks; None: from the budget (smoke: ppl; quick and full: ppl,facts,arith)."""
    eval_budget: str | None = None
    """Evaluation budget (smoke/quick/full or counts like 'ppl=1024,facts=40'); None: from the budget
    (smoke: ppl=256; quick: ppl=1024,facts=24,arith=16; full: the evaluation's quick budget)."""
    mmlu_path: str | None = None
    """Local MMLU data: adds the mmlu task."""
    boolq_path: str | None = None
    """Local BoolQ data: adds the boolq task."""
    seed: int = 0
    """Seed of the evaluation subsets, prompt sampling and healing."""
    heal_alpha: float = field(default=16.0, metadata=LATER)
    """LoRA alpha of the healing adapters (updates scaled by alpha / rank)."""
    heal_dropout: float = field(default=0.0, metadata=LATER)
    """LoRA dropout of the healing adapters."""
    heal_schedule: str = field(default="constant", metadata=LATER)
    """Healing learning-rate schedule after the warm-up: constant, cosine or linear."""
    heal_warmup: int = field(default=0, metadata=LATER)
    """Healing warm-up steps (linear from 0 to heal_lr)."""
    gsm8k_path: str | None = field(default=None, metadata=LATER)
    """Local GSM8K data: adds the gsm8k task."""
    corpus: str = field(default="book", metadata=LATER)
    """Corpus of the perplexity evaluation and of healing: book (offline), wikitext2 or c4 (corpus_path offline),
    or text (your own file in corpus_path: one document per line, or JSONL with a 'text' field)."""
    corpus_path: str | None = field(default=None, metadata=LATER)
    """Local WikiText-2 / C4 file or folder for ``corpus``, or your own text file."""
    batch_size: int = field(default=8, compare=False)
    """Prompts per forward pass when caching (never changes results)."""

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise LayersCfgError(str(refuse("budget", "one of smoke, quick, full", self.budget, BUDGETS)))
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise LayersCfgError(str(refuse("strategies", f"some of {', '.join(STRATEGIES)}", bad[0], STRATEGIES)))
        bad = [s for s in self.heal_strategies if s not in (*STRATEGIES, "single")]
        if bad:
            raise LayersCfgError(str(refuse("heal_strategies", f"some of single, {', '.join(STRATEGIES)}", bad[0],
                                            ("single", *STRATEGIES))))
        if self.heal_steps < 0:
            raise LayersCfgError(str(refuse("heal_steps", "a whole number of at least 0 (0: off)", self.heal_steps)))
        if self.sizes is not None and (not self.sizes or min(self.sizes) < 1):
            raise LayersCfgError(str(refuse("sizes", "whole numbers of at least 1", self.sizes)))
        if self.limit is not None and self.limit < 1:
            raise LayersCfgError(str(refuse("limit", "a whole number of at least 1 prompt", self.limit)))
        if self.max_tokens is not None and self.max_tokens < 1:
            raise LayersCfgError(str(refuse("max_tokens", "a whole number of at least 1", self.max_tokens)))
        if self.batch_size < 1:
            raise LayersCfgError(str(refuse("batch_size", "a whole number of at least 1", self.batch_size)))
        self._check_heal()
        check_prompt_specs(self.prompts)
        self.eval_cfg()  # fail fast on bad tasks or evaluation budgets
        if self.heal_steps:
            self.heal_cfg()
        if self.heal_sizes is not None and self.sizes is not None and not set(self.heal_sizes) <= set(self.sizes):
            raise LayersCfgError(f"{key_name('heal_sizes')} {sorted(set(self.heal_sizes) - set(self.sizes))} are not "
                                 f"among the swept sizes: add them to {key_name('sizes')}")

    def _check_heal(self) -> None:
        """The heal recipe's ranges, named by their keys (HealCfg checks them again for direct users)."""
        for key, value in (("heal_rank", self.heal_rank), ("heal_batch", self.heal_batch)):
            if value < 1:
                raise LayersCfgError(str(refuse(key, "a whole number of at least 1", value)))
        for key, number in (("heal_lr", self.heal_lr), ("heal_alpha", self.heal_alpha)):
            if not number > 0:
                raise LayersCfgError(str(refuse(key, "a number above 0", number)))
        if not 0 <= self.heal_dropout < 1:
            raise LayersCfgError(str(refuse("heal_dropout", "a number from 0 up to (not including) 1", self.heal_dropout)))
        if self.heal_schedule not in SCHEDULES:
            raise LayersCfgError(str(refuse("heal_schedule", f"one of {', '.join(SCHEDULES)}", self.heal_schedule,
                                            SCHEDULES)))
        if self.heal_warmup < 0 or (self.heal_steps and self.heal_warmup >= self.heal_steps):
            raise LayersCfgError(str(refuse("heal_warmup", f"a whole number of at least 0 and below heal_steps "
                                            f"({self.heal_steps})", self.heal_warmup)))

    @property
    def n_prompts(self) -> int:
        return self.limit or {"smoke": 8, "quick": 64, "full": 256}[self.budget]

    @property
    def tokens(self) -> int:
        return self.max_tokens or {"smoke": 64, "quick": 256, "full": 512}[self.budget]

    @property
    def random_seeds(self) -> tuple[int, ...]:
        if self.seeds is not None:
            return tuple(self.seeds)
        return {"smoke": (0,), "quick": (0, 1, 2), "full": (0, 1, 2, 3, 4)}[self.budget]

    def block_sizes(self, n_layers: int) -> list[int]:
        if self.sizes is not None:
            bad = [n for n in self.sizes if n > n_layers - 1]
            if bad:
                raise LayersCfgError(f"{key_name('sizes')}: block size {bad[0]} is too big: this model has {n_layers} "
                                     f"layers, so sizes go up to {n_layers - 1}")
            return sorted(set(self.sizes))
        if self.budget == "smoke":
            return [max(1, min(n_layers - 1, n_layers // 3))]
        if self.budget == "quick":
            return [n for n in QUICK_SIZES if n <= n_layers - 1]
        return list(range(1, n_layers))

    def single_layers(self, n_layers: int) -> list[int]:
        """Layers removed one at a time: every layer (smoke: the first and the last)."""
        return sorted({0, n_layers - 1}) if self.budget == "smoke" else list(range(n_layers))

    def block_strategies(self) -> tuple[str, ...]:
        """The strategies swept (smoke: only angular, deepest and random, to stay seconds long)."""
        if self.budget == "smoke":
            return tuple(s for s in self.strategies if s in ("angular", "deepest", "random"))
        return tuple(self.strategies)

    def eval_cfg(self) -> EvalCfg:
        tasks = self.tasks or {"smoke": ("ppl",), "quick": ("ppl", "facts", "arith"),
                               "full": ("ppl", "facts", "arith")}[self.budget]
        # EvalCfg keywords named at run time (its *_path fields): Any, as mypy cannot check them
        paths: dict[str, Any] = {"mmlu": self.mmlu_path, "boolq": self.boolq_path, "gsm8k": self.gsm8k_path}
        extra = tuple(t for t, p in paths.items() if p and t not in tasks)
        budget = self.eval_budget or {"smoke": "ppl=256", "quick": QUICK_EVAL,
                                      "full": "quick"}[self.budget]
        return EvalCfg(tasks=(*tasks, *extra), budget=budget, seed=self.seed,
                       **{f"{t}_path": p for t, p in paths.items() if p}, **corpus_args(self.corpus, self.corpus_path))

    def heal_cfg(self) -> HealCfg:
        ecfg = self.eval_cfg()
        return HealCfg(steps=self.heal_steps, rank=self.heal_rank, lr=self.heal_lr, batch=self.heal_batch,
                       seed=self.seed, corpus=ecfg.corpus, window=ecfg.window,
                       holdout_tokens=ecfg.count("ppl") or 1, holdout_seed=ecfg.seed, alpha=self.heal_alpha,
                       dropout=self.heal_dropout, schedule=self.heal_schedule, warmup=self.heal_warmup,
                       corpus_path=self.corpus_path)

    def identity(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.compare
                and not (f.metadata.get("omit_default") and getattr(self, f.name) == f.default)}
