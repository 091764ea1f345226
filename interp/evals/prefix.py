"""Prefix reuse: the residual stream of fixed evaluation inputs, computed once per sweep.

A sweep evaluates many edits on the same inputs (perplexity windows, multiple-choice
contexts and choices, KL prompts). An edit that first touches block ``f`` leaves blocks
``0..f-1`` computing exactly what the unedited model computes, so their outputs can come
from a cache. ``reuse(loaded, cache, first)`` swaps blocks ``0..f-1`` of the model's layer
list for stand-ins while a forward pass runs: Hugging Face's forward still runs (embedding,
masks, rotary tables, every later block, final norm, unembedding), only the stand-ins return
the cached output of block ``f-1`` instead of computing it. The cache is keyed by the exact
batch (token ids, attention mask, position ids), so the block ``f`` sees bit-for-bit the
input the full forward gives it and results equal the full forward's. In generation the prompt
(the first call, with an empty KV cache) is served the same way, and each stand-in also replays
the KV cache writes its block made when it was recorded, so the decoding steps (which run every
block in full: their tokens depend on the edit) find the cache the full forward would leave.

The cache fills itself: a stand-in whose block output is not cached yet runs the real block
(which is unedited below ``f``) and stores what it returns, so the base point of a sweep
(``first = n_layers``) records every layer and a resumed sweep fills it on its first point.
Decoding steps, and calls without token ids, run in full and store nothing.

Memory: entries live on the model's device up to ``PrefixCfg.memory_mb``; past it they are
written to a scratch directory (``np.save``-speed files, removed by ``PrefixCache.close``),
and when that is off or fails, not stored at all (those layers are recomputed).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:
    from interp.model.loading import Loaded

Writes = list[tuple[tuple, dict[str, Any]]]
"""The (args, kwargs) of every ``update`` call a block made on the KV cache, in order."""


@dataclass(frozen=True)
class PrefixCfg:
    """How much of the prefix a sweep keeps (never part of a run's identity: results are equal)."""

    memory_mb: int = 1024
    """Block outputs kept in memory (on the model's device), in MiB."""
    spill: bool = True
    """Past ``memory_mb``, write block outputs to a scratch directory (removed when the sweep
    ends) instead of recomputing them."""
    scratch: str | None = None
    """Parent of the scratch directory; None: the system temporary directory."""

    def __post_init__(self) -> None:
        if not isinstance(self.memory_mb, int) or self.memory_mb < 0:
            raise ValueError(f"prefix memory must be a whole number of MiB >= 0, not {self.memory_mb!r}")


def kv_cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache a forward call was given (transformers 5 names it ``cache``), or None. Any: a
    transformers ``Cache``, or a cache of another kind (``batch_key`` refuses those)."""
    kv = kwargs.get("cache")
    return kwargs.get("past_key_values") if kv is None else kv


def batch_key(kwargs: dict[str, Any]) -> str | None:
    """Identity of one forward call's inputs, or None when its prefix must not be reused: a
    decoding step (its KV cache already holds tokens), embeddings instead of token ids, or
    per-layer attentions or hidden states asked for. A generation's first call (an empty KV
    cache: the prompt) has its own key, its entries also hold what each block wrote to the cache."""
    kv = kv_cache(kwargs)
    try:
        if kv is not None and kv.get_seq_length() > 0:
            return None
    except (AttributeError, TypeError):  # a cache of another kind: do not guess
        return None
    if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
        return None  # stand-ins give neither
    ids = kwargs.get("input_ids")
    if ids is None or kwargs.get("inputs_embeds") is not None:
        return None
    h = hashlib.sha1(b"prefill" if kv is not None else b"")
    for name in ("input_ids", "attention_mask", "position_ids"):
        t = kwargs.get(name)
        h.update(name.encode())
        if t is not None:
            t = t.detach()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def recording_updates(kv: Any) -> Iterator[Writes]:
    """Record every ``kv.update(...)`` call (what attention writes to the KV cache) made inside."""
    calls: Writes = []
    real = kv.update

    def update(*args: Any, **kwargs: Any) -> Any:  # the cache's own update, whatever it returns
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    kv.update = update
    try:
        yield calls
    finally:
        del kv.update  # the class's method again


class PrefixCache:
    """Clean block outputs per (batch key, layer): block ``i``'s output is layer ``i``'s entry.

    ``depth(key)`` layers (0..depth-1) are known for a batch; entries are added in layer order.
    Use as a context manager (or call ``close``) so the scratch directory is removed."""

    def __init__(self, cfg: PrefixCfg | None = None) -> None:
        self.cfg = cfg or PrefixCfg()
        self._mem: dict[tuple[str, int], torch.Tensor] = {}
        self._disk: dict[tuple[str, int], tuple[Path, torch.device, torch.dtype]] = {}
        self._depth: dict[str, int] = {}
        self._alias: dict[str, tuple[str, int]] = {}
        self._writes: dict[tuple[str, int], Writes] = {}  # prompt batches: each block's KV cache updates
        self._tails: dict[int, tuple | None] = {}  # layer -> what follows the hidden states in a tuple output
        self._scratch: Path | None = None
        self.bytes = 0
        """Bytes held in memory."""
        self.spilled = 0
        """Bytes written to the scratch directory."""
        self.skipped = 0
        """Block calls served from the cache (the compute saved)."""

    def depth(self, key: str) -> int:
        if key in self._alias:
            return self.depth(self._alias[key][0])
        return self._depth.get(key, 0)

    def alias(self, key: str, base: str, repeats: int) -> None:
        """Serve batch ``key`` (the batch ``base`` repeated ``repeats`` times along rows) from
        ``base``'s entries; nothing is stored for it."""
        if key != base:
            self._alias[key] = (base, repeats)

    def get(self, key: str, layer: int) -> torch.Tensor:
        if key in self._alias:
            base, repeats = self._alias[key]
            t = self.get(base, layer)
            return t.repeat(repeats, *([1] * (t.dim() - 1)))
        if (key, layer) in self._mem:
            return self._mem[(key, layer)]
        path, device, dtype = self._disk[(key, layer)]
        return _load(path, dtype).to(device)

    def tail(self, layer: int) -> tuple | None:
        return self._tails.get(layer)

    def replay(self, key: str, layer: int, kv: Any) -> None:
        """Write to ``kv`` what block ``layer`` wrote when its output was stored (prompt batches)."""
        for args, kwargs in self._writes[(key, layer)]:
            kv.update(*args, **kwargs)

    def put(self, key: str, layer: int, out: torch.Tensor | tuple, writes: Writes | None = None) -> None:
        """Store block ``layer``'s output (a tensor, or a tuple led by the hidden states) and, for a
        generation's prompt, the KV cache updates it made (``writes``; none recorded: not stored)."""
        if layer != self.depth(key) or key in self._alias:
            return  # only whole prefixes are useful; an alias is served from its base
        if writes is not None:
            if not writes:
                return  # the block wrote its keys and values some other way: cannot replay it
            size = sum(t.numel() * t.element_size() for a, _ in writes for t in a if isinstance(t, torch.Tensor))
            if self.bytes + size > self.cfg.memory_mb << 20:
                return  # KV writes stay in memory only
            self._writes[(key, layer)] = writes
            self.bytes += size
        # What follows the hidden states in a tuple output (attention weights: Falcon returns them
        # always) is read by the model only when attentions or a KV cache are asked for, and such
        # calls are never served from the cache (``batch_key``): stand-ins return None in their place.
        hidden, tail = (out[0], (None,) * (len(out) - 1)) if isinstance(out, tuple) else (out, None)
        if self._tails.setdefault(layer, tail) != tail:
            return
        hidden = hidden.detach()
        size = hidden.numel() * hidden.element_size()
        if self.bytes + size <= self.cfg.memory_mb << 20:
            self._mem[(key, layer)] = hidden.clone()
            self.bytes += size
        elif not self._spill(key, layer, hidden):
            return
        self._depth[key] = layer + 1

    def _spill(self, key: str, layer: int, hidden: torch.Tensor) -> bool:
        if not self.cfg.spill:
            return False
        try:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="interp-prefix-", dir=self.cfg.scratch))
            path = self._scratch / f"{key}-{layer}.npy"
            _save(path, hidden)
        except OSError:  # full or unwritable disk: recompute instead
            return False
        self._disk[(key, layer)] = (path, hidden.device, hidden.dtype)
        self.spilled += hidden.numel() * hidden.element_size()
        return True

    def close(self) -> None:
        self._mem.clear()
        self._disk.clear()
        self._depth.clear()
        self._alias.clear()
        self._writes.clear()
        self.bytes = 0
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> PrefixCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _save(path: Path, t: torch.Tensor) -> None:
    import numpy as np

    t = t.cpu()
    np.save(path, t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy())  # NumPy has no bfloat16


