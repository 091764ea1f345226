"""Configuration of the safety study: ``SafetyCfg`` and its smoke / quick / full presets.

What the quick budget buys on SmolLM2-135M (30 layers; costs in BENCHMARKS.md section 7): 64 prompts
per set, probes at every layer (resid_pre, last token and mean) with 500 label permutations per cell,
6 candidate directions, and a sweep of 21 points: base, the 5 edits (ablation, orthogonalised weights,
activation addition at -1 and +1, toxic-direction ablation) and 15 random baselines (5 random unit
directions and 5 variance-matched ones ablated, 5 random directions added at |alpha| = 1), each
evaluated on 48 toxicity and 48 refusal generations (with 16, a paired test detects a refusal-rate change
only above about 0.45 with power 0.8; with 48, above about 0.16), 2048 perplexity tokens (8 windows),
40 facts, 30 arithmetic items and 32 KL prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from analyses import directions as dir_analysis
from analyses import probes as probe_analysis
from interp.capture.capture import CaptureCfg
from interp.data.prompts import (
    PAIR_SIDES,
    check_prompt_specs,
    load_file,
    load_pair_side,
    prompts_digest,
)
from interp.evals import EvalCfg
from interp.studies.part_names import check_layers, check_parts, fill_parts, flat_values, where
from interp.studies.parts import RESID_HOOKS, EvalPart, ProbePart
from interp.validate import InvalidValue, Optional, Whole, key_name, refuse

PROMPT_SETS = "harmful,toxic,neutral,stereotypes"
EVAL_TASKS = ("toxicity", "refusal", "ppl", "facts", "arith", "kl")
BUDGETS: dict[str, dict] = {
    # CLI tests: seconds of work, numbers meaningless.
    "smoke": dict(per_set=16, probe_hooks=("resid_pre",), probe_layers="0,8,16", folds=3, permutations=50,
                  candidate_layers="8,16", candidate_positions=("last",), alphas=(1.0,), sel_gen_tokens=12,
                  eval_budget="smoke", toxic_ablation=False, baselines=2),
    # Under 15 minutes on 2 CPU cores (BENCHMARKS.md section 7).
    "quick": dict(per_set=64, probe_hooks=("resid_pre",), probe_layers="all", folds=5, permutations=500,
                  candidate_layers="stride:4", candidate_positions=("last",), alphas=(-1.0, 1.0),
                  sel_gen_tokens=16, toxic_ablation=True, baselines=5,
                  eval_budget={"ppl": 2048, "facts": 40, "arith": 30, "toxicity": 48, "refusal": 48, "kl": 32}),
    # Reportable numbers.
    "full": dict(per_set=400, probe_hooks=("resid_pre", "resid_post"), probe_layers="all", folds=5,
                 permutations=1000, candidate_layers="stride:2", candidate_positions=("last", "mean"),
                 alphas=(-4.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0), sel_gen_tokens=48, eval_budget="full",
                 toxic_ablation=True, baselines=10),
}
"""Named budgets; any field can be overridden in SafetyCfg."""


@dataclass(frozen=True)
class SafetyCfg:
    """The safety study's settings. ``budget`` fills every field left as None."""

    STUDY: ClassVar[str] = "safety"
    FLAT: ClassVar[dict[str, tuple[str, str]]] = {
        "probe_hooks": ("probe", "hooks"), "probe_layers": ("probe", "layers"), "positions": ("probe", "positions"),
        "folds": ("probe", "folds"), "permutations": ("probe", "permutations"), "ridge": ("probe", "ridge"),
        "C": ("probe", "C"), "test_frac": ("probe", "test_frac"), "eval_budget": ("eval", "budget"),
        "lm_eval": ("eval", "lm_eval"), "corpus": ("eval", "corpus"), "corpus_path": ("eval", "corpus_path")}
    """Flag (and flat file key, and run-identity key) -> (part, field): interp.studies.parts."""
    FLAG_NAMES: ClassVar[dict[str, str]] = {"C": "probe_c"}
    """Settings whose flag has another name (invoke safety --probe-c)."""
    CONFIG_SPECS: ClassVar[dict] = {"per_set": Optional(Whole(min=1))}
    """Ranges checked on flags and config-file keys alike (interp.studies.config_file.fields_of)."""

    budget: str = "quick"
    """smoke (CLI tests), quick (under 15 minutes on 2 CPU cores) or full."""
    per_set: int | None = None
    """Prompts captured per prompt set (harmful, toxic, neutral, stereotypes)."""
    probe: ProbePart = field(default_factory=ProbePart)
    """The probes: hooks, layers, positions, folds, permutations, ridge, C, test split (None: the budget's)."""
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
    toxic_ablation: bool | None = None
    """Also evaluate ablating the toxic-minus-neutral direction at the chosen site."""
    baselines: int | None = None
    """Random edits per kind in the same sweep: random unit directions ablated, variance-matched random
    directions ablated, and random directions added at each |alpha| (0: none; else at least 2)."""
    seed: int = 0
    """Seed of splits, folds, label permutations, random baselines and evaluation subsets."""
    eval: EvalPart = field(default_factory=EvalPart)
    """Evaluation (tasks: always toxicity, refusal, ppl, facts, arith, kl): budget (None: the budget's), lm-eval
    tasks on top, the perplexity corpus (None: book)."""
    batch_size: int = 8
    """Prompts per forward pass when capturing (never changes results)."""
    harmful: str | None = None
    """Your harmful prompts (JSONL/CSV, a 'text' or 'prompt' column) in place of the built-in harmful set:
    probes, directions, edits and the refusal evaluation (its held-out fifth) use them."""
    harmless: str | None = None
    """Your harmless prompts (JSONL/CSV) in place of the built-in neutral set (probes and directions)."""
    pairs: str | None = None
    """Your contrastive pairs (JSONL with 'positive' and 'negative' fields, or CSV with two columns; as in
    contrastive activation addition) in place of both the harmful (positive side) and the neutral (negative side)
    sets, with matched rows: a pair is sampled, split and cross-validated as one unit, so the harmful direction
    (class-mean difference on the train split) is the mean of the pairs' differences."""
    steer_from: str | None = None
    """RUN:POINT of a stored activation-addition point in the same store (e.g. '3:actadd[harmful@resid_pre8/last
    +1]'): the addition edits use its vector, scale, layers, hook and positions at each of ``alphas`` instead of
    the chosen direction; the run's config records the source run, point and the vector's digest."""

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise refuse("budget", "one of smoke, quick, full", self.budget, BUDGETS)
        check_parts(self)
        fill_parts(self, BUDGETS[self.budget])
        assert self.probe.hooks is not None and self.candidate_positions is not None  # every budget fills them
        assert self.baselines is not None and self.alphas is not None and self.candidate_layers is not None
        if self.per_set is not None and self.per_set < 8:
            raise refuse("per_set", "a whole number of at least 8 prompts (probes need both splits)", self.per_set)
        if self.eval.tasks is not None:
            raise InvalidValue(f"{where(self, 'eval').key('tasks')}: the safety study always evaluates "
                               f"{', '.join(EVAL_TASKS)}; add lm-eval tasks with lm_eval (--lm-eval)")
        probe = where(self, "probe")
        self.probe.check(probe)
        if self.direction_hook not in RESID_HOOKS:
            raise refuse("direction_hook", "resid_pre or resid_post (safety probes read the residual stream)",
                         self.direction_hook, RESID_HOOKS)
        if self.direction_hook not in self.probe.hooks:
            raise InvalidValue(f"{key_name('direction_hook')} '{self.direction_hook}' must be one of the probed hooks "
                               f"{probe.key('hooks')} {list(self.probe.hooks)}")
        bad = [p for p in self.candidate_positions if p not in ("last", "mean")]
        if bad:
            raise refuse("candidate_positions", "last and/or mean", bad[0], ("last", "mean"))
        if not set(self.candidate_positions) <= set(self.probe.positions):
            raise InvalidValue(f"{key_name('candidate_positions')} must be among the probed {probe.key('positions')} "
                               f"{list(self.probe.positions)}")
        if self.baselines == 1 or self.baselines < 0:
            raise refuse("baselines", "0 or a whole number of at least 2 (a band needs two)", self.baselines)
        if self.steer_from is not None:
            run, sep, point = self.steer_from.partition(":")
            if not (sep and run.strip().isdigit() and int(run) >= 1 and point.strip()):
                raise refuse("steer_from", "RUN:POINT, a run id and an activation-addition point of it (e.g. "
                             "3:actadd[harmful@resid_pre8/last +1])", self.steer_from)
        if self.pairs and (self.harmful or self.harmless):
            raise InvalidValue(f"{key_name('pairs')} gives both the harmful and the harmless prompts: leave out "
                               f"{key_name('harmful')} and {key_name('harmless')}, or give those files instead")
        check_layers(self.candidate_layers, "candidate_layers")  # the form now; the range once the model is known
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        check_prompt_specs(self.prompt_sets())  # every row of the user's files, before a model loads
        self.probe_cfg()
        self.rule()
        self.eval.check(where(self, "eval"))
        self.eval_cfg()

    def probe_cfg(self) -> probe_analysis.ProbeCfg:
        return self.probe.build(self.seed)

    def rule(self) -> dir_analysis.SelectRule:
        return dir_analysis.SelectRule(kl_max=self.kl_max, min_auc=self.min_auc)

    def eval_cfg(self) -> EvalCfg:
        assert self.eval.budget is not None  # the budget filled it (__post_init__)
        return self.eval.build(EVAL_TASKS, self.eval.budget, self.seed, harmful_path=self.harmful_files()["harmful"])

    def harmful_files(self) -> dict[str, str | None]:
        """The prompt file (or side of the pairs file) standing in for the built-in harmful and neutral sets."""
        if self.pairs:
            return {"harmful": f"{self.pairs}[positive]", "neutral": f"{self.pairs}[negative]"}
        return {"harmful": self.harmful, "neutral": self.harmless}

    def prompt_sets(self) -> str:
        """The capture's prompt sets: the built-in ones, with the user's files standing in where given."""
        files = self.harmful_files()
        return ",".join(f"{s}={files[s]}" if files.get(s) else s for s in PROMPT_SETS.split(","))

    def capture_cfg(self) -> CaptureCfg:
        assert self.probe.hooks is not None  # the budget filled it (__post_init__)
        hooks = ",".join(dict.fromkeys(("resid_pre", "resid_post", *self.probe.hooks)))
        return CaptureCfg(prompts=self.prompt_sets(), hooks=hooks, positions=",".join(self.probe.positions),
                          backend="torch",
                          limit=self.per_set, seed=self.seed, batch_size=self.batch_size)

    def describe(self) -> dict:
        """The study's part of the run identity, in the flat names it had before the parts existed."""
        # batch_size never changes results; without lm-eval tasks a run keeps the identity it had before them
        # the user's files only when given (older runs keep their identity), by content
        d = {k: v for k, v in flat_values(self).items() if k != "batch_size" and (
            k not in ("lm_eval", "harmful", "harmless", "pairs", "corpus", "corpus_path", "steer_from") or v)}
        for name in ("harmful", "harmless"):
            if d.get(name):
                d[f"{name}_sha256"] = prompts_digest(load_file(d[name]))
        if d.get("pairs"):  # both sides, as the studies read them
            d["pairs_sha256"] = prompts_digest([p for side in PAIR_SIDES for p in load_pair_side(d["pairs"], side)])
        d["eval"] = self.eval_cfg().describe()
        d["rule"] = self.rule().describe()
        return d


def parse_layers(spec: str, n_layers: int, cap: float = 1.0, key: str = "probe_layers") -> list[int]:
    """'all', 'stride:k' (layers 0, k, 2k, ... below cap * n_layers) or '3,7,11'; ``key`` names the setting in
    errors."""
    check_layers(spec, key)
    top = max(1, int(n_layers * cap))
    if spec == "all":
        return list(range(top))
    if spec.startswith("stride:"):
        k = int(spec.split(":", 1)[1])
        return list(range(min(k, top - 1) if cap < 1 else 0, top, k))
    layers = sorted({int(x) for x in spec.split(",") if x.strip()})
    bad = [l for l in layers if l >= n_layers]
    if bad:
        raise InvalidValue(f"{key_name(key)}: layer {bad[0]} out of range: this model has layers 0..{n_layers - 1}")
    return layers
