"""Configuration of the weight-pruning study: ``WeightsCfg``, the budgets' sweep plans (``PLANS``)
and the user's own sweep (rates, modules, N:M patterns, per-module recipes) in place of a budget's.

The seed setups (README): magnitude pruning at 5..50% is ``methods=("magnitude",), rates=(0.05, 0.1,
0.2, 0.3, 0.4, 0.5)``; single-module Wanda is ``methods=("wanda",), modules=("q", ..., "down"),
module_rates=(0.5,), mixed=((("attn", 0.2), ("mlp", 0.6)), (("attn", 0.6), ("mlp", 0.2)))``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from interp.evals import EvalCfg
from interp.evals.config import CORPORA, corpus_args
from interp.evals.ppl import window_length
from interp.interventions.prune import METHODS
from interp.interventions.pruning.calibdata import CalibData, CalibrationError
from interp.interventions.pruning.targets import PROJECTIONS, SELECTORS
from interp.model.loading import Loaded
from interp.validate import Choice, InvalidValue, Optional, Whole, key_name, refuse

STUDY = "weights"
BUDGETS = ("smoke", "quick", "full")
TENTHS = tuple(round(0.1 * i, 1) for i in range(1, 10))


@dataclass(frozen=True)
class Plan:
    """What one budget sweeps and how much it evaluates."""

    uniform: tuple[float, ...]
    """Rates applied to every projection, for each method."""
    global_rates: tuple[float, ...]
    """Uniform rates with one global magnitude threshold over all projections."""
    nm: tuple[str, ...]
    """Semi-structured patterns, for each method."""
    group_rates: tuple[float, ...]
    """Rates for the attention-only and MLP-only sweeps."""
    group_methods: tuple[str, ...]
    single_rates: tuple[float, ...]
    """Rates for each projection pruned alone."""
    single_methods: tuple[str, ...]
    single_modules: tuple[str, ...] | None
    """Projections swept alone (those the model has); None: every projection."""
    mixed: tuple[tuple[tuple[str, float], ...], ...]
    """Per-module rate recipes (e.g. attention 20%, MLP 60%)."""
    oneshot_rates: tuple[float, ...]
    """Uniform Wanda rates with one-shot calibration (dense-model norms), against the sequential default."""
    tasks: tuple[str, ...]
    eval_budget: str
    calib_windows: int
    calib_length: int
    mixed_methods: tuple[str, ...] = ()
    nm_methods: tuple[str, ...] = ()


PLANS = {
    # Seconds of pruning work: one small projection per method (the CLI test).
    "smoke": Plan(uniform=(), global_rates=(), nm=(), group_rates=(), group_methods=(), single_rates=(0.5,),
                  single_methods=("magnitude", "wanda"), single_modules=("k",), mixed=(), oneshot_rates=(),
                  tasks=("ppl",), eval_budget="smoke", calib_windows=4, calib_length=64),
    # About 5 minutes on 2 idle CPU cores for SmolLM2-135M (18 points, perplexity on 1024 tokens).
    "quick": Plan(uniform=(0.3, 0.5, 0.7), global_rates=(0.5,), nm=("2:4",), group_rates=(0.5,),
                  group_methods=("magnitude",), single_rates=(0.5,), single_methods=("magnitude",),
                  single_modules=None, mixed=((("attn", 0.2), ("mlp", 0.6)),), mixed_methods=("wanda",),
                  oneshot_rates=(), nm_methods=("wanda",), tasks=("ppl",), eval_budget="ppl=1024",
                  calib_windows=8, calib_length=128),
    # Every rate 10..90%: about 115 points (hours on a CPU, minutes on a GPU).
    "full": Plan(uniform=TENTHS, global_rates=TENTHS, nm=("2:4", "4:8"), group_rates=TENTHS,
                 group_methods=METHODS, single_rates=(0.3, 0.6, 0.9), single_methods=METHODS, single_modules=None,
                 mixed=((("attn", 0.2), ("mlp", 0.6)), (("attn", 0.6), ("mlp", 0.2))), mixed_methods=METHODS,
                 oneshot_rates=(0.5, 0.7), nm_methods=METHODS, tasks=("ppl", "facts", "arith"), eval_budget="quick",
                 calib_windows=64, calib_length=256),
}


@dataclass(frozen=True)
class WeightsCfg:
    """The weight-pruning study. Fields left at None keep a run's identity as it was before they existed."""

    CONFIG_SPECS: ClassVar[dict] = {"calib_windows": Optional(Whole(min=1)), "calib_corpus": Optional(Choice(CORPORA)),
                                    "corpus": Optional(Choice(CORPORA))}
    """Ranges checked on flags and config-file keys alike (interp.studies.config_file.fields_of)."""

    budget: str = "full"
    """smoke (CLI tests), quick (minutes) or full (hours on a CPU): which points and how much evaluation."""
    seed: int = 0
    """Seed of the evaluation subsets and of the calibration windows."""
    methods: tuple[str, ...] = METHODS
    """Which scores to sweep: magnitude and/or wanda."""
    calibration: str = "sequential"
    """Wanda norms taken block by block on the progressively pruned model (sequential), or from the
    dense model once (oneshot)."""
    tasks: tuple[str, ...] | None = None
    """Evaluation tasks; None: the budget's (quick: ppl, facts; full: ppl, facts, arith)."""
    eval_budget: str | None = None
    """Evaluation budget (smoke, quick, full or counts like 'ppl=2048'); None: the budget's."""
    calib_windows: int | None = None
    """Calibration windows; None: the budget's (quick 16 x 128 tokens, full 64 x 256)."""
    rates: tuple[float, ...] | None = None
    """Your own sweep: rates applied to every projection, for each method. Giving any of rates, modules,
    nm, mixed or group_rates replaces the budget's whole plan by exactly what you give."""
    modules: tuple[str, ...] | None = None
    """Your own sweep: projections pruned alone (some of q, k, v, o, gate, up, down), at module_rates."""
    module_rates: tuple[float, ...] | None = None
    """Rates for each projection in ``modules`` pruned alone."""
    group_rates: tuple[float, ...] | None = None
    """Your own sweep: rates for the attention-only and the MLP-only points."""
    nm: tuple[str, ...] | None = None
    """Your own sweep: semi-structured N:M patterns such as 2:4, 4:8."""
    mixed: tuple[tuple[tuple[str, float], ...], ...] | None = None
    """Your own sweep: per-module rate recipes, e.g. attn=0.2:mlp=0.6 (selectors: q..down, qkv, attn, mlp, all)."""
    mmlu_path: str | None = None
    """Local MMLU data: adds the mmlu task."""
    gsm8k_path: str | None = None
    """Local GSM8K data: adds the gsm8k task."""
    boolq_path: str | None = None
    """Local BoolQ data: adds the boolq task."""
    corpus: str | None = None
    """Perplexity corpus: book, wikitext2, c4 (with corpus_path offline) or text (your own file); None: book."""
    corpus_path: str | None = None
    """Local WikiText-2 / C4 file or folder for ``corpus`` (for 'text': your own .txt or JSONL file)."""
    calib_corpus: str | None = None
    """Wanda calibration corpus: book, wikitext2, c4 or text (your own file, calib_path); None: book."""
    calib_path: str | None = None
    """Local file or folder of ``calib_corpus``: WikiText-2 / C4 in the hub's formats, or for 'text' a .txt file
    (one document per line) or JSONL/CSV/parquet with a 'text' column. Its content digest joins the identity."""

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise refuse("budget", "one of smoke, quick, full", self.budget, BUDGETS)
        methods = tuple(m.strip() for m in (self.methods.split(",") if isinstance(self.methods, str)
                                              else self.methods) if m.strip())
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise refuse("methods", "magnitude and/or wanda", ",".join(bad) or self.methods, METHODS)
        object.__setattr__(self, "methods", methods)
        if self.calibration not in ("sequential", "oneshot"):
            raise refuse("calibration", "sequential or oneshot", self.calibration, ("sequential", "oneshot"))
        if self.calib_windows is not None and self.calib_windows < 1:
            raise refuse("calib_windows", "a whole number of at least 1", self.calib_windows)
        for name in ("rates", "module_rates", "group_rates"):
            bad = [r for r in getattr(self, name) or () if not 0 < r < 1]
            if bad:
                raise refuse(name, "fractions between 0 and 1 (0.05 is 5%)", bad[0])
        bad = [m for m in self.modules or () if m not in PROJECTIONS]
        if bad:
            raise refuse("modules", f"some of {', '.join(PROJECTIONS)}", bad[0], PROJECTIONS)
        if bool(self.modules) != bool(self.module_rates):
            raise InvalidValue(f"{key_name('modules')} and {key_name('module_rates')} go together: give the "
                               "projections to prune alone and the rates to prune them at")
        for pattern in self.nm or ():
            n, _, m = pattern.partition(":")
            if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
                raise refuse("nm", "N:M patterns with 0 < N < M (e.g. 2:4)", pattern)
        for recipe in self.mixed or ():
            bad = [k for k, r in recipe if k not in SELECTORS or not 0 < r < 1]
            if bad:
                raise refuse("mixed", f"recipes of {', '.join(SELECTORS)} with rates between 0 and 1",
                             f"{bad[0]}={dict(recipe)[bad[0]]}", [f"{k}={dict(recipe)[bad[0]]}" for k in SELECTORS])
        self.eval_cfg()  # fail on bad tasks / budget / data paths before a model is loaded
        if self.calib_corpus is not None and self.calib_corpus not in CORPORA:
            raise refuse("calib_corpus", f"one of {', '.join(CORPORA)}", self.calib_corpus, CORPORA)
        if self.calib_path is not None and self.calib_corpus in (None, "book"):
            raise InvalidValue(f"{key_name('calib_path')} is for the wikitext2, c4 or text calibration corpus: set "
                               f"{key_name('calib_corpus')} too")
        try:
            self._calib(None)  # the calibration corpus and file (exists, readable type) before a model is loaded
        except CalibrationError as e:
            raise InvalidValue(str(e)) from None

    @property
    def custom(self) -> bool:
        """Whether the sweep is the user's own (rates, modules, nm, mixed, group_rates) instead of the budget's."""
        return any(getattr(self, n) for n in ("rates", "modules", "nm", "mixed", "group_rates"))

    @property
    def plan(self) -> Plan:
        base = PLANS[self.budget]
        if not self.custom:
            return base
        m = self.methods
        return Plan(uniform=self.rates or (), global_rates=(), nm=self.nm or (), group_rates=self.group_rates or (),
                    group_methods=m, single_rates=self.module_rates or (), single_methods=m,
                    single_modules=self.modules, mixed=self.mixed or (), oneshot_rates=(), tasks=base.tasks,
                    eval_budget=base.eval_budget, calib_windows=base.calib_windows, calib_length=base.calib_length,
                    mixed_methods=m, nm_methods=m)

    def eval_cfg(self) -> EvalCfg:
        tasks = self.tasks or self.plan.tasks
        # EvalCfg keywords named at run time (corpus, its *_path fields): Any, as mypy cannot check them
        paths: dict[str, Any] = {"mmlu": self.mmlu_path, "gsm8k": self.gsm8k_path, "boolq": self.boolq_path}
        tasks = (*tasks, *(t for t, p in paths.items() if p and t not in tasks))
        return EvalCfg(tasks=tasks, budget=self.eval_budget or self.plan.eval_budget, seed=self.seed,
                       **{f"{t}_path": p for t, p in paths.items() if p}, **corpus_args(self.corpus, self.corpus_path))

    def _calib(self, exclude: tuple[int, int, int] | None) -> CalibData:
        return CalibData(source=self.calib_corpus or "book", windows=self.calib_windows or self.plan.calib_windows,
                         length=self.plan.calib_length, seed=self.seed, exclude=exclude, path=self.calib_path)

    def calib_data(self, loaded: Loaded) -> CalibData:
        """The calibration set, kept off the perplexity windows the evaluation scores when both read one corpus."""
        ev, calib = self.eval_cfg(), self._calib(None)
        eval_path = getattr(ev, f"{ev.corpus}_path", None)
        same_file = (eval_path is None) == (calib.path is None) and (
            eval_path is None or Path(eval_path).resolve() == Path(calib.path or "").resolve())
        if "ppl" in ev.tasks and ev.corpus == calib.source and same_file:
            return self._calib((window_length(loaded, ev), ev.count("ppl") or 10**9, ev.seed))
        return calib

    def identity(self) -> dict:
        """The study fields of the run identity (the points and the evaluation config join them); the
        user-sweep and data fields only when set, so older runs keep their identity."""
        d = {"study": STUDY, "budget": self.budget, "seed": self.seed, "methods": list(self.methods),
             "calibration": self.calibration}
        for f in fields(self):
            if f.name not in ("budget", "seed", "methods", "calibration", "tasks", "eval_budget", "calib_windows") \
                    and getattr(self, f.name) is not None:
                d[f.name] = getattr(self, f.name)
        if self.calib_path is not None:  # a local file can change under the same name: its content is the identity
            from interp.model.digest import content_digest

            d["calib_sha256"] = content_digest(self.calib_path)
        return d