def _load(path: Path, dtype: torch.dtype) -> torch.Tensor:
    import numpy as np

    t = torch.from_numpy(np.load(path))
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


class _StandIn(nn.Module):
    """Takes block ``layer``'s place: serves its output from the cache, or runs the real block
    and caches what it returns."""

    block: nn.Module  # set through __dict__ (below)

    def __init__(self, block: nn.Module, layer: int, top: int, state: dict[str, Any]) -> None:
        super().__init__()
        self.__dict__["block"] = block  # not a submodule: the model's module tree stays the real one
        self.layer, self.top, self.state = layer, top, state

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor | tuple:  # what the block returns
        key, cache, kv = self.state.get("key"), self.state["cache"], self.state.get("kv")
        if key is None:
            return self.block(*args, **kwargs)
        known = min(self.top, cache.depth(key))  # blocks 0..known-1 come from the cache
        if self.layer < known:
            cache.skipped += 1
            if kv is not None:
                cache.replay(key, self.layer, kv)  # the KV cache gets what the block would have written
            if self.layer < known - 1:
                return args[0] if args else kwargs["hidden_states"]  # discarded by the next stand-in
            hidden, tail = cache.get(key, self.layer), cache.tail(self.layer)
            return hidden if tail is None else (hidden, *tail)
        if kv is None:
            out = self.block(*args, **kwargs)
            cache.put(key, self.layer, out)
            return out
        with recording_updates(kv) as writes:
            out = self.block(*args, **kwargs)
        cache.put(key, self.layer, out, writes)
        return out


