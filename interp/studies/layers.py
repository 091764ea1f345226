"""Layer study (STUDIES.md section 2): residual-stream similarity between layers, Gromov angular
distance and ShortGPT Block Influence, then dropping layers (one at a time, and blocks chosen
by each strategy), optionally healed with LoRA, all evaluated in one run with the base model,
and how well each cheap proxy predicts the real cost of a drop.

Steps (re-running resumes: captured prompts and evaluated points are never redone):
1. cache resid_pre of every layer and resid_post of the last (last token, token mean, and every
   token: the per-token similarity needs them);
2. similarity (positions last, mean = cosine of token-mean vectors, tokens = per-token cosine
   averaged over tokens), Gromov angular distance (last token, also mean; the block rule uses
   last) and Block Influence (last, mean, and tokens: ShortGPT's token average), streamed from
   the store part by part -> layer_* tables;
3. the sweep plan (single layers, blocks per strategy and size, healed blocks) -> layer_points;
4. ``run_sweep``: base + every distinct layer set -> evals (healing logs -> layer_heal);
5. agreement of the proxies with the measured harm -> layer_agreement.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analyses import layer_agreement, layer_blocks, layer_similarity
from interp.capture.capture import CaptureCfg, capture
from interp.interventions import describe
from interp.interventions.layers import HealedDrop, LayerDrop
from interp.model.loading import Loaded
from interp.studies.layers_config import LayersCfg
from interp.studies.sweep import Phase, no_phase, run_sweep, start_study_run
from store import Store
from store import layers as db
from store.runs import finish_run

STUDY = "layers"


@dataclass(frozen=True)
class LayersResult:
    run_id: int
    cache_run_id: int
    n_points: int


def capture_cfg(loaded: Loaded, cfg: LayersCfg) -> CaptureCfg:
    """The residual stream entering every layer, plus the last layer's output (before the final norm),
    at the last token, as the token mean, and at every token (for the ``tokens`` similarity)."""
    return CaptureCfg(prompts=cfg.prompts, hooks=f"resid_pre,resid_post:{loaded.n_layers - 1}",
                      positions="last,mean,all", backend="torch", limit=cfg.n_prompts, seed=cfg.seed,
                      chat=cfg.chat, max_tokens=cfg.tokens, batch_size=cfg.batch_size)


def analyse(store: Store, cache_run_id: int) -> dict[str, pd.DataFrame]:
    with store.connect(read_only=True) as con:
        return layer_similarity.run(con, store, cache_run_id, layer_similarity.POSITIONS)


def plan_points(loaded: Loaded, cfg: LayersCfg, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """layer_points rows (strategy, n, seed, heal_steps, layers, point) plus each row's intervention."""
    L = loaded.n_layers
    plan = layer_blocks.plan(L, cfg.block_sizes(L), cfg.block_strategies(), cfg.random_seeds,
                             tables["angular"], tables["influence"], singles=cfg.single_layers(L))
    plan["heal_steps"] = 0
    plan["spec"] = [LayerDrop(ls) for ls in plan["layers"]]
    if cfg.heal.steps:
        heal = cfg.heal_cfg()
        healed = plan[plan["strategy"].isin(cfg.heal.strategies)
                      & (plan["n"].isin(cfg.heal.sizes) if cfg.heal.sizes is not None else True)].copy()
        healed["heal_steps"] = cfg.heal.steps
        healed["spec"] = [HealedDrop(ls, heal) for ls in healed["layers"]]
        plan = pd.concat([plan, healed], ignore_index=True)
    plan["point"] = [s.label() for s in plan["spec"]]
    return plan


def distinct_specs(plan: pd.DataFrame) -> list:
    """Each intervention once, in plan order (single layers first, then blocks by size)."""
    seen, out = set(), []
    for spec in plan.sort_values(["heal_steps", "n"], kind="stable")["spec"]:
        if spec not in seen:
            seen.add(spec)
            out.append(spec)
    return out


def run_config(loaded: Loaded, cfg: LayersCfg, cache_run_id: int, specs: list) -> dict:
    """The run's identity, built the way ``run_sweep`` builds it (study config + eval + points)."""
    config = {"study": STUDY, "cache_run_id": cache_run_id, "capture": capture_cfg(loaded, cfg).identity(),
              "layers": cfg.identity(), "stream": layer_similarity.STREAM}
    return {**config, "eval": cfg.eval_cfg().describe(), "points": [{"kind": "base"}, *map(describe, specs)]}


def run_layers(loaded: Loaded, store: Store, cfg: LayersCfg, progress: bool = True,
               on_phase: Phase = no_phase) -> LayersResult:
    """The whole study into ``store``; returns the run ids (see the module docstring for the steps)."""
    cfg.block_sizes(loaded.n_layers)  # refuse sizes the model cannot take before any work
    on_phase("capture")
    cache_run_id = capture(loaded, store, capture_cfg(loaded, cfg), progress=progress)
    on_phase("analyse")
    tables = analyse(store, cache_run_id)
    plan = plan_points(loaded, cfg, tables)
    specs = distinct_specs(plan)
    config = run_config(loaded, cfg, cache_run_id, specs)
    run_id, _ = start_study_run(loaded, store, STUDY, config)
    with store.connect() as con:
        db.replace_rows(con, run_id, {"layer_similarity": tables["similarity"], "layer_angular": tables["angular"],
                                      "layer_influence": tables["influence"],
                                      "layer_points": plan.drop(columns="spec")})
    on_phase("sweep")
    run_sweep(loaded, store, study=STUDY, config=config, points=specs, eval_cfg=cfg.eval_cfg(),
              progress=progress, run_id=run_id)
    with store.connect() as con:
        evals = db.point_evals(con, run_id)
        table = layer_agreement.agreement(plan.drop(columns="spec"), evals, tables["similarity"], tables["influence"])
        db.replace_rows(con, run_id, {"layer_agreement": table})
        finish_run(con, run_id)
    return LayersResult(run_id, cache_run_id, len(specs) + 1)
