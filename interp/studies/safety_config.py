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

from dataclasses import asdict, dataclass
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
from interp.evals.config import CORPORA, corpus_args
from interp.validate import Choice, InvalidValue, Optional, Whole, key_name, refuse

PROMPT_SETS = "harmful,toxic,neutral,stereotypes"
RESID_HOOKS = ("resid_pre", "resid_post")
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

    CONFIG_SPECS: ClassVar[dict] = {"per_set": Optional(Whole(min=1)), "corpus": Optional(Choice(CORPORA))}
    """Ranges checked on flags and config-file keys alike (interp.studies.config_file.fields_of)."""

    budget: str = "quick"
    """smoke (CLI tests), quick (under 15 minutes on 2 CPU cores) or full."""
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
    permutations: int | None = None
    """Label permutations per probed cell (problem, hook, layer, position) for the permutation null."""
    ridge: float = 1.0
    """Penalty of the ridge probe, in units of the mean squared norm of a standardised training vector."""
    C: float = 0.1
    """Inverse L2 strength of the logistic probe (the second, labelled probe: cv_logistic)."""
    test_frac: float = 0.3
    """Share of each (dataset, source) stratum in the test split: held-out probe scores and the
    validation prompts the direction is chosen on (never the evaluation's prompts)."""
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
    baselines: int | None = None
    """Random edits per kind in the same sweep: random unit directions ablated, variance-matched random
    directions ablated, and random directions added at each |alpha| (0: none; else at least 2)."""
    seed: int = 0
    lm_eval: tuple[str, ...] = ()
    """lm-evaluation-harness tasks scored at every point too ('lm-eval:arc_easy', ...)."""
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
    corpus: str | None = None
    """Perplexity corpus of the evaluation: book, wikitext2, c4 (corpus_path offline) or text (your own file in
    corpus_path); None: book."""
    steer_from: str | None = None
    """RUN:POINT of a stored activation-addition point in the same store (e.g. '3:actadd[harmful@resid_pre8/last
    +1]'): the addition edits use its vector, scale, layers, hook and positions at each of ``alphas`` instead of
    the chosen direction; the run's config records the source run, point and the vector's digest."""
    corpus_path: str | None = None
    """Local WikiText-2 / C4 file or folder for ``corpus``, or your own .txt / JSONL text file."""

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise refuse("budget", "one of smoke, quick, full", self.budget, BUDGETS)
        for k, v in BUDGETS[self.budget].items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)
        assert self.probe_hooks is not None and self.candidate_positions is not None  # every budget fills them
        assert self.baselines is not None and self.alphas is not None
        if self.per_set is not None and self.per_set < 8:
            raise refuse("per_set", "a whole number of at least 8 prompts (probes need both splits)", self.per_set)
        for key, hooks in (("probe_hooks", self.probe_hooks), ("direction_hook", (self.direction_hook,))):
            bad = [h for h in hooks if h not in RESID_HOOKS]
            if bad:
                raise refuse(key, "resid_pre or resid_post (safety probes read the residual stream)", bad[0], RESID_HOOKS)
        if self.direction_hook not in self.probe_hooks:
            raise InvalidValue(f"{key_name('direction_hook')} '{self.direction_hook}' must be one of the probed hooks "
                               f"{key_name('probe_hooks')} {list(self.probe_hooks)}")
        for key, positions in (("positions", self.positions), ("candidate_positions", self.candidate_positions)):
            bad = [p for p in positions if p not in ("last", "mean")]
            if bad:
                raise refuse(key, "last and/or mean", bad[0], ("last", "mean"))
        if not set(self.candidate_positions) <= set(self.positions):
            raise InvalidValue(f"{key_name('candidate_positions')} must be among the probed {key_name('positions')} "
                               f"{list(self.positions)}")
        if not 0 < self.test_frac < 1:
            raise refuse("test_frac", "a number between 0 and 1 (exclusive)", self.test_frac)
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
        for key in ("probe_layers", "candidate_layers"):  # the form now; the range once the model is known
            check_layers(getattr(self, key), key)
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        check_prompt_specs(self.prompt_sets())  # every row of the user's files, before a model loads
        self.probe_cfg()
        self.rule()
        self.eval_cfg()

    def probe_cfg(self) -> probe_analysis.ProbeCfg:
        assert self.folds is not None and self.permutations is not None  # the budget filled them (__post_init__)
        return probe_analysis.ProbeCfg(folds=self.folds, ridge=self.ridge, permutations=self.permutations, C=self.C,
                                       seed=self.seed)

    def rule(self) -> dir_analysis.SelectRule:
        return dir_analysis.SelectRule(kl_max=self.kl_max, min_auc=self.min_auc)

    def eval_cfg(self) -> EvalCfg:
        budget = self.eval_budget
        assert budget is not None  # the budget filled it (__post_init__); counts go as their pairs, as a dict would
        return EvalCfg(tasks=(*EVAL_TASKS, *self.lm_eval), seed=self.seed,
                       budget=tuple(budget.items()) if isinstance(budget, dict) else budget,
                       harmful_path=self.harmful_files()["harmful"], **corpus_args(self.corpus, self.corpus_path))

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
        assert self.probe_hooks is not None  # the budget filled it (__post_init__)
        hooks = ",".join(dict.fromkeys(("resid_pre", "resid_post", *self.probe_hooks)))
        return CaptureCfg(prompts=self.prompt_sets(), hooks=hooks, positions=",".join(self.positions), backend="torch",
                          limit=self.per_set, seed=self.seed, batch_size=self.batch_size)

    def describe(self) -> dict:
        # batch_size never changes results; without lm-eval tasks a run keeps the identity it had before them
        # the user's files only when given (older runs keep their identity), by content
        d = {k: v for k, v in asdict(self).items() if k != "batch_size" and (k not in ("lm_eval", "harmful", "harmless", "pairs", "corpus", "corpus_path",
                                                                             "steer_from")
                                                                           or v)}
        for name in ("harmful", "harmless"):
            if d.get(name):
                d[f"{name}_sha256"] = prompts_digest(load_file(d[name]))
        if d.get("pairs"):  # both sides, as the studies read them
            d["pairs_sha256"] = prompts_digest([p for side in PAIR_SIDES for p in load_pair_side(d["pairs"], side)])
        d["eval"] = self.eval_cfg().describe()
        d["rule"] = self.rule().describe()
        return d


def check_layers(spec: str, key: str = "probe_layers") -> None:
    """The form of a layer setting ('all', 'stride:k', '3,7,11'), before the model's layer count is known."""
    k = spec[len("stride:"):].strip() if spec.startswith("stride:") else None
    parts = [x.strip() for x in spec.split(",") if x.strip()]
    ok = spec == "all" or (k.isdigit() and int(k) >= 1 if k is not None else bool(parts) and all(x.isdigit() for x in parts))
    if not ok:
        raise refuse(key, "all, stride:K (K at least 1) or layers like 3,7,11", spec)


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
