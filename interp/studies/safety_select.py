"""Model-side measurements behind direction selection: for a candidate direction, ablate it
everywhere and measure, on the study's own held-out (test split) prompts,

- the refusal rate of greedy replies to harmful prompts (the evaluation suite's phrase judge),
- the mean per-token log-probability of a fixed refusal reply after each harmful prompt
  (continuous: moves even when no greedy reply flips),
- KL(base || ablated) of the next-token distribution after each neutral prompt.

These prompts are the ``test`` split: never used to fit directions, and disjoint from the
prompts the final evaluation uses (those are the ``heldout`` split).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from analyses.stats import standard_error
from interp.capture.batching import context_length, encode
from interp.evals.kl import kl_divergence
from interp.evals.lm import greedy_generate, last_logprobs, token_logprobs
from interp.evals.refusal import get_judge
from interp.interventions import Intervention
from interp.model.loading import Loaded

REFUSAL_REPLY = "I'm sorry, but I can't help with that request."
"""The reply whose log-probability is the continuous refusal score."""


@dataclass(frozen=True)
class Probe:
    """Tokenised held-out prompts, prepared once and reused for every candidate."""

    harmful: tuple[str, ...]
    reply_seqs: tuple[tuple[int, ...], ...]
    reply_starts: tuple[int, ...]
    neutral_seqs: tuple[tuple[int, ...], ...]
    chat: bool
    gen_tokens: int
    judge: str = "phrases"
    batch_size: int | None = None
    """Prompts per greedy generation; None: as many as fit the evaluation's memory budget
    (``interp.evals.lm.GEN_MEMORY``). The replies do not depend on it."""
    batch_tokens: int = 1024


def prepare(loaded: Loaded, harmful: list[str], neutral: list[str], *, gen_tokens: int, judge: str = "phrases",
            batch_size: int | None = None, batch_tokens: int = 1024) -> Probe:
    if not harmful or not neutral:
        raise ValueError("direction selection needs held-out harmful and neutral prompts: capture more prompts")
    tok, chat = loaded.tokenizer, loaded.is_chat
    max_len = context_length(loaded.model)
    reply = tok(REFUSAL_REPLY, add_special_tokens=False)["input_ids"]
    seqs, starts = [], []
    for e in encode(tok, harmful, chat, max_len - len(reply)):
        seqs.append(tuple(e.ids) + tuple(reply))
        starts.append(len(e.ids))
    neutral_seqs = tuple(tuple(e.ids) for e in encode(tok, neutral, chat, max_len))
    get_judge(judge)  # fail early on an unknown judge
    return Probe(tuple(harmful), tuple(seqs), tuple(starts), neutral_seqs, chat, gen_tokens, judge, batch_size,
                 batch_tokens)


@dataclass(frozen=True)
class Measure:
    refusal_rate: float
    refusal_logprob: float
    next_logprobs: torch.Tensor  # (neutral prompt, vocab) log-softmax


@torch.no_grad()
def measure(loaded: Loaded, probe: Probe) -> Measure:
    """Refusal rate, refusal-reply log-prob and neutral next-token distributions of the model as it is."""
    model, pad_id = loaded.model, loaded.tokenizer.pad_token_id
    texts, _ = greedy_generate(loaded, list(probe.harmful), chat=probe.chat, max_new_tokens=probe.gen_tokens,
                               max_prompt_tokens=context_length(model) - probe.gen_tokens,
                               batch_size=probe.batch_size)
    refused = get_judge(probe.judge).judge(list(probe.harmful), texts)
    lps = token_logprobs(model, [list(s) for s in probe.reply_seqs], list(probe.reply_starts), pad_id,
                         probe.batch_tokens)
    next_lp = last_logprobs(model, [list(s) for s in probe.neutral_seqs], pad_id, probe.batch_tokens)
    return Measure(float(np.mean(refused)), float(np.mean([float(lp.mean()) for lp in lps])), next_lp)


def candidate_row(base: Measure, edited: Measure, n_harmful: int, seconds: float) -> dict[str, object]:
    kl = kl_divergence(base.next_logprobs, edited.next_logprobs).numpy()
    return {
        "base_refusal_rate": base.refusal_rate, "refusal_rate": edited.refusal_rate,
        "refusal_drop": base.refusal_rate - edited.refusal_rate,
        "base_refusal_logprob": base.refusal_logprob, "refusal_logprob": edited.refusal_logprob,
        "refusal_logprob_drop": base.refusal_logprob - edited.refusal_logprob,
        "kl": float(kl.mean()), "kl_stderr": float(standard_error(kl)) if len(kl) > 1 else None,
        "n_refusal": n_harmful, "n_kl": int(len(kl)), "seconds": seconds,
    }


def measure_candidate(loaded: Loaded, probe: Probe, base: Measure, spec: Intervention) -> dict[str, object]:
    """Apply ``spec`` (an intervention), measure, and compare with ``base``."""
    t0 = time.perf_counter()
    with spec.apply(loaded):
        edited = measure(loaded, probe)
    return candidate_row(base, edited, len(probe.harmful), time.perf_counter() - t0)

