"""The shared parts of the study configs: evaluation, healing, calibration, probes and the head router.

A study config holds each part it uses as a field (``LayersCfg.eval: EvalPart``, ``LayersCfg.heal: HealPart``)
and keeps its own settings flat. Each part checks its ranges once (``check``), naming a bad key as the user
wrote it: the nested TOML table and the study's flag, ``[layers.heal] rank (--heal-rank) takes ...``. The study
passes that naming in (``Where``), and its ``__post_init__`` runs the checks, so a file, a flag and a Python
argument are refused alike. Flags and run identities keep the flat names the settings had before the parts
existed: each study's ``FLAT`` maps such a name to (part, field), and ``flat_values`` gives a config back as
that flat dict, so stored runs keep their identity (tests/unit/test_config_parts.py).

Defaults that differ between studies (layers evaluates on the book corpus, the others leave the corpus unset)
come from the study's ``field(default_factory=...)``; defaults a budget fills (None) are filled by the study.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from interp.evals.config import BUDGETS as EVAL_BUDGETS
from interp.evals.config import (
    CORPORA,
    TASKS,
    TOKENS,
    UNITS,
    EvalCfg,
    EvalError,
    corpus_args,
    parse_budget,
    parse_tasks,
)
from interp.evals.lmeval_spec import is_lmeval
from interp.studies.part_names import Where, check_layers
from interp.validate import Choice, InvalidValue, ListOf, Optional, Whole, closest

if TYPE_CHECKING:
    from analyses.probes import ProbeCfg
    from interp.interventions.heal import HealCfg
    from interp.interventions.pruning.calibdata import CalibData

__all__ = ["PARTS", "CalibPart", "EvalPart", "HealPart", "ProbePart", "RouterPart", "Where", "check_layers"]

RESID_HOOKS = ("resid_pre", "resid_post")
"""The hooks safety probes read (the residual stream)."""
PATH_TASKS = ("mmlu", "boolq", "gsm8k")
"""Tasks a local data path adds to the evaluation, in the order most studies add them."""


@dataclass(frozen=True)
class EvalPart:
    """What every sweep point is evaluated on: the tasks, how much of each, and from which local data."""

    CONFIG_SPECS: ClassVar[dict] = {"corpus": Optional(Choice(CORPORA))}
    """Ranges checked on flags and config-file keys alike (interp.studies.config_file.fields_of)."""

    tasks: tuple[str, ...] | None = None
    """Evaluation tasks (interp.evals.TASKS, or lm-eval:NAME where the study takes them here); None: the study's."""
    budget: str | dict | None = None
    """Evaluation budget: smoke, quick, full or per-task counts like 'ppl=2048,facts=40'; None: the study's."""
    mmlu_path: str | None = None
    """Local MMLU data: adds the mmlu task."""
    boolq_path: str | None = None
    """Local BoolQ data: adds the boolq task."""
    gsm8k_path: str | None = None
    """Local GSM8K data: adds the gsm8k task."""
    lm_eval: tuple[str, ...] = ()
    """lm-evaluation-harness tasks scored at every point besides the tasks ('lm-eval:arc_easy', ...)."""
    corpus: str | None = None
    """Perplexity corpus: book (offline), wikitext2, c4 (corpus_path offline) or text (your own file in
    corpus_path: one document per line, or JSONL/CSV with a 'text' column); None: book."""
    corpus_path: str | None = None
    """Local WikiText-2 / C4 file or folder for ``corpus``, or your own text file."""

    def check(self, at: Where) -> None:
        """The tasks, budget, corpus and data paths, named by their keys (EvalCfg checks them again)."""
        for key, names in (("tasks", self.tasks), ("lm_eval", self.lm_eval or None)):
            if names is None:
                continue
            bad = [t for t in names if not is_lmeval(t) and t not in TASKS]
            if bad:
                hint = closest(bad[0], TASKS)
                raise InvalidValue(f"{at.key(key)}: unknown task '{bad[0]}'" + (f" (did you mean {hint}?)" if hint else "")
                                   + f": use some of {', '.join(TASKS)}, or lm-eval:NAME")
            try:
                parse_tasks(names)
            except EvalError as e:
                raise InvalidValue(f"{at.key(key)}: {e}") from None
        if self.budget is not None:
            try:
                parse_budget(self.budget)
            except EvalError as e:
                spec = self.budget
                given: list[str] = [spec] if isinstance(spec, str) and "=" not in spec else (
                    [p.partition("=")[0].strip() for p in spec.split(",")] if isinstance(spec, str) else [str(k) for k in spec])
                bad = [n for n in given if n not in EVAL_BUDGETS and n not in UNITS and n not in TOKENS]
                hint = closest(bad[0], (*EVAL_BUDGETS, *UNITS, *TOKENS)) if bad else None
                raise InvalidValue(f"{at.key('budget')}: {e}" + (f" (did you mean {hint}?)" if hint else "")) from None
        if self.corpus is not None and self.corpus not in CORPORA:
            raise at.refuse("corpus", f"one of {', '.join(CORPORA)}", self.corpus, CORPORA)
        if self.corpus_path and self.corpus not in CORPORA[1:]:
            raise InvalidValue(f"{at.key('corpus_path')} is for the {', '.join(CORPORA[1:])} corpus: set "
                               f"{at.key('corpus')} too")
        if self.corpus == "text" and not self.corpus_path:
            raise InvalidValue(f"{at.key('corpus')} 'text' is your own file: give its path in {at.key('corpus_path')}")
        for key in ("mmlu_path", "boolq_path", "gsm8k_path", "corpus_path"):
            path = getattr(self, key)
            if path is not None and not Path(path).expanduser().exists():
                raise InvalidValue(f"{at.key(key)} '{path}' does not exist: give a local file or folder (the Hugging "
                                   "Face format for hub datasets), or leave it out")

    def build(self, tasks: tuple[str, ...], budget: str | dict, seed: int, order: tuple[str, ...] = PATH_TASKS,
              **extra: Any) -> EvalCfg:  # noqa: ANN401 (EvalCfg keywords such as harmful_path)
        """The evaluation config: ``tasks`` / ``budget`` are the study's when this part leaves them unset; the
        data paths add their tasks in ``order`` (weights adds gsm8k before boolq: kept, it is in its runs'
        identity)."""
        names = (*(self.tasks or tasks), *self.lm_eval)
        paths: dict[str, Any] = {t: getattr(self, f"{t}_path") for t in order}
        names = (*names, *(t for t, p in paths.items() if p and t not in names))
        chosen = self.budget or budget  # counts go as their pairs, as a dict would
        return EvalCfg(tasks=names, budget=tuple(chosen.items()) if isinstance(chosen, dict) else chosen, seed=seed,
                       **{f"{t}_path": p for t, p in paths.items() if p}, **corpus_args(self.corpus, self.corpus_path),
                       **extra)


