"""Configuration of the weight-pruning study: ``WeightsCfg``, the budgets' sweep plans (``PLANS``)
and the user's own sweep (rates, modules, N:M patterns, per-module recipes) in place of a budget's.

The seed setups (README): magnitude pruning at 5..50% is ``methods=("magnitude",), rates=(0.05, 0.1,
0.2, 0.3, 0.4, 0.5)``; single-module Wanda is ``methods=("wanda",), modules=("q", ..., "down"),
module_rates=(0.5,), mixed=((("attn", 0.2), ("mlp", 0.6)), (("attn", 0.6), ("mlp", 0.2)))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from interp.evals import EvalCfg
from interp.evals.ppl import window_length
from interp.interventions.prune import METHODS
from interp.interventions.pruning.calibdata import CalibData, CalibrationError
from interp.interventions.pruning.targets import PROJECTIONS, SELECTORS
from interp.model.loading import Loaded
from interp.studies.part_names import check_parts, flat_values, where
from interp.studies.parts import CalibPart, EvalPart
from interp.validate import InvalidValue, key_name, refuse

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

    STUDY: ClassVar[str] = STUDY
    FLAT: ClassVar[dict[str, tuple[str, str]]] = {
        "tasks": ("eval", "tasks"), "eval_budget": ("eval", "budget"), "mmlu_path": ("eval", "mmlu_path"),
        "gsm8k_path": ("eval", "gsm8k_path"), "boolq_path": ("eval", "boolq_path"), "corpus": ("eval", "corpus"),
        "corpus_path": ("eval", "corpus_path"), "calibration": ("calib", "order"), "calib_windows": ("calib", "windows"),
        "calib_corpus": ("calib", "corpus"), "calib_path": ("calib", "path")}
    """Flag (and flat file key, and run-identity key) -> (part, field): interp.studies.parts."""

    budget: str = "full"
    """smoke (CLI tests), quick (minutes) or full (hours on a CPU): which points and how much evaluation."""
    seed: int = 0
    """Seed of the evaluation subsets and of the calibration windows."""
    methods: tuple[str, ...] = METHODS
    """Which scores to sweep: magnitude and/or wanda."""
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
    eval: EvalPart = field(default_factory=EvalPart)
    """Evaluation: tasks and budget (None: the budget's; quick ppl, full ppl,facts,arith), local data, corpus."""
    calib: CalibPart = field(default_factory=CalibPart)
    """Wanda calibration: corpus and file, windows, and sequential or oneshot norms."""

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise refuse("budget", "one of smoke, quick, full", self.budget, BUDGETS)
        methods = tuple(m.strip() for m in (self.methods.split(",") if isinstance(self.methods, str)
                                              else self.methods) if m.strip())
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise refuse("methods", "magnitude and/or wanda", ",".join(bad) or self.methods, METHODS)
        object.__setattr__(self, "methods", methods)
        check_parts(self)
        self.calib.check(where(self, "calib"))
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
        self.eval.check(where(self, "eval"))
        self.eval_cfg()  # fail on anything else the evaluation refuses before a model is loaded
        try:
            self._calib(None)  # the calibration corpus and file (exists, readable type) before a model is loaded
        except CalibrationError as e:
            raise InvalidValue(f"[{STUDY}.calib] {e}") from None

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
        return self.eval.build(self.plan.tasks, self.plan.eval_budget, self.seed, order=("mmlu", "gsm8k", "boolq"))

    def _calib(self, exclude: tuple[int, int, int] | None) -> CalibData:
        return self.calib.build(self.plan.calib_windows, self.plan.calib_length, self.seed, exclude)

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
        """The study fields of the run identity (the points and the evaluation config join them), in the flat
        names they had before the parts existed; the user-sweep and data fields only when set, so older runs keep
        their identity."""
        flat = flat_values(self)
        d = {"study": STUDY, **{k: flat[k] for k in ("budget", "seed")}, "methods": list(self.methods),
             "calibration": self.calib.order}
        for name, value in flat.items():
            if name not in ("budget", "seed", "methods", "calibration", "tasks", "eval_budget", "calib_windows") \
                    and value is not None:
                d[name] = value
        if self.calib.path is not None:  # a local file can change under the same name: its content is the identity
            from interp.model.digest import content_digest

            d["calib_sha256"] = content_digest(self.calib.path)
        return d
