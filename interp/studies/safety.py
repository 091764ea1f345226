"""Safety study (STUDIES.md section 5): probes, harmful directions, directional ablation,
weight orthogonalisation and activation addition, evaluated in one run.

Steps (each resumes: a stage whose rows are stored is not recomputed):
1. capture harmful, toxic, neutral and stereotype prompts (resid_pre/resid_post, last/mean);
2. label them, fix seeded train/test splits and mark the prompts the evaluation uses as heldout;
3. per-layer probes with controls; 4. directions per layer;
5. measure candidate directions (ablated) on the test split; select by the documented rule;
6. sweep: base, ablation, orthogonalised weights, activation addition +/- alpha, toxic-direction
   ablation, evaluated for toxicity, refusal, perplexity, facts, arithmetic and KL.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
from tqdm.auto import tqdm

from analyses import directions as dir_analysis
from analyses import probes as probe_analysis
from analyses.safety_data import dataset_frame
from interp.capture.capture import CaptureCfg, capture
from interp.evals import EvalCfg, is_heldout
from interp.interventions.directions import ActivationAddition, DirectionalAblation, OrthogonalizedWeights
from interp.model.loading import Loaded
from interp.data.prompts import load_prompts
from interp.studies import safety_select
from interp.studies.sweep import run_sweep, start_study_run
from store import Store, StoreError
from store import safety as db

PROMPT_SETS = "harmful,toxic,neutral,stereotypes"
EVAL_TASKS = ("toxicity", "refusal", "ppl", "facts", "arith", "kl")
BUDGETS: dict[str, dict] = {
    # CLI tests: seconds of work, numbers meaningless.
    "smoke": dict(per_set=16, probe_hooks=("resid_pre",), probe_layers="0,8,16", folds=3, shuffles=1,
                  candidate_layers="8,16", candidate_positions=("last",), alphas=(1.0,), sel_gen_tokens=12,
                  eval_budget="smoke", toxic_ablation=False),
    # Under 10 minutes on 2 CPU cores.
    "quick": dict(per_set=64, probe_hooks=("resid_pre",), probe_layers="all", folds=5, shuffles=2,
                  candidate_layers="stride:4", candidate_positions=("last",), alphas=(-1.0, 1.0),
                  sel_gen_tokens=16, toxic_ablation=True,
                  eval_budget={"ppl": 1024, "facts": 40, "arith": 30, "toxicity": 16, "refusal": 16, "kl": 16}),
    # Reportable numbers.
    "full": dict(per_set=400, probe_hooks=("resid_pre", "resid_post"), probe_layers="all", folds=5, shuffles=3,
                 candidate_layers="stride:2", candidate_positions=("last", "mean"),
                 alphas=(-4.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0), sel_gen_tokens=48, eval_budget="full",
                 toxic_ablation=True),
}
"""Named budgets; any field can be overridden in SafetyCfg."""


@dataclass(frozen=True)
class SafetyCfg:
    """The safety study's settings. ``budget`` fills every field left as None."""

    budget: str = "quick"
    """smoke (CLI tests), quick (under 10 minutes on 2 CPU cores) or full."""
    per_set: int | None = None
    """Prompts captured per prompt set (harmful, toxic, neutral, stereotypes)."""
    probe_hooks: tuple[str, ...] | None = None
    """Residual-stream hooks probed and turned into directions (resid_pre, resid_post)."""
    probe_layers: str | None = None
    """'all', 'stride:k' or comma-separated layers to probe."""
    positions: tuple[str, ...] = ("last", "mean")
    """Token reductions probed: last token (the generation point) and mean over tokens."""
    folds: int | None = None
    """Cross-validation folds."""
    shuffles: int | None = None
    """Shuffled-label control repeats per layer."""
    C: float = 0.1
    """Inverse L2 strength of the probes."""
    test_frac: float = 0.3
    """Share of each (dataset, source) stratum in the test split (selection and held-out scores)."""
    candidate_layers: str | None = None
    """Layers whose harmful direction is a candidate: 'stride:k' (within the first 80% of layers,
    as in refusal-direction work), or comma-separated layers."""
    candidate_positions: tuple[str, ...] | None = None
    """Positions whose direction is a candidate."""
    direction_hook: str = "resid_pre"
    """Hook the candidate directions come from (and where activation addition acts)."""
    alphas: tuple[float, ...] | None = None
    """Activation-addition coefficients, in units of the class-mean difference at that layer."""
    kl_max: float = 0.1
    """Selection: most KL (nats) on neutral prompts an admissible direction may cost."""
    min_auc: float = 0.9
    """Selection: least probe ROC-AUC of an admissible direction."""
    sel_gen_tokens: int | None = None
    """Greedy tokens per reply when measuring refusal for selection."""
    eval_budget: str | dict | None = None
    """Evaluation budget (interp.evals): smoke, quick, full or per-task counts."""
    toxic_ablation: bool | None = None
    """Also evaluate ablating the toxic-minus-neutral direction at the chosen site."""
    seed: int = 0
    lm_eval: tuple[str, ...] = ()
    """lm-evaluation-harness tasks scored at every point too ('lm-eval:arc_easy', ...)."""
    batch_size: int = 8
    """Prompts per forward pass when capturing (never changes results)."""

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown safety budget '{self.budget}': use smoke, quick or full")
        for k, v in BUDGETS[self.budget].items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        if self.per_set is not None and self.per_set < 8:
            raise ValueError(f"per-set limit must be at least 8 prompts (got {self.per_set}): probes need both splits")
        for hook in (*self.probe_hooks, self.direction_hook):
            if hook not in ("resid_pre", "resid_post"):
                raise ValueError(f"safety probes read the residual stream: hook '{hook}' must be resid_pre or resid_post")
        if self.direction_hook not in self.probe_hooks:
            raise ValueError(f"direction hook '{self.direction_hook}' must be one of the probed hooks {self.probe_hooks}")
        if any(p not in ("last", "mean") for p in (*self.positions, *self.candidate_positions)):
            raise ValueError("positions must be last and/or mean")
        if not set(self.candidate_positions) <= set(self.positions):
            raise ValueError("candidate positions must be among the probed positions")
        if not 0 < self.test_frac < 1:
            raise ValueError(f"test fraction must be between 0 and 1, not {self.test_frac}")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        self.probe_cfg()
        self.rule()
        self.eval_cfg()

    def probe_cfg(self) -> probe_analysis.ProbeCfg:
        return probe_analysis.ProbeCfg(folds=self.folds, C=self.C, shuffles=self.shuffles, seed=self.seed)

    def rule(self) -> dir_analysis.SelectRule:
        return dir_analysis.SelectRule(kl_max=self.kl_max, min_auc=self.min_auc)

    def eval_cfg(self) -> EvalCfg:
        return EvalCfg(tasks=(*EVAL_TASKS, *self.lm_eval), budget=self.eval_budget, seed=self.seed)

    def capture_cfg(self) -> CaptureCfg:
        hooks = ",".join(dict.fromkeys(("resid_pre", "resid_post", *self.probe_hooks)))
        return CaptureCfg(prompts=PROMPT_SETS, hooks=hooks, positions=",".join(self.positions), backend="torch",
                          limit=self.per_set, seed=self.seed, batch_size=self.batch_size)

    def describe(self) -> dict:
        # batch_size never changes results; without lm-eval tasks a run keeps the identity it had before them
        d = {k: v for k, v in asdict(self).items() if k != "batch_size" and (k != "lm_eval" or v)}
        d["eval"] = self.eval_cfg().describe()
        d["rule"] = self.rule().describe()
        return d


