"""Model primitives every metric shares: log-probabilities of given tokens, batched greedy generation.

Both run whatever hooks or edited weights are active on the model. Batching never changes
results: sequences are grouped by length, right-padded with an attention mask and explicit
position ids (see ``interp.capture.batching``).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from interp.capture.batching import encode, pad

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel

    from interp.model.loading import Loaded

    class CausalLM(PreTrainedModel, GenerationMixin):
        """A Hugging Face causal LM as the checker sees it (transformers 5's PreTrainedModel has no
        ``generate``: each causal LM class adds GenerationMixin)."""


def _batches(lengths: list[int], max_tokens: int, min_fill: float = 0.0) -> list[list[int]]:
    """Indices grouped so each padded batch holds at most ``max_tokens`` tokens (longest first); a
    sequence joins a batch only if it is at least ``min_fill`` times the batch's longest (bounds padding)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= max_tokens \
                and lengths[i] >= min_fill * lengths[out[-1][0]]:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _kept_logits(model: nn.Module, kwargs: dict, keep: torch.Tensor) -> torch.Tensor:
    """Logits at the True positions of ``keep`` (batch, pos), flattened row-major to (kept, vocab).
    Hugging Face models unembed only those positions (``logits_to_keep``); others are sliced."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return model(**kwargs, logits_to_keep=keep).logits
    return model(**kwargs).logits[keep]


@torch.no_grad()
def token_logprobs(model: nn.Module, seqs: list[list[int]], starts: list[int], pad_id: int,
                   max_tokens: int = 1024) -> list[torch.Tensor]:
    """log p(seq[t] | seq[:t]) for t in start..len-1 of every sequence, as float32 CPU tensors.

    ``start`` must be >= 1 (the first token has no prediction).
    """
    if len(seqs) != len(starts):
        raise ValueError("token_logprobs needs one start per sequence")
    out: list[torch.Tensor | None] = [None] * len(seqs)
    device = next(model.parameters()).device
    for idx in _batches([len(s) for s in seqs], max_tokens):
        batch = pad([seqs[i] for i in idx], pad_id, side="right").to(device)
        # Unembed only the positions that predict a scored token: with a 262k vocabulary the
        # unembedding costs more than the blocks, and a choice is a few tokens after a long context.
        keep = torch.zeros_like(batch.input_ids, dtype=torch.bool)  # (batch, pos)
        for row, i in enumerate(idx):
            if starts[i] < 1:
                raise ValueError("the first token of a sequence has no log-probability: start must be >= 1")
            keep[row, starts[i] - 1:len(seqs[i]) - 1] = True
        logits = _kept_logits(model, batch.model_kwargs(), keep).float()  # (kept, vocab), row-major
        targets = batch.input_ids.roll(-1, dims=1)[keep]  # the token each kept position predicts
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        for i, lp in zip(idx, picked.split(keep.sum(1).tolist())):
            out[i] = lp.cpu()
        del logits, picked
    return out  # type: ignore[return-value]


@torch.no_grad()
def last_logprobs(model: nn.Module, seqs: list[list[int]], pad_id: int, max_tokens: int = 1024) -> torch.Tensor:
    """Log-softmax of the next-token distribution after each sequence: (n, vocab) float32 on CPU."""
    device = next(model.parameters()).device
    rows: list[torch.Tensor | None] = [None] * len(seqs)
    for idx in _batches([len(s) for s in seqs], max_tokens):
        batch = pad([seqs[i] for i in idx], pad_id, side="right").to(device)
        keep = torch.zeros_like(batch.input_ids, dtype=torch.bool)  # only the last token is unembedded
        keep[torch.arange(len(idx), device=device), batch.lengths.to(device) - 1] = True
        last = _kept_logits(model, batch.model_kwargs(), keep).float()  # (batch, vocab)
        lp = torch.log_softmax(last, dim=-1).cpu()
        for row, i in enumerate(idx):
            rows[i] = lp[row]
    return torch.stack(rows)  # type: ignore[arg-type]


def _eos_ids(loaded: Loaded) -> list[int]:
    ids = []
    for src in (getattr(loaded.model, "generation_config", None), loaded.model.config, loaded.tokenizer):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        ids += list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    return sorted(set(ids))


@torch.no_grad()
def greedy_generate(loaded: Loaded, prompts: list[str], *, chat: bool, max_new_tokens: int, max_prompt_tokens: int,
                    batch_size: int = 16, system: str | None = None) -> tuple[list[str], int]:
    """Greedy continuations of ``prompts`` (chat-formatted when ``chat``), batched with left padding.

    Returns (texts, number of prompts that were cut to fit ``max_prompt_tokens``).
    """
    from transformers import GenerationConfig

    tok, model = loaded.tokenizer, cast("CausalLM", loaded.model)
    encoded = encode(tok, prompts, chat, max_prompt_tokens, system)
    truncated = sum(e.truncated > 0 for e in encoded)
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=tok.pad_token_id, eos_token_id=_eos_ids(loaded) or None)
    texts: list[str | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i].ids))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        batch = pad([encoded[i].ids for i in idx], tok.pad_token_id, side="left").to(loaded.device)
        out = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             generation_config=gen_cfg)
        new = out[:, batch.input_ids.shape[1]:]
        for row, i in enumerate(idx):
            texts[i] = cast(str, tok.decode(new[row], skip_special_tokens=True))  # one sequence: one string
    return texts, truncated  # type: ignore[return-value]