@dataclass(frozen=True)
class HealPart:
    """LoRA healing of dropped blocks (interp.interventions.heal): which points and the recipe."""

    CONFIG_SPECS: ClassVar[dict] = {"steps": Whole(min=0), "sizes": Optional(ListOf(Whole(min=1)))}
    """Ranges checked on flags and config-file keys alike (interp.studies.config_file.fields_of)."""

    steps: int = 0
    """LoRA healing steps for each healed point; 0: no healing."""
    strategies: tuple[str, ...] = ("angular",)
    """Strategies whose blocks are also evaluated healed."""
    sizes: tuple[int, ...] | None = None
    """Block sizes that get a healed point; None: every swept size (healing costs minutes per point)."""
    rank: int = 8
    """LoRA rank of the healing adapters."""
    alpha: float = 16.0
    """LoRA alpha of the healing adapters (updates scaled by alpha / rank)."""
    dropout: float = 0.0
    """LoRA dropout of the healing adapters."""
    lr: float = 2e-4
    """Healing learning rate."""
    schedule: str = "constant"
    """Learning-rate schedule after the warm-up: constant, cosine or linear."""
    warmup: int = 0
    """Warm-up steps (linear from 0 to lr)."""
    batch: int = 4
    """Training windows per healing step."""

    def check(self, at: Where, strategies: tuple[str, ...]) -> None:
        """The recipe's ranges (HealCfg checks them again for direct users); ``strategies``: the healable ones."""
        from interp.interventions.heal import SCHEDULES

        bad = [s for s in self.strategies if s not in strategies]
        if bad:
            raise at.refuse("strategies", f"some of {', '.join(strategies)}", bad[0], strategies)
        if self.steps < 0:
            raise at.refuse("steps", "a whole number of at least 0 (0: off)", self.steps)
        if self.sizes is not None and (not self.sizes or min(self.sizes) < 1):
            raise at.refuse("sizes", "whole numbers of at least 1", self.sizes)
        for key in ("rank", "batch"):
            if getattr(self, key) < 1:
                raise at.refuse(key, "a whole number of at least 1", getattr(self, key))
        for key in ("lr", "alpha"):
            if not getattr(self, key) > 0:
                raise at.refuse(key, "a number above 0", getattr(self, key))
        if not 0 <= self.dropout < 1:
            raise at.refuse("dropout", "a number from 0 up to (not including) 1", self.dropout)
        if self.schedule not in SCHEDULES:
            raise at.refuse("schedule", f"one of {', '.join(SCHEDULES)}", self.schedule, SCHEDULES)
        if self.warmup < 0 or (self.steps and self.warmup >= self.steps):
            raise at.refuse("warmup", f"a whole number of at least 0 and below steps ({self.steps})", self.warmup)

    def build(self, ecfg: EvalCfg, seed: int, corpus_path: str | None) -> HealCfg:
        """The healing config: trained on the evaluation's corpus, off the windows it scores."""
        from interp.interventions.heal import HealCfg

        return HealCfg(steps=self.steps, rank=self.rank, lr=self.lr, batch=self.batch, seed=seed, corpus=ecfg.corpus,
                       window=ecfg.window, holdout_tokens=ecfg.count("ppl") or 1, holdout_seed=ecfg.seed,
                       alpha=self.alpha, dropout=self.dropout, schedule=self.schedule, warmup=self.warmup,
                       corpus_path=corpus_path)