@contextlib.contextmanager
def reuse(loaded: Loaded, cache: PrefixCache | None, first: int) -> Iterator[None]:
    """Inside the block, blocks ``0..first-1`` of the current layer list are served from ``cache``
    for every forward call on token ids (and a generation's prompt, whose KV cache entries are
    replayed; its decoding steps run in full). ``first`` is the first block the active
    edit changes (``interp.interventions.first_layer``); 0 or no cache: nothing changes."""
    blocks = cast(nn.ModuleList, loaded.model.get_submodule(loaded.arch.layers))
    first = min(first, len(blocks))
    if cache is None or first <= 0:
        yield
        return
    state: dict[str, Any] = {"cache": cache, "key": None, "kv": None}

    def enter(_m: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        state["key"] = None if args else batch_key(kwargs)
        state["kv"] = kv_cache(kwargs)
        if state["key"] is not None and state["kv"] is None and kwargs.get("use_cache") is not False:
            return args, {**kwargs, "use_cache": False}  # the KV cache of a one-shot call is thrown away
        return None

    def leave(_m: nn.Module, _args: tuple, _kwargs: dict[str, Any], _out: object) -> None:
        state["key"] = state["kv"] = None

    originals = [blocks[i] for i in range(first)]
    handles: list[RemovableHandle] = []
    try:
        handles.append(loaded.model.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(loaded.model.register_forward_hook(leave, with_kwargs=True, always_call=True))
        for i in range(first):
            blocks[i] = _StandIn(originals[i], i, first, state)
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
        for h in handles:
            h.remove()
