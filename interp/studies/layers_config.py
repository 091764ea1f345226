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

from dataclasses import dataclass, field, replace
from typing import ClassVar

from analyses.layer_blocks import STRATEGIES
from interp.data.prompts import check_prompt_specs
from interp.evals import EvalCfg
from interp.interventions.heal import HealCfg
from interp.studies.part_names import check_parts, flat_defaults, flat_values, where
from interp.studies.parts import EvalPart, HealPart
from interp.validate import InvalidValue, ListOf, Optional, Whole, key_name, refuse

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

    STUDY: ClassVar[str] = "layers"
    FLAT: ClassVar[dict[str, tuple[str, str]]] = {
        "tasks": ("eval", "tasks"), "eval_budget": ("eval", "budget"), "mmlu_path": ("eval", "mmlu_path"),
        "boolq_path": ("eval", "boolq_path"), "gsm8k_path": ("eval", "gsm8k_path"), "corpus": ("eval", "corpus"),
        "corpus_path": ("eval", "corpus_path"),
        **{f"heal_{k}": ("heal", k) for k in ("steps", "strategies", "sizes", "rank", "lr", "batch", "alpha", "dropout",
                                              "schedule", "warmup")}}
    """Flag (and flat file key, and run-identity key) -> (part, field): interp.studies.parts."""
    LATER_KEYS: ClassVar[tuple[str, ...]] = ("heal_alpha", "heal_dropout", "heal_schedule", "heal_warmup", "gsm8k_path",
                                             "corpus", "corpus_path")
    """Settings added after runs were stored: at their defaults they stay out of the identity (as LATER fields)."""
    CONFIG_SPECS: ClassVar[dict] = {"sizes": Optional(ListOf(Whole(min=1))), "limit": Optional(Whole(min=1)),
                                    "max_tokens": Optional(Whole(min=1))}
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
    seed: int = 0
    """Seed of the evaluation subsets, prompt sampling and healing."""
    eval: EvalPart = field(default_factory=lambda: EvalPart(corpus="book"))
    """Evaluation: tasks (None: smoke ppl; quick and full ppl,facts,arith), budget (None: smoke ppl=256; quick
    ppl=1024,facts=24,arith=16; full the evaluation's quick budget), local data, and the corpus of the perplexity
    evaluation and of healing (book by default)."""
    heal: HealPart = field(default_factory=HealPart)
    """LoRA healing of the dropped blocks (steps 0: off)."""
    batch_size: int = field(default=8, compare=False)
    """Prompts per forward pass when caching (never changes results)."""

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise LayersCfgError(str(refuse("budget", "one of smoke, quick, full", self.budget, BUDGETS)))
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise LayersCfgError(str(refuse("strategies", f"some of {', '.join(STRATEGIES)}", bad[0], STRATEGIES)))
        check_parts(self)
        if self.eval.corpus is None:  # unset means the book corpus, as the field's default says
            object.__setattr__(self, "eval", replace(self.eval, corpus="book"))
        try:
            self.heal.check(where(self, "heal"), ("single", *STRATEGIES))
        except InvalidValue as e:
            raise LayersCfgError(str(e)) from None
        if self.sizes is not None and (not self.sizes or min(self.sizes) < 1):
            raise LayersCfgError(str(refuse("sizes", "whole numbers of at least 1", self.sizes)))
        if self.limit is not None and self.limit < 1:
            raise LayersCfgError(str(refuse("limit", "a whole number of at least 1 prompt", self.limit)))
        if self.max_tokens is not None and self.max_tokens < 1:
            raise LayersCfgError(str(refuse("max_tokens", "a whole number of at least 1", self.max_tokens)))
        if self.batch_size < 1:
            raise LayersCfgError(str(refuse("batch_size", "a whole number of at least 1", self.batch_size)))
        check_prompt_specs(self.prompts)
        try:
            self.eval.check(where(self, "eval"))
        except InvalidValue as e:
            raise LayersCfgError(str(e)) from None
        self.eval_cfg()  # fail fast on anything else the evaluation refuses
        if self.heal.steps:
            self.heal_cfg()
        sizes = self.heal.sizes
        if sizes is not None and self.sizes is not None and not set(sizes) <= set(self.sizes):
            raise LayersCfgError(f"{where(self, 'heal').key('sizes')} {sorted(set(sizes) - set(self.sizes))} are not "
                                 f"among the swept sizes: add them to {key_name('sizes')}")

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
        tasks = {"smoke": ("ppl",), "quick": ("ppl", "facts", "arith"), "full": ("ppl", "facts", "arith")}[self.budget]
        budget = {"smoke": "ppl=256", "quick": QUICK_EVAL, "full": "quick"}[self.budget]
        return self.eval.build(tasks, budget, self.seed)

    def heal_cfg(self) -> HealCfg:
        return self.heal.build(self.eval_cfg(), self.seed, self.eval.corpus_path)

    def identity(self) -> dict:
        """The study's part of the run identity, in the flat names it had before the parts existed."""
        default = flat_defaults(LayersCfg)
        return {k: v for k, v in flat_values(self).items()
                if k != "batch_size" and not (k in self.LATER_KEYS and v == default[k])}

