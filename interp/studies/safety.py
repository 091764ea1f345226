"""Safety study (STUDIES.md section 5): probes, harmful directions, directional ablation,
weight orthogonalisation and activation addition, evaluated in one run.

Steps (each resumes: a stage whose rows are stored is not recomputed):
1. capture harmful, toxic, neutral and stereotype prompts (resid_pre/resid_post, last/mean);
2. label them, fix seeded train/test splits and mark the prompts the evaluation uses as heldout;
3. per-layer probes with permutation nulls and shortcut baselines (analyses/probes.py); 4. directions per layer;
5. measure candidate directions (ablated) on the test split; select by the documented rule;
6. sweep: base, ablation, orthogonalised weights, activation addition +/- alpha, toxic-direction
   ablation and their random baselines (interp/studies/safety_baselines.py), evaluated for toxicity,
   refusal, perplexity, facts, arithmetic and KL, each point paired with the base item by item;
7. the baselines' prediction bands (safety_bands).

Honest selection: the best probe layer is chosen by cross-validation on the train split and reported
with its held-out (test split) score; the direction is chosen on the test split (a validation set for
this choice, disjoint from the train split the directions are fitted on), and every edit is then
evaluated on the evaluation's own prompts (the heldout split), which neither choice saw.
"""

from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from analyses import directions as dir_analysis
from analyses import probes as probe_analysis
from analyses.safety_data import dataset_frame, layer_vectors
from interp.capture.capture import capture
from interp.data.prompts import load_prompts
from interp.evals import is_heldout
from interp.interventions import Intervention
from interp.interventions.directions import DirectionalAblation
from interp.model.loading import Loaded
from interp.studies import safety_baselines, safety_select
from interp.studies.safety_config import BUDGETS, EVAL_TASKS, PROMPT_SETS, SafetyCfg, parse_layers
from interp.studies.safety_steer import stored_steering
from interp.studies.sweep import Phase, no_phase, run_sweep, start_study_run
from store import Store, StoreError
from store import safety as db

__all__ = ["BUDGETS", "EVAL_TASKS", "PROMPT_SETS", "SafetyCfg", "heldout_ids", "parse_layers", "run_safety",
           "sweep_points"]


def heldout_ids(cfg: SafetyCfg) -> set[str]:
    """Prompts the evaluation uses (refusal: harmful held-out fifth; toxicity and KL samples)."""
    from interp.evals.kl import neutral_prompts

    ev = cfg.eval_cfg()
    ids = {p.id for p in load_prompts(f"harmful={ev.harmful_path}" if ev.harmful_path else "harmful")
           if is_heldout(p.id)}  # a pair's negative side joins it in dataset_frame (a group is held out whole)
    ids |= {p.id for p in load_prompts("toxic", limit=ev.count("toxicity"), seed=ev.seed)}
    ids |= {i for i, _ in neutral_prompts(ev.count("kl"), ev.seed)[0]}
    return ids


def _dataset(store: Store, cache_run: int, cfg: SafetyCfg) -> pd.DataFrame:
    prompts = load_prompts(cfg.prompt_sets(), cfg.per_set, cfg.seed)
    with store.connect() as con:
        stored = set(db.stored_prompts(con, cache_run)["prompt_id"])
    frame = pd.DataFrame([{"prompt_id": p.id, "dataset": p.dataset, "source": p.source, "label": p.label,
                           "grp": p.group, "group_kept": p.group_kept} for p in prompts if p.id in stored])
    data = dataset_frame(frame, cfg.probe.test_frac, cfg.seed, heldout_ids(cfg))
    return data.assign(cache_run_id=cache_run)


