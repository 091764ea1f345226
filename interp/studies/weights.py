"""Weight-pruning study (STUDIES.md section 3): magnitude and Wanda pruning at uniform rates,
per module group and per single projection, semi-structured N:M, all evaluated in one run
with the unpruned model.

Steps (re-running resumes: stored calibrations and evaluated points are never redone):
1. the sweep plan from the budget: uniform rates for each method (magnitude also with one
   global threshold), N:M, attention-only and MLP-only, each projection alone, mixed rates;
2. the base model's own sparsity -> prune_points ('base');
3. ``run_sweep`` with one store-backed source of Wanda norms passed to every apply (``StoreNorms``):
   applying a point yields its report, which the sweep stores (sparsity per module in prune_points,
   prune_stats; the Wanda input norms it computed in calibrations, input_norms) with the point's
   evals; the ``prune_curve`` view joins metric and rate / pruned weights.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import pandas as pd

from interp.interventions import Intervention, describe
from interp.interventions.prune import PruneSpec
from interp.interventions.pruning.apply import dense_report
from interp.interventions.pruning.calibdata import calibration_windows
from interp.interventions.pruning.stored import StoreNorms
from interp.interventions.pruning.targets import PROJECTIONS
from interp.model.loading import Loaded
from interp.studies.sweep import Phase, no_phase, run_sweep, start_study_run
from interp.studies.weights_config import BUDGETS, PLANS, STUDY, Plan, WeightsCfg  # noqa: F401 (the study's API)
from store import Store
from store.weights import curve, done_prune_points


def plan_points(loaded: Loaded, cfg: WeightsCfg) -> list[PruneSpec]:
    """Every distinct point of the sweep, in order (uniform, N:M, groups, singles, mixed)."""
    p, calib = cfg.plan, cfg.calib_data(loaded)
    projections = [m for m in PROJECTIONS if m in loaded.arch.proj and m in (p.single_modules or PROJECTIONS)]

    def spec(method: str, rate: float | tuple[tuple[str, float], ...] | None, modules: tuple[str, ...] = ("all",),
             **kw: Any) -> PruneSpec:
        extra: dict[str, Any] = {}
        if method == "wanda":
            extra = {"calibration": kw.pop("calibration", cfg.calib.order), "calib": calib}
        return PruneSpec(method, rate, modules, **kw, **extra)

    out: list[PruneSpec] = []
    for method in cfg.methods:
        out += [spec(method, r) for r in p.uniform]
    if "magnitude" in cfg.methods:
        out += [spec("magnitude", r, group="global") for r in p.global_rates]
    if "wanda" in cfg.methods and cfg.calib.order == "sequential":
        out += [spec("wanda", r, calibration="oneshot") for r in p.oneshot_rates]
    for method in (m for m in p.nm_methods if m in cfg.methods):
        out += [spec(method, None, structure=s) for s in p.nm]
    for method in (m for m in p.group_methods if m in cfg.methods):
        out += [spec(method, r, (g,)) for g in ("attn", "mlp") for r in p.group_rates]
    for method in (m for m in p.single_methods if m in cfg.methods):
        out += [spec(method, r, (m,)) for m in projections for r in p.single_rates]
    for method in (m for m in p.mixed_methods if m in cfg.methods):
        out += [spec(method, tuple(dict(recipe).items())) for recipe in p.mixed]  # a repeated module: its last rate
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
    calib = next((s.calib for s in points if s.calib is not None), None)
    if calib is not None:  # a calibration file that cannot be read fails here, before any point is evaluated
        calibration_windows(loaded.tokenizer, calib)
    with store.connect() as con:
        if "base" not in done_prune_points(con, run_id):
            on_phase("dense")
            dense_report(loaded).save(con, run_id, "base")
    on_phase("sweep")
    norms = StoreNorms(store)  # one source for the whole sweep: each calibration is computed at most once

    def apply(spec: Intervention) -> AbstractContextManager[object]:
        return spec.apply(loaded, norms=norms) if isinstance(spec, PruneSpec) else spec.apply(loaded)

    run_sweep(loaded, store, study=STUDY, config=config, points=points, eval_cfg=cfg.eval_cfg(),
              progress=progress, run_id=run_id, apply=apply)
    with store.connect() as con:
        missing = [s for s in points if s.label() not in done_prune_points(con, run_id)]
    for spec in missing:  # evaluated by a run older than the by-product channel: record them again
        with spec.apply(loaded, norms=norms) as report, store.connect() as con:
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