@dataclass(frozen=True)
class CalibPart:
    """Wanda's calibration text (interp.interventions.pruning.calibdata) and how its norms are taken."""

    CONFIG_SPECS: ClassVar[dict] = {"windows": Optional(Whole(min=1)), "corpus": Optional(Choice(CORPORA))}
    """Ranges checked on flags and config-file keys alike (interp.studies.config_file.fields_of)."""

    corpus: str | None = None
    """Calibration corpus: book, wikitext2, c4 or text (your own file in ``path``); None: book."""
    path: str | None = None
    """Local file or folder of ``corpus``: WikiText-2 / C4 in the hub's formats, or for 'text' a .txt file (one
    document per line) or JSONL/CSV/parquet with a 'text' column. Its content digest joins the identity."""
    windows: int | None = None
    """Calibration windows; None: the budget's (quick 16 x 128 tokens, full 64 x 256)."""
    order: str = "sequential"
    """Wanda norms taken block by block on the progressively pruned model (sequential), or from the dense
    model once (oneshot)."""

    def check(self, at: Where) -> None:
        if self.order not in ("sequential", "oneshot"):
            raise at.refuse("order", "sequential or oneshot", self.order, ("sequential", "oneshot"))
        if self.windows is not None and self.windows < 1:
            raise at.refuse("windows", "a whole number of at least 1", self.windows)
        if self.corpus is not None and self.corpus not in CORPORA:
            raise at.refuse("corpus", f"one of {', '.join(CORPORA)}", self.corpus, CORPORA)
        if self.path is not None and self.corpus in (None, "book"):
            raise InvalidValue(f"{at.key('path')} is for the wikitext2, c4 or text calibration corpus: set "
                               f"{at.key('corpus')} too")

    def build(self, windows: int, length: int, seed: int, exclude: tuple[int, int, int] | None) -> CalibData:
        """The calibration set (``windows``: the budget's when this part leaves them unset)."""
        from interp.interventions.pruning.calibdata import CalibData

        return CalibData(source=self.corpus or "book", windows=self.windows or windows, length=length, seed=seed,
                         exclude=exclude, path=self.path)