def run_safety(loaded: Loaded, store: Store, cfg: SafetyCfg, progress: bool = True,
               on_phase: Phase = no_phase) -> int:
    """Run (or resume) the whole study; returns the safety run id."""
    steer = stored_steering(store, cfg.steer_from)[1] if cfg.steer_from else None  # refused before any work
    on_phase("capture")
    cache_run = capture(loaded, store, cfg.capture_cfg(), progress=progress)
    config = {**cfg.describe(), "cache_run_id": cache_run, **({"steer": steer} if steer else {})}
    run_id, status = start_study_run(loaded, store, "safety", config)
    if status == "complete":
        with store.connect() as con:
            missing = not db.has_rows(con, "safety_bands", run_id) and db.has_rows(con, "safety_points", run_id)
        if missing:  # interrupted between the sweep's last point and the bands
            store_bands(store, run_id)
        return run_id
    with store.connect() as con:
        have = {t: db.has_rows(con, t, run_id) for t in db.TABLES}
    if have["safety_prompts"]:
        with store.connect() as con:
            data = db.read_table(con, "safety_prompts", run_id)
    else:
        data = _dataset(store, cache_run, cfg)
        with store.connect() as con:
            db.replace_rows(con, run_id, {"safety_prompts": data})
            db.set_splits(con, cache_run, data)
    on_phase("analyse")
    assert cfg.probe.layers is not None and cfg.probe.hooks is not None  # the budget filled them (SafetyCfg)
    layers = parse_layers(cfg.probe.layers, loaded.n_layers)
    hooks, positions = list(cfg.probe.hooks), list(cfg.probe.positions)
    if not have["safety_probes"]:
        with store.connect(read_only=False) as con:
            lengths = db.prompt_lengths(con, cache_run)
            df = probe_analysis.run(con, store, cache_run, data, cfg.probe_cfg(), hooks, positions, layers, progress,
                                    lengths=lengths)
            db.replace_rows(con, run_id, {"safety_probes": df, "safety_best_layers": probe_analysis.best_layers(df)})
    if not have["safety_directions"]:
        with store.connect() as con:
            dirs, metrics = dir_analysis.run(con, store, cache_run, data, cfg.probe_cfg(), hooks, positions, layers,
                                             progress=progress)
            db.replace_rows(con, run_id, {"safety_directions": dirs, "safety_layers": metrics})
    on_phase("select")
    _select(loaded, store, run_id, data, cfg, progress)
    planned = plan_points(store, run_id, cfg)
    with store.connect() as con:
        db.replace_rows(con, run_id, {"safety_points": safety_baselines.points_frame(planned)})
    on_phase("sweep")
    run_sweep(loaded, store, study="safety", config=config, points=[spec for spec, _ in planned],
              eval_cfg=cfg.eval_cfg(), progress=progress, run_id=run_id)
    store_bands(store, run_id)
    return run_id


def store_bands(store: Store, run_id: int) -> None:
    """The random baselines' prediction bands, from the evaluated points (replaces the run's rows)."""
    with store.connect() as con:
        values = db.baseline_values(con, run_id)
        db.replace_rows(con, run_id, {"safety_bands": safety_baselines.bands(values)})


