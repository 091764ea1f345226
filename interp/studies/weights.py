"""Weight-pruning study (STUDIES.md section 3): magnitude and Wanda pruning at uniform rates,
per module group and per single projection, semi-structured N:M, all evaluated in one run
with the unpruned model.

Steps (re-running resumes: stored calibrations and evaluated points are never redone):
1. the sweep plan from the budget: uniform rates for each method (magnitude also with one
   global threshold), N:M, attention-only and MLP-only, each projection alone, mixed rates;
2. the base model's own sparsity -> prune_points ('base');
3. ``run_sweep`` with a store-backed lookup of Wanda norms: applying a point yields its report,
   which the sweep stores (sparsity per module in prune_points, prune_stats; the Wanda input norms
   it computed in calibrations, input_norms) with the point's evals; the ``prune_curve`` view
   joins metric and rate / pruned weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from interp.evals import EvalCfg
from interp.evals.ppl import window_length
from interp.interventions import describe
from interp.interventions.prune import METHODS, PruneSpec
from interp.model.loading import Loaded
from interp.interventions.pruning.apply import dense_report
from interp.interventions.pruning.calibdata import CalibData
from interp.interventions.pruning.session import using
from interp.interventions.pruning.stored import StoreSession
from interp.interventions.pruning.targets import PROJECTIONS
from interp.studies.sweep import Phase, no_phase, run_sweep, start_study_run
from store import Store
from store.weights import curve, done_prune_points

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
    """The weight-pruning study. Every field is part of the run's identity."""

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

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget '{self.budget}': use smoke, quick or full")
        methods = tuple(m.strip() for m in (self.methods.split(",") if isinstance(self.methods, str)
                                              else self.methods) if m.strip())
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ValueError(f"unknown pruning method '{','.join(bad) or self.methods}': use magnitude and/or wanda")
        object.__setattr__(self, "methods", methods)
        if self.calibration not in ("sequential", "oneshot"):
            raise ValueError(f"unknown calibration '{self.calibration}': use sequential or oneshot")
        if self.calib_windows is not None and self.calib_windows < 1:
            raise ValueError("calibration needs at least 1 window")
        self.eval_cfg()  # fail on bad tasks / budget before a model is loaded

    @property
    def plan(self) -> Plan:
        return PLANS[self.budget]

    def eval_cfg(self) -> EvalCfg:
        return EvalCfg(tasks=self.tasks or self.plan.tasks, budget=self.eval_budget or self.plan.eval_budget,
                       seed=self.seed)

    def calib_data(self, loaded: Loaded) -> CalibData:
        """The calibration set, kept off the perplexity windows the evaluation scores."""
        ev = self.eval_cfg()
        exclude = None
        if "ppl" in ev.tasks and ev.corpus == "book":
            exclude = (window_length(loaded, ev), ev.count("ppl") or 10**9, ev.seed)
        return CalibData(windows=self.calib_windows or self.plan.calib_windows, length=self.plan.calib_length,
                         seed=self.seed, exclude=exclude)

    def identity(self) -> dict:
        return {"study": STUDY, "budget": self.budget, "seed": self.seed, "methods": list(self.methods),
                "calibration": self.calibration}


def plan_points(loaded: Loaded, cfg: WeightsCfg) -> list[PruneSpec]:
    """Every distinct point of the sweep, in order (uniform, N:M, groups, singles, mixed)."""
    p, calib = cfg.plan, cfg.calib_data(loaded)
    projections = [m for m in PROJECTIONS if m in loaded.arch.proj and m in (p.single_modules or PROJECTIONS)]

    def spec(method, rate, modules=("all",), **kw):
        extra = {"calibration": kw.pop("calibration", cfg.calibration), "calib": calib} if method == "wanda" else {}
        return PruneSpec(method, rate, modules, **kw, **extra)

    out: list[PruneSpec] = []
    for method in cfg.methods:
        out += [spec(method, r) for r in p.uniform]
    if "magnitude" in cfg.methods:
        out += [spec("magnitude", r, group="global") for r in p.global_rates]
    if "wanda" in cfg.methods and cfg.calibration == "sequential":
        out += [spec("wanda", r, calibration="oneshot") for r in p.oneshot_rates]
    for method in (m for m in p.nm_methods if m in cfg.methods):
        out += [spec(method, None, structure=s) for s in p.nm]
    for method in (m for m in p.group_methods if m in cfg.methods):
        out += [spec(method, r, (g,)) for g in ("attn", "mlp") for r in p.group_rates]
    for method in (m for m in p.single_methods if m in cfg.methods):
        out += [spec(method, r, (m,)) for m in projections for r in p.single_rates]
    for method in (m for m in p.mixed_methods if m in cfg.methods):
        out += [spec(method, dict(recipe)) for recipe in p.mixed]
    return list(dict.fromkeys(out))


def run_config(loaded: Loaded, cfg: WeightsCfg, points: list[PruneSpec]) -> dict:
    """The run's identity, built the way ``run_sweep`` builds it (study config + eval + points)."""
    return {**cfg.identity(), "eval": cfg.eval_cfg().describe(), "points": [{"kind": "base"}, *map(describe, points)]}


def run_weights(loaded: Loaded, store: Store, cfg: WeightsCfg, progress: bool = True,
                on_phase: Phase = no_phase) -> int:
    """The whole study into ``store``; returns the run id (see the module docstring for the steps)."""
    on_phase("plan")
    points = plan_points(loaded, cfg)
    config = run_config(loaded, cfg, points)
    run_id, status = start_study_run(loaded, store, STUDY, config)
    if status == "complete":
        return run_id
    with store.connect() as con:
        if "base" not in done_prune_points(con, run_id):
            on_phase("dense")
            dense_report(loaded).save(con, run_id, "base")
    on_phase("sweep")
    with using(StoreSession(store)):
        run_sweep(loaded, store, study=STUDY, config=config, points=points, eval_cfg=cfg.eval_cfg(),
                  progress=progress, run_id=run_id)
        with store.connect() as con:
            missing = [s for s in points if s.label() not in done_prune_points(con, run_id)]
        for spec in missing:  # evaluated by a run older than the by-product channel: record them again
            with spec.apply(loaded) as report, store.connect() as con:
                report.save(con, run_id, spec.label())
    return run_id


def summary(store: Store, run_id: int) -> pd.DataFrame:
    """One row per point: sparsity reached, weights removed, and the first task's headline metric."""
    with store.connect(read_only=True) as con:
        df = curve(con, run_id)
    if df.empty:
        return df
    head = df[(df["task"] == "ppl") & (df["metric"] == "perplexity")]
    first = df.iloc[0]
    df = head if not head.empty else df[(df["task"] == first["task"]) & (df["metric"] == first["metric"])]
    return df[["point", "sparsity", "n_pruned", "pruned_fraction", "task", "metric", "value", "stderr"]] \
        .reset_index(drop=True)