@dataclass(frozen=True)
class ProbePart:
    """The safety probes: where they read, and how they are fitted and tested (analyses.probes)."""

    CONFIG_SPECS: ClassVar[dict] = {"folds": Optional(Whole(min=2)), "permutations": Optional(Whole(min=1))}
    """Ranges checked on flags and config-file keys alike (interp.studies.config_file.fields_of)."""

    hooks: tuple[str, ...] | None = None
    """Residual-stream hooks probed and turned into directions (resid_pre, resid_post); None: the budget's."""
    layers: str | None = None
    """'all', 'stride:k' or comma-separated layers to probe; None: the budget's."""
    positions: tuple[str, ...] = ("last", "mean")
    """Token reductions probed: last token (the generation point) and mean over tokens."""
    folds: int | None = None
    """Cross-validation folds; None: the budget's."""
    permutations: int | None = None
    """Label permutations per probed cell (problem, hook, layer, position) for the permutation null."""
    ridge: float = 1.0
    """Penalty of the ridge probe, in units of the mean squared norm of a standardised training vector."""
    C: float = 0.1
    """Inverse L2 strength of the logistic probe (the second, labelled probe: cv_logistic)."""
    test_frac: float = 0.3
    """Share of each (dataset, source) stratum in the test split: held-out probe scores and the validation
    prompts the direction is chosen on (never the evaluation's prompts)."""

    def check(self, at: Where) -> None:
        bad = [h for h in self.hooks or () if h not in RESID_HOOKS]
        if bad:
            raise at.refuse("hooks", "resid_pre or resid_post (safety probes read the residual stream)", bad[0],
                            RESID_HOOKS)
        bad = [p for p in self.positions if p not in ("last", "mean")]
        if bad or not self.positions:
            raise at.refuse("positions", "last and/or mean", bad[0] if bad else self.positions, ("last", "mean"))
        if self.layers is not None:
            check_layers(self.layers, "layers", at.flags.get("layers"), at.table)
        if self.folds is not None and self.folds < 2:
            raise at.refuse("folds", "a whole number of at least 2", self.folds)
        if self.permutations is not None and self.permutations < 1:
            raise at.refuse("permutations", "a whole number of at least 1", self.permutations)
        for key in ("ridge", "C"):
            if not getattr(self, key) > 0:
                raise at.refuse(key, "a number above 0", getattr(self, key))
        if not 0 < self.test_frac < 1:
            raise at.refuse("test_frac", "a number between 0 and 1 (exclusive)", self.test_frac)

    def build(self, seed: int) -> ProbeCfg:
        from analyses.probes import ProbeCfg

        assert self.folds is not None and self.permutations is not None  # the study's budget filled them
        return ProbeCfg(folds=self.folds, ridge=self.ridge, permutations=self.permutations, C=self.C, seed=seed)


@dataclass(frozen=True)
class RouterPart:
    """The Mixture-of-Head routers of the head study (interp.studies.heads_train): one per kept share."""

    CONFIG_SPECS: ClassVar[dict] = {"steps": Optional(Whole(min=1))}
    """Ranges checked on flags and config-file keys alike (interp.studies.config_file.fields_of)."""

    keep: tuple[float, ...] | None = None
    """Share of each layer's heads a router keeps per token (one router is trained per value); None: the budget's."""
    steps: int | None = None
    """Optimiser steps per router; None: the budget's."""
    batch: int | None = None
    """Text sequences per router step; None: the budget's."""
    lr: float = 1e-3
    """AdamW learning rate of the router."""
    lb_coef: float = 0.01
    """Weight of the load-balancing loss."""
    train_seqs: int | None = None
    """Text sequences the routers train on (disjoint from the importance and held-out text); None: the budget's."""
    heldout_seqs: int | None = None
    """Text sequences for router usage statistics and held-out loss; None: the budget's."""

    def check(self, at: Where) -> None:
        if self.keep is not None and any(not 0 < f <= 1 for f in self.keep):
            raise at.refuse("keep", "fractions above 0 and at most 1", self.keep)
        if self.steps is not None and self.steps < 0:
            raise at.refuse("steps", "a whole number of at least 0", self.steps)
        for key in ("batch", "train_seqs", "heldout_seqs"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise at.refuse(key, "a whole number of at least 1", getattr(self, key))
        if not self.lr > 0:
            raise at.refuse("lr", "a number above 0", self.lr)
        if not self.lb_coef >= 0:
            raise at.refuse("lb_coef", "a number of at least 0", self.lb_coef)


PARTS = (EvalPart, HealPart, CalibPart, ProbePart, RouterPart)
"""Every part type: a study field holding one of them is a nested table of the study's config file."""
