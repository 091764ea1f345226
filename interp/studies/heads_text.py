"""Data for the head study: text chunks held out from the perplexity evaluation, answer-scored
task items, and batches whose scored positions are marked.

Pruning orders come from these samples, so the text never overlaps the evaluation windows
the same run scores (selection on the test data would flatter pruning).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch

from interp.capture.batching import pad

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

T = TypeVar("T")

IGNORE = -100
"""Target value of a position that is not scored."""


class HeadDataError(ValueError):
    """Not enough text or items for what was asked."""


@dataclass
class Scored:
    """One batch with the next-token targets that count."""

    kwargs: dict
    """input_ids, attention_mask, position_ids (batch, pos): what the model is called with."""
    targets: torch.Tensor
    """(batch, pos) token each position should predict, IGNORE where not scored."""

    def on(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The model inputs on ``device``."""
        return {k: v.to(device) for k, v in self.kwargs.items()}

    @property
    def rows(self) -> int:
        return self.targets.shape[0]

    @property
    def tokens(self) -> int:
        return int(self.kwargs["attention_mask"].sum())


def lm_batch(seqs: list[list[int]], pad_id: int) -> Scored:
    """Language modelling: every real token but the last predicts the next one."""
    b = pad(seqs, pad_id, side="right")
    targets = torch.full_like(b.input_ids, IGNORE)
    for i, s in enumerate(seqs):
        targets[i, :len(s) - 1] = torch.tensor(s[1:], dtype=torch.long)
    return Scored(b.model_kwargs(), targets)


def answer_batch(contexts: list[list[int]], answers: list[list[int]], pad_id: int) -> Scored:
    """Task items: only the positions that predict the answer tokens are scored."""
    seqs = [c + a for c, a in zip(contexts, answers)]
    b = pad(seqs, pad_id, side="right")
    targets = torch.full_like(b.input_ids, IGNORE)
    for i, (c, a) in enumerate(zip(contexts, answers)):
        targets[i, len(c) - 1:len(c) - 1 + len(a)] = torch.tensor(a, dtype=torch.long)
    return Scored(b.model_kwargs(), targets)


def batches(make: Callable[[list[T]], Scored], items: list[T], batch_size: int) -> list[Scored]:
    return [make(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


def corpus_ids(tokenizer: PreTrainedTokenizerBase, docs: list[str]) -> list[int]:
    """The corpus as one token stream, joined exactly as the perplexity evaluation joins it."""
    return tokenizer("\n\n".join(d for d in docs if d and d.strip()), add_special_tokens=False)["input_ids"]


def held_out_chunks(ids: list[int], seq_len: int, exclude: set[tuple[int, ...]], window: int) -> list[list[int]]:
    """Chunks of ``seq_len`` tokens from the stream, never touching an excluded window.

    The stream is cut on the evaluation's window grid (``window`` tokens); excluded windows
    are removed and chunks are cut from the runs of tokens between them.
    """
    if seq_len < 2:
        raise HeadDataError(f"sequence length must be at least 2 tokens, not {seq_len}")
    runs: list[list[int]] = []
    current: list[int] = []
    for start in range(0, len(ids) - window + 1, window):
        w = tuple(ids[start:start + window])
        if w in exclude:
            runs.append(current)
            current = []
        else:
            current.extend(w)
    current.extend(ids[len(ids) - len(ids) % window:] if len(ids) >= window else ids)
    runs.append(current)
    return [run[i:i + seq_len] for run in runs for i in range(0, len(run) - seq_len + 1, seq_len)]


def split(chunks: list, sizes: dict[str, int], seed: int) -> dict[str, list]:
    """Disjoint seeded subsets of the given sizes, in a fixed order of names."""
    need = sum(sizes.values())
    if need > len(chunks):
        raise HeadDataError(f"asked for {need} text chunks but the corpus has {len(chunks)}: "
                            "use fewer sequences or a shorter --seq-len")
    order = list(range(len(chunks)))
    random.Random(seed).shuffle(order)
    out, at = {}, 0
    for name, n in sizes.items():
        out[name] = [chunks[i] for i in order[at:at + n]]
        at += n
    return out