def parse_layers(spec: str, n_layers: int, cap: float = 1.0) -> list[int]:
    """'all', 'stride:k' (layers 0, k, 2k, ... below cap * n_layers) or '3,7,11'."""
    top = max(1, int(n_layers * cap))
    if spec == "all":
        return list(range(top))
    if spec.startswith("stride:"):
        k = int(spec.split(":", 1)[1])
        if k < 1:
            raise ValueError(f"layer stride must be at least 1 in '{spec}'")
        return list(range(min(k, top - 1) if cap < 1 else 0, top, k))
    layers = sorted({int(x) for x in spec.split(",") if x.strip()})
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad or not layers:
        raise ValueError(f"layer {bad[0] if bad else spec!r} out of range: this model has layers 0..{n_layers - 1}")
    return layers


def heldout_ids(cfg: SafetyCfg) -> set[str]:
    """Prompts the evaluation uses (refusal: harmful held-out fifth; toxicity and KL samples)."""
    from interp.evals.kl import neutral_prompts

    ev = cfg.eval_cfg()
    ids = {p.id for p in load_prompts("harmful") if is_heldout(p.id)}
    ids |= {p.id for p in load_prompts("toxic", limit=ev.count("toxicity"), seed=ev.seed)}
    ids |= {i for i, _ in neutral_prompts(ev.count("kl"), ev.seed)[0]}
    return ids


