"""Multiple choice by log-likelihood: each choice is scored on its own as a continuation of the
context, so the result cannot depend on the order the choices are listed in.

Tasks: facts (embedded country -> capital items), mmlu and boolq (Hugging Face formats).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from interp.capture.batching import context_length
from interp.data.hfdata import MCItem
from interp.evals.config import EvalCfg, EvalError, Score, items_of, mean_se
from interp.evals.lm import token_logprobs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from interp.model.loading import Loaded

T = TypeVar("T")

CAPITALS = Path(__file__).resolve().parents[1] / "data" / "capitals.jsonl"


def capitals(path: str | Path = CAPITALS) -> list[MCItem]:
    """The embedded factual-recall task: 'The capital of X is' + one of 4 capitals."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise EvalError(f"facts dataset '{path}' is empty")
    return [MCItem(r["id"], r["prompt"], tuple(r["choices"]), int(r["answer"]), "capitals") for r in rows]


def mmlu_context(item: MCItem) -> MCItem:
    """MMLU as a cloze: the question, then 'Answer:' followed by each choice's text."""
    return MCItem(item.id, f"Question: {item.question.strip()}\nAnswer:", item.choices, item.answer, item.subject)


def boolq_context(item: MCItem) -> MCItem:
    return MCItem(item.id, f"{item.question.strip()}\nAnswer:", item.choices, item.answer, item.subject)


def subset(items: Sequence[T], n: int | None, seed: int) -> list[T]:
    """A seeded subset in dataset order (all items when ``n`` is None or large enough)."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def load_items(task: str, cfg: EvalCfg) -> tuple[list[MCItem], str]:
    from interp.evals.data import load_hf

    if task == "facts":
        return capitals(), "interp/data/capitals.jsonl"
    # Read every row (the hub copies are sorted by subject: a prefix would cover few subjects),
    # then the caller takes the seeded subset.
    raw, source = load_hf(task, getattr(cfg, f"{task}_path"))
    return [mmlu_context(i) if task == "mmlu" else boolq_context(i) for i in raw], source


def encode_items(tokenizer: PreTrainedTokenizerBase, items: list[MCItem],
                 max_len: int) -> tuple[list[list[int]], list[int], list[int], int]:
    """Token sequences (context + ' ' + choice) with the index where each choice starts.

    Contexts too long for ``max_len`` lose tokens from the front; the number of items cut is
    returned so it is recorded, never hidden.
    """
    seqs, starts, owners, truncated = [], [], [], 0
    for k, item in enumerate(items):
        if not item.choices:
            raise EvalError(f"item '{item.id}' has no choices")
        if not 0 <= item.answer < len(item.choices):
            raise EvalError(f"item '{item.id}' answer index {item.answer} is outside its {len(item.choices)} choices")
        ctx = tokenizer(item.question)["input_ids"]
        if not ctx:
            raise EvalError(f"item '{item.id}' has an empty question: nothing to condition the choices on")
        conts = [tokenizer(" " + c.strip(), add_special_tokens=False)["input_ids"] for c in item.choices]
        longest = max(len(c) for c in conts)
        if longest >= max_len:
            raise EvalError(f"item '{item.id}' has a choice of {longest} tokens: longer than the context {max_len}")
        cut = max(0, len(ctx) + longest - max_len)
        truncated += cut > 0
        ctx = ctx[cut:]
        for cont in conts:
            seqs.append(ctx + cont)
            starts.append(len(ctx))
            owners.append(k)
    return seqs, starts, owners, truncated


def choice_logprobs(loaded: Loaded, items: list[MCItem], batch_tokens: int = 1024) -> tuple[list[list[float]], int]:
    """Summed log-probability of every choice of every item, and the count of truncated items."""
    seqs, starts, owners, truncated = encode_items(loaded.tokenizer, items, context_length(loaded.model))
    lps = token_logprobs(loaded.model, seqs, starts, loaded.tokenizer.pad_token_id, batch_tokens)
    out: list[list[float]] = [[] for _ in items]
    for k, lp in zip(owners, lps):
        out[k].append(float(lp.double().sum()))
    return out, truncated


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def multiple_choice(loaded: Loaded, task: str, items: list[MCItem], dataset: dict, batch_tokens: int = 1024) -> list[Score]:
    """accuracy: argmax of summed log-probability; accuracy_norm: of log-probability per byte of
    the choice text (removes the bias against long answers)."""
    if not items:
        raise EvalError(f"dataset for task '{task}' is empty")
    t0 = time.perf_counter()
    scores, truncated = choice_logprobs(loaded, items, batch_tokens)
    hit = [float(argmax(s) == it.answer) for s, it in zip(scores, items)]
    hit_norm = [float(argmax([v / max(1, len(c.strip().encode())) for v, c in zip(s, it.choices)]) == it.answer)
                for s, it in zip(scores, items)]
    chance = sum(1 / len(it.choices) for it in items) / len(items)
    ds = dict(dataset, items=len(items), truncated=truncated)
    dt = time.perf_counter() - t0
    ids = [it.id for it in items]
    return [Score(task, "accuracy", *mean_se(hit), len(items), chance, ds, dt, items=items_of(ids, hit)),
            Score(task, "accuracy_norm", *mean_se(hit_norm), len(items), chance, ds, dt,
                  items=items_of(ids, hit_norm))]
