"""The head study's settings: ``HeadsCfg`` with named budgets (smoke, quick, full)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from interp.evals import EvalCfg
from interp.studies.part_names import check_parts, fill_parts, flat_values, where
from interp.studies.parts import EvalPart, RouterPart
from interp.validate import InvalidValue, Optional, Whole, key_name, refuse

METHODS = ("gradient", "zero", "mean", "mean_zero", "random")
"""Pruning orders: by gradient importance, by zero- or mean-ablation text loss (mean: heads
replaced by their mean, as scored), mean_zero (mean-ablation order, heads zeroed: a control),
random."""

BUDGETS: dict[str, dict] = {
    # CLI tests: seconds of work, numbers meaningless (ablation of the two deepest layers only).
    "smoke": {"text_seqs": 2, "grad_seqs": 2, "seq_len": 16, "task_items": 2, "ablation_layers": 2,
              "gradient_seq": False, "methods": ("gradient", "random"), "random_seeds": 1, "prune_fracs": (),
              "router_keep": (0.5,), "router_steps": 2, "router_batch": 1, "train_seqs": 2, "heldout_seqs": 1,
              "eval_tasks": ("ppl", "facts"), "eval_budget": "smoke"},
    # Under 10 minutes on 2 unloaded CPU cores. Importance (1 thread, loaded machine): ablation of
    # 4 x 48 tokens 179 s + 12 task items 82 s; gradient per token of 32 x 48 tokens 13.5 s, head
    # means 5 s. Split-half rank agreement of the layer-normalised gradient scores: 0.93 at 4
    # sequences, 0.98 at 16, 0.99 at 32 (per sequence instead of per token: 0.47 at 4).
    "quick": {"text_seqs": 4, "grad_seqs": 32, "seq_len": 48, "task_items": 12, "ablation_layers": 0,
              "gradient_seq": False, "methods": ("gradient", "zero", "mean", "random"),
              "random_seeds": 1, "prune_fracs": (), "router_keep": (0.5, 0.75), "router_steps": 20,
              "router_batch": 4, "train_seqs": 80, "heldout_seqs": 8, "eval_tasks": ("ppl", "facts"),
              "eval_budget": {"ppl": 1024, "facts": 30}},
    # Reportable numbers (hours on a CPU).
    "full": {"text_seqs": 16, "grad_seqs": 64, "seq_len": 128, "task_items": None, "ablation_layers": 0,
             "gradient_seq": True, "methods": METHODS, "random_seeds": 3, "prune_fracs": (0.1, 0.25, 0.5, 0.75),
             "router_keep": (0.5, 0.75), "router_steps": 200, "router_batch": 4, "train_seqs": 320, "heldout_seqs": 32,
             "eval_tasks": ("ppl", "facts", "arith"), "eval_budget": "full"},
}
"""Named budgets; any field can be overridden in HeadsCfg."""


@dataclass(frozen=True)
class HeadsCfg:
    """The head study's settings. ``budget`` fills every field left as None."""

    STUDY: ClassVar[str] = "heads"
    FLAT: ClassVar[dict[str, tuple[str, str]]] = {
        "eval_tasks": ("eval", "tasks"), "eval_budget": ("eval", "budget"), "lm_eval": ("eval", "lm_eval"),
        "corpus": ("eval", "corpus"), "corpus_path": ("eval", "corpus_path"),
        "router_keep": ("router", "keep"), "router_steps": ("router", "steps"), "router_batch": ("router", "batch"),
        "router_lr": ("router", "lr"), "lb_coef": ("router", "lb_coef"), "train_seqs": ("router", "train_seqs"),
        "heldout_seqs": ("router", "heldout_seqs")}
    """Flag (and flat file key, and run-identity key) -> (part, field): interp.studies.parts."""
    CONFIG_SPECS: ClassVar[dict] = {n: Optional(Whole(min=1)) for n in ("text_seqs", "grad_seqs")}
    """Ranges checked on flags and config-file keys alike (interp.studies.config_file.fields_of)."""

    budget: str = "quick"
    """smoke (CLI tests), quick (under 10 minutes on 2 CPU cores) or full."""
    text_seqs: int | None = None
    """Text sequences (book corpus, held out from the evaluation windows) for ablation importance."""
    grad_seqs: int | None = None
    """Text sequences for gradient importance and the head means: the text_seqs ablation
    sequences plus more (a gradient costs about three forward passes, an ablation sweep
    hundreds). From the budget: raised to text_seqs when below it."""
    seq_len: int | None = None
    """Tokens per text sequence (importance, router training and held-out statistics)."""
    task_items: int | None = None
    """Capital-city items for the task metric of ablation (None: all); scored as a cloze."""
    ablation_layers: int | None = None
    """Ablate the heads of the deepest n layers only; 0: every layer. Pruning by zero or mean
    ablation needs every layer."""
    gradient_seq: bool | None = None
    """Besides the per-token gradient importance (method 'gradient', what pruning uses), also
    compute the per-sequence variant (one gate per sequence; method 'gradient_seq')."""
    methods: tuple[str, ...] | None = None
    """Pruning orders swept: some of METHODS."""
    random_seeds: int | None = None
    """Random pruning orders (seeds 0..n-1) as baselines."""
    prune_fracs: tuple[float, ...] | None = None
    """Shares of all heads pruned, besides the budgets matched to each router."""
    router: RouterPart = field(default_factory=RouterPart)
    """The routers: kept shares, steps, batch, learning rate, load-balancing weight, training and held-out text
    (None: the budget's)."""
    eval: EvalPart = field(default_factory=EvalPart)
    """Evaluation of every sweep point: tasks and budget (None: the budget's), lm-eval tasks on top, and the
    perplexity corpus (None: book; the importance and router text stays the book corpus, held out from the
    evaluation's windows when both are book)."""
    batch_size: int = 4
    """Sequences per forward pass for importance (never changes results)."""
    seed: int = 0
    """Seed of the text split, random orders, task items and evaluation subsets."""

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise refuse("budget", "one of smoke, quick, full", self.budget, BUDGETS)
        check_parts(self)
        grad_given = self.grad_seqs is not None
        fill_parts(self, BUDGETS[self.budget])
        assert self.text_seqs is not None and self.grad_seqs is not None and self.seq_len is not None  # every
        assert self.methods is not None and self.ablation_layers is not None  # budget
        assert self.prune_fracs is not None  # fills them (BUDGETS)
        if not grad_given:
            object.__setattr__(self, "grad_seqs", max(self.grad_seqs, self.text_seqs))
            assert self.grad_seqs is not None
        for name in ("text_seqs", "grad_seqs", "batch_size"):
            if getattr(self, name) < 1:
                raise refuse(name, "a whole number of at least 1", getattr(self, name))
        self.router.check(where(self, "router"))
        if self.grad_seqs < self.text_seqs:
            raise InvalidValue(f"{key_name('grad_seqs')} ({self.grad_seqs}) must be at least {key_name('text_seqs')} "
                               f"({self.text_seqs}): the gradient sample includes the ablation sample")
        if self.seq_len < 4:
            raise refuse("seq_len", "a whole number of at least 4 tokens", self.seq_len)
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise refuse("methods", f"some of {', '.join(METHODS)}", ",".join(bad) or "nothing", METHODS)
        if self.ablation_layers < 0:
            raise refuse("ablation_layers", "a whole number of at least 0 (0: every layer)", self.ablation_layers)
        if any(not 0 < f < 1 for f in self.prune_fracs):
            raise refuse("prune_fracs", "fractions between 0 and 1 (exclusive)", self.prune_fracs)
        object.__setattr__(self, "gradient_seq", bool(self.gradient_seq))
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "prune_fracs", tuple(float(f) for f in self.prune_fracs))
        assert self.router.keep is not None  # the budget filled it
        object.__setattr__(self, "router", replace(self.router, keep=tuple(float(f) for f in self.router.keep)))
        self.eval.check(where(self, "eval"))
        self.eval_cfg()

    def ablated_layers(self, n_layers: int) -> range:
        """The layers whose heads are ablated one by one (the deepest ``ablation_layers``)."""
        assert self.methods is not None  # the budget filled it (__post_init__)
        n = min(self.ablation_layers or n_layers, n_layers)
        if n < n_layers and {"zero", "mean", "mean_zero"} & set(self.methods):
            raise InvalidValue(f"pruning by zero or mean ablation needs every layer ablated: set "
                               f"{key_name('ablation_layers')} to 0 or drop zero/mean from {key_name('methods')}")
        return range(n_layers - n, n_layers)

    def eval_cfg(self) -> EvalCfg:
        return self.eval.build((), "quick", self.seed)  # the budget filled tasks and budget (__post_init__)

    def describe(self) -> dict:
        """The study's part of the run identity, in the flat names it had before the parts existed."""
        d = flat_values(self)
        d.pop("batch_size")  # never changes results
        if not d["lm_eval"]:  # runs without lm-eval tasks keep the identity they had before it existed
            d.pop("lm_eval")
        for name in ("corpus", "corpus_path"):  # unset: the identity runs had before they existed (the evaluation
            if d[name] is None:                 # config holds the corpus and the file's digest)
                d.pop(name)
        d["eval"] = self.eval_cfg().describe()
        return d
