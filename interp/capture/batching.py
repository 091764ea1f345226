"""Prompt formatting (chat template), tokenisation with recorded truncation, and padding.

Padding never changes results: every batch carries its attention mask and explicit
position ids (0..len-1 per row), so left and right padding give the same activations as
one prompt at a time, also for absolute-position models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    truncated: int
    """How many tokens were cut from the front to fit the context (0 if none)."""


def format_prompt(tokenizer: PreTrainedTokenizerBase, text: str, chat: bool, system: str | None = None) -> str:
    """The exact string the model sees: a user turn plus generation prompt when ``chat``."""
    if not chat:
        return text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    # tokenize=False: the template's text, not ids
    return cast(str, tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def context_length(model: nn.Module) -> int:
    c = model.config
    return int(getattr(c, "max_position_embeddings", 0) or getattr(c, "n_positions", 2048))


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], chat: bool, max_tokens: int, system: str | None = None) -> list[Encoded]:
    """Tokenise formatted prompts; over-long ones keep their last ``max_tokens`` tokens.

    Keeping the end preserves the chat template's generation prompt, where the
    last-token readout happens; the count of dropped tokens is returned, never hidden.
    """
    out = []
    for text in texts:
        formatted = format_prompt(tokenizer, text, chat, system)
        # The chat template already contains the special tokens it needs.
        ids = tokenizer(formatted, add_special_tokens=not chat)["input_ids"]
        if not ids:
            raise ValueError(f"prompt tokenises to nothing: {text[:60]!r}")
        cut = max(0, len(ids) - max_tokens)
        out.append(Encoded(ids[cut:], cut))
    return out


@dataclass
class Batch:
    input_ids: torch.Tensor       # (batch, pos)
    attention_mask: torch.Tensor  # (batch, pos), 1 for real tokens
    position_ids: torch.Tensor    # (batch, pos), 0..len-1 over real tokens
    lengths: torch.Tensor         # (batch,)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.position_ids.to(device), self.lengths.to(device))

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids}


def pad(seqs: list[list[int]], pad_id: int, side: str = "right") -> Batch:
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', not '{side}'")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, mask, pos, mask.sum(-1))


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, whatever the padding side."""
    width = mask.shape[-1]
    ar = torch.arange(width, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), ar, -1).max(-1).values