def _dataset(store: Store, cache_run: int, cfg: SafetyCfg) -> pd.DataFrame:
    prompts = load_prompts(PROMPT_SETS, cfg.per_set, cfg.seed)
    with store.connect() as con:
        stored = set(db.stored_prompts(con, cache_run)["prompt_id"])
    frame = pd.DataFrame([{"prompt_id": p.id, "dataset": p.dataset, "source": p.source, "label": p.label,
                           "grp": p.group, "group_kept": p.group_kept} for p in prompts if p.id in stored])
    data = dataset_frame(frame, cfg.test_frac, cfg.seed, heldout_ids(cfg))
    return data.assign(cache_run_id=cache_run)


def run_safety(loaded: Loaded, store: Store, cfg: SafetyCfg, progress: bool = True) -> int:
    """Run (or resume) the whole study; returns the safety run id."""
    cache_run = capture(loaded, store, cfg.capture_cfg(), progress=progress)
    config = {**cfg.describe(), "cache_run_id": cache_run}
    run_id, status = start_study_run(loaded, store, "safety", config)
    if status == "complete":
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
    layers = parse_layers(cfg.probe_layers, loaded.n_layers)
    hooks, positions = list(cfg.probe_hooks), list(cfg.positions)
    if not have["safety_probes"]:
        with store.connect(read_only=False) as con:
            df = probe_analysis.run(con, store, cache_run, data, cfg.probe_cfg(), hooks, positions, layers, progress)
            db.replace_rows(con, run_id, {"safety_probes": df, "safety_best_layers": probe_analysis.best_layers(df)})
    if not have["safety_directions"]:
        with store.connect() as con:
            dirs, metrics = dir_analysis.run(con, store, cache_run, data, cfg.probe_cfg(), hooks, positions, layers,
                                             progress=progress)
            db.replace_rows(con, run_id, {"safety_directions": dirs, "safety_layers": metrics})
    _select(loaded, store, run_id, data, cfg, progress)
    points = sweep_points(store, run_id, cfg)
    return run_sweep(loaded, store, study="safety", config=config, points=points, eval_cfg=cfg.eval_cfg(),
                     progress=progress, run_id=run_id)


def _candidates(cfg: SafetyCfg, n_layers: int, probed: list[int], have: set[tuple]) -> list[tuple[str, int, str]]:
    """Candidate (hook, layer, position) sites that have a stored harmful direction."""
    layers = [l for l in parse_layers(cfg.candidate_layers, n_layers, cap=0.8) if l in probed]
    cands = [(cfg.direction_hook, l, p) for l in layers for p in cfg.candidate_positions if
             (cfg.direction_hook, l, p) in have]
    if not cands:
        raise ValueError(f"no candidate layer with a harmful direction among the probed layers {probed}: "
                         "adjust candidate_layers")
    return cands


def _select(loaded: Loaded, store: Store, run_id: int, data: pd.DataFrame, cfg: SafetyCfg, progress: bool) -> None:
    probed = parse_layers(cfg.probe_layers, loaded.n_layers)
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
            spec = DirectionalAblation(vec, name=f"harmful@{hook}{layer}/{position}")
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


def sweep_points(store: Store, run_id: int, cfg: SafetyCfg) -> list:
    """The edits evaluated: built from the chosen direction stored in the run."""
    with store.connect() as con:
        pick = db.chosen(con, run_id)
        hook, layer, position = pick["hook"], int(pick["layer"]), pick["position"]
        vec, norm = db.load_direction(con, run_id, "harmful", hook, layer, position)
        try:
            toxic = db.load_direction(con, run_id, "toxic", hook, layer, position)[0]
        except StoreError:  # no toxic direction at this site (identical class means)
            toxic = None
    name = f"harmful@{hook}{layer}/{position}"
    points = [DirectionalAblation(vec, name=name), OrthogonalizedWeights(vec, name=name)]
    points += [ActivationAddition(vec, layer=layer, alpha=a, scale=norm, hook=hook, name=name) for a in cfg.alphas]
    if toxic is not None and cfg.toxic_ablation:
        points.append(DirectionalAblation(toxic, name=f"toxic@{hook}{layer}/{position}"))
    return points