def _candidates(cfg: SafetyCfg, n_layers: int, probed: list[int],
                have: set[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Candidate (hook, layer, position) sites that have a stored harmful direction."""
    assert cfg.candidate_layers is not None and cfg.candidate_positions is not None  # the budget filled them
    layers = [l for l in parse_layers(cfg.candidate_layers, n_layers, cap=0.8, key="candidate_layers") if l in probed]
    cands = [(cfg.direction_hook, l, p) for l in layers for p in cfg.candidate_positions if
             (cfg.direction_hook, l, p) in have]
    if not cands:
        raise ValueError(f"no candidate layer with a harmful direction among the probed layers {probed}: "
                         "adjust candidate_layers")
    return cands


def _select(loaded: Loaded, store: Store, run_id: int, data: pd.DataFrame, cfg: SafetyCfg, progress: bool) -> None:
    assert cfg.probe.layers is not None and cfg.sel_gen_tokens is not None  # the budget filled them (SafetyCfg)
    probed = parse_layers(cfg.probe.layers, loaded.n_layers)
    with store.connect() as con:
        done = db.read_table(con, "safety_candidates", run_id)
        probes = db.read_table(con, "safety_probes", run_id)
        layer_metrics = db.read_table(con, "safety_layers", run_id)
        dirs = db.read_table(con, "safety_directions", run_id)
    dirs = dirs[(dirs.concept == "harmful") & (dirs.kind == "diff_means")]
    cands = _candidates(cfg, loaded.n_layers, probed, set(zip(dirs.hook, dirs.layer, dirs.position)))
    done_keys = set(zip(done["hook"], done["layer"], done["position"]))
    todo = [c for c in cands if c not in done_keys]
    if todo:
        texts = _texts(store, data)
        probe = safety_select.prepare(loaded, texts["harmful"], texts["neutral"], gen_tokens=cfg.sel_gen_tokens,
                                      judge=cfg.eval_cfg().refusal_judge)
        base = safety_select.measure(loaded, probe)
        sep = probes[(probes.problem == "harmful_vs_neutral") & (probes.setting == "cv") & (probes.metric == "roc_auc")]
        sep = sep.set_index(["hook", "layer", "position"])["mean"]
        pd_ = layer_metrics[(layer_metrics.concept == "harmful") & (layer_metrics.metric == "projection_d")]
        pd_ = pd_.set_index(["hook", "layer", "position"])["value"]
        for hook, layer, position in tqdm(todo, desc="select", unit="candidate", disable=not progress):
            with store.connect() as con:
                vec, _norm = db.load_direction(con, run_id, "harmful", hook, layer, position)
            spec = DirectionalAblation(tuple(map(float, vec)), name=f"harmful@{hook}{layer}/{position}")
            row = safety_select.measure_candidate(loaded, probe, base, spec)
            row.update(concept="harmful", hook=hook, layer=layer, position=position,
                       separability=float(sep[(hook, layer, position)]),
                       projection_d=float(pd_[(hook, layer, position)]))
            with store.connect() as con:
                db.add_candidate(con, run_id, row)
    with store.connect() as con:
        measured = db.read_table(con, "safety_candidates", run_id)
        measured = measured[[k in set(cands) for k in zip(measured.hook, measured.layer, measured.position)]]
        chosen = dir_analysis.select(measured, cfg.rule()).assign(rule=cfg.rule().describe())
        db.replace_rows(con, run_id, {"safety_selection": chosen})


def _texts(store: Store, data: pd.DataFrame) -> dict[str, list[str]]:
    """Test-split harmful and neutral prompt texts (the selection's held-out set)."""
    test = data[data["split"] == "test"]
    out = {}
    for cls in ("harmful", "neutral"):
        ids = sorted(test.loc[test["cls"] == cls, "prompt_id"])
        with store.connect() as con:
            texts = db.prompt_texts(con, ids)
        out[cls] = [texts[i] for i in ids]
    return out


def plan_points(store: Store, run_id: int, cfg: SafetyCfg) -> list[safety_baselines.Planned]:
    """(intervention, safety_points row) of every edit and random baseline, built from the chosen direction
    stored in the run and the train-split vectors at its site (for the variance-matched baselines)."""
    with store.connect() as con:
        pick = db.chosen(con, run_id)
        hook, layer, position = pick["hook"], int(pick["layer"]), pick["position"]
        vec, norm = db.load_direction(con, run_id, "harmful", hook, layer, position)
        try:
            toxic = db.load_direction(con, run_id, "toxic", hook, layer, position)[0]
        except StoreError:  # no toxic direction at this site (identical class means)
            toxic = None
        data = db.read_table(con, "safety_prompts", run_id)
        ids, X = layer_vectors(con, store, int(data["cache_run_id"].iloc[0]), hook, layer, position)
    assert cfg.alphas is not None and cfg.baselines is not None  # the budget filled them (SafetyCfg)
    train = set(data.loc[data["split"] == "train", "prompt_id"])
    site = X[[i for i, p in enumerate(ids) if p in train]]
    return safety_baselines.plan(vec, norm, layer, hook, site, name=f"harmful@{hook}{layer}/{position}",
                                 alphas=cfg.alphas, baselines=cfg.baselines, seed=cfg.seed,
                                 toxic=toxic if cfg.toxic_ablation else None,
                                 steer=stored_steering(store, cfg.steer_from)[0] if cfg.steer_from else None)


def sweep_points(store: Store, run_id: int, cfg: SafetyCfg) -> list[Intervention]:
    """The edits and random baselines evaluated, in sweep order."""
    return [spec for spec, _ in plan_points(store, run_id, cfg)]
