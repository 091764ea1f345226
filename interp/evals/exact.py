"""Exact match of a generated number: generated arithmetic (embedded) and GSM8K (final number after '####')."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from interp.capture.batching import context_length
from interp.data.hfdata import GenItem
from interp.evals.config import EvalError, Score, items_of, mean_se
from interp.evals.lm import greedy_generate

if TYPE_CHECKING:
    from interp.model.loading import Loaded

ARITH_SHOTS = "Calculate.\n12 + 7 = 19\n45 - 23 = 22\n6 * 7 = 42\n31 + 48 = 79\n"
"""Few-shot prefix for arithmetic (plain text, so base and instruct models read it alike)."""

GSM8K_INSTRUCTION = "\nSolve the problem step by step. End with the final answer on its own line as '#### <number>'."

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def arithmetic(n: int, seed: int = 0) -> list[GenItem]:
    """``n`` problems, the same first items for every ``n`` with one seed: two-digit sums and
    differences (never negative) and one-digit products."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 9), rng.randint(2, 9)
        else:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            if op == "-" and b > a:
                a, b = b, a
        value = a + b if op == "+" else a - b if op == "-" else a * b
        items.append(GenItem(f"arith-{seed}-{i:04d}", f"{a} {op} {b} =", str(value)))
    return items


def parse_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None


def first_number(text: str) -> str | None:
    """The first number on the first non-empty line (a few-shot answer)."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    m = _NUMBER.search(line)
    return m.group(0) if m else None


def final_number(text: str) -> str | None:
    """GSM8K-style answer: the number after the last '####', else after 'answer is', else the last number."""
    for pattern in (r"####\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", r"answer is\s*:?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)"):
        found = re.findall(pattern, text, flags=re.IGNORECASE)
        if found:
            return found[-1]
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def matches(predicted: str | None, target: str) -> bool:
    if predicted is None:
        return False
    p, t = parse_number(predicted), parse_number(target)
    if t is None:
        raise EvalError(f"target '{target}' is not a number")
    return p is not None and abs(p - t) < 1e-9


def exact_match(loaded: Loaded, task: str, items: list[GenItem], *, prompts: list[str],
                extract: Callable[[str], str | None], chat: bool,
                max_new_tokens: int, dataset: dict, batch_size: int | None = None) -> list[Score]:
    if not items:
        raise EvalError(f"dataset for task '{task}' is empty")
    t0 = time.perf_counter()
    max_prompt = context_length(loaded.model) - max_new_tokens
    if max_prompt < 1:
        raise EvalError(f"model context {context_length(loaded.model)} leaves no room for {max_new_tokens} new tokens")
    texts, truncated = greedy_generate(loaded, prompts, chat=chat, max_new_tokens=max_new_tokens,
                                       max_prompt_tokens=max_prompt, batch_size=batch_size)
    hits = [float(matches(extract(t), it.target)) for t, it in zip(texts, items)]
    ds = dict(dataset, items=len(items), truncated=truncated, chat=chat, max_new_tokens=max_new_tokens)
    return [Score(task, "accuracy", *mean_se(hits), len(items), 0.0, ds, time.perf_counter() - t0,
                  items=items_of([it.id for it in items], hits))]


def arith(loaded: Loaded, n: int, seed: int, batch_size: int | None = None) -> list[Score]:
    items = arithmetic(n, seed)
    return exact_match(loaded, "arith", items, prompts=[ARITH_SHOTS + it.question for it in items],
                       extract=first_number, chat=False, max_new_tokens=5, batch_size=batch_size,
                       dataset={"name": "arith", "source": "generated", "seed": seed, "format": "4-shot plain text",
                                "ops": "2-digit +/-, 1-digit *"})


def gsm8k(loaded: Loaded, items: list[GenItem], source: str, chat: bool, max_new_tokens: int, seed: int,
          batch_size: int | None = None) -> list[Score]:
    prompts = [it.question + GSM8K_INSTRUCTION if chat else f"Question: {it.question}\nAnswer:" for it in items]
    return exact_match(loaded, "gsm8k", items, prompts=prompts, extract=final_number, chat=chat,
                       max_new_tokens=max_new_tokens, batch_size=batch_size,
                       dataset={"name": "gsm8k", "source": source, "seed": seed, "format": "zero-shot"})
