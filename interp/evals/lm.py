"""Model primitives every metric shares: log-probabilities of given tokens, batched greedy generation.

Both run whatever hooks or edited weights are active on the model. Batching never changes
results: sequences are grouped by length, right-padded with an attention mask and explicit
position ids (see ``interp.capture.batching``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
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


LOGIT_BYTES = 256 << 20
"""Most float32 logits one forward pass unembeds at once (with a 262k vocabulary a 1024-token batch
would hold 1 GB of them, and as much again for their log-sum-exp)."""


def _batches(lengths: list[int], max_tokens: int | Callable[[list[int]], bool],
             min_fill: float = 0.0) -> list[list[int]]:
    """Indices grouped longest first so each padded batch holds at most ``max_tokens`` tokens, or passes
    the test ``max_tokens(indices)`` (a single sequence always forms a batch); a sequence joins a batch
    only if it is at least ``min_fill`` times the batch's longest (bounds padding)."""
    fits: Callable[[list[int]], bool]
    if isinstance(max_tokens, int):
        cap = max_tokens
        fits = lambda idx: len(idx) * lengths[idx[0]] <= cap  # noqa: E731 (the padded batch's tokens)
    else:
        fits = max_tokens
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and fits([*out[-1], i]) and lengths[i] >= min_fill * lengths[out[-1][0]]:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def positions_within(vocab: int) -> int:
    """Most positions of float32 logits over ``vocab`` that one pass may hold under ``LOGIT_BYTES``."""
    return max(1, LOGIT_BYTES // (4 * vocab))


def logit_positions(model: nn.Module) -> int | None:
    """Most positions one forward pass may unembed under ``LOGIT_BYTES`` (None: a model that gives no
    vocabulary size)."""
    vocab = _vocab(model)
    return positions_within(vocab) if vocab else None


def _vocab(model: nn.Module) -> int | None:
    """Rows of the model's unembedding (None: a model that says neither)."""
    get = getattr(model, "get_output_embeddings", None)
    weight = getattr(get() if callable(get) else None, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(vocab) if vocab else None


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
    kept_max = logit_positions(model) or sum(map(len, seqs))  # positions unembedded per pass

    def fits(idx: list[int]) -> bool:
        return (len(idx) * len(seqs[idx[0]]) <= max_tokens
                and sum(len(seqs[i]) - starts[i] for i in idx) <= kept_max)

    for idx in _batches([len(s) for s in seqs], fits):
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


GEN_MEMORY = 512 << 20
"""Most bytes one greedy-generation batch may hold (``gen_row_bytes`` per prompt): on a CPU each
decoding step reads every weight once per batch, whatever its width, so a wide batch costs less per
prompt than several narrow ones (``bench/gen_batch.py``)."""


def gen_row_bytes(loaded: Loaded, prompt_tokens: int, new_tokens: int) -> int:
    """What one prompt of ``prompt_tokens`` tokens adds to a generation batch, over-estimated: its KV
    cache at full length in every block, one block's prefill activations (MLP, attention scores) and a
    decoding step's logits with their float32 copy."""
    c = loaded.config
    size = next(loaded.model.parameters()).element_size()
    kv_heads = getattr(c, "num_key_value_heads", None) or loaded.n_heads
    d_ff = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * loaded.d_model
    kv = 2 * loaded.n_layers * kv_heads * loaded.d_head * (prompt_tokens + new_tokens) * size
    block = prompt_tokens * (4 * loaded.d_model + 3 * d_ff + loaded.n_heads * prompt_tokens) * max(size, 4)
    return int(kv + block + 2 * loaded.vocab_size * 4)


@torch.no_grad()
def greedy_generate(loaded: Loaded, prompts: list[str], *, chat: bool, max_new_tokens: int, max_prompt_tokens: int,
                    batch_size: int | None = None, system: str | None = None,
                    memory: int = GEN_MEMORY) -> tuple[list[str], int]:
    """Greedy continuations of ``prompts`` (chat-formatted when ``chat``), batched with left padding,
    longest prompts first: ``batch_size`` prompts per batch, or (None) as many as fit ``memory`` bytes
    (``gen_row_bytes``). A prompt's tokens do not depend on its batch-mates (the attention mask hides the
    padding and positions count real tokens only), so the batching never changes the texts.

    Returns (texts, number of prompts that were cut to fit ``max_prompt_tokens``).
    """
    from transformers import GenerationConfig

    tok, model = loaded.tokenizer, cast("CausalLM", loaded.model)
    encoded = encode(tok, prompts, chat, max_prompt_tokens, system)
    truncated = sum(e.truncated > 0 for e in encoded)
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=tok.pad_token_id, eos_token_id=_eos_ids(loaded) or None)
    texts: list[str | None] = [None] * len(prompts)

    def fits(idx: list[int]) -> bool:
        if batch_size is not None:
            return len(idx) <= batch_size
        return len(idx) * gen_row_bytes(loaded, len(encoded[idx[0]].ids), max_new_tokens) <= memory

    for idx in _batches([len(e.ids) for e in encoded], fits):
        batch = pad([encoded[i].ids for i in idx], tok.pad_token_id, side="left").to(loaded.device)
        out = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             generation_config=gen_cfg)
        new = out[:, batch.input_ids.shape[1]:]
        for row, i in enumerate(idx):
            texts[i] = cast(str, tok.decode(new[row], skip_special_tokens=True))  # one sequence: one string
    return texts, truncated  # type: ignore[return-value]
