"""One small factory that turns a tensor function into PyTorch hooks on a site.

Capture and every intervention use it, so tuple outputs, keyword inputs and the per-head
view of ``z`` are handled once. Hooks are always removed on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from interp.model.sites import ArchSites, Site, site_module

SiteFn = Callable[[torch.Tensor], torch.Tensor | None]
"""Gets the site's tensor; returns a replacement, or None to leave it unchanged."""

OutputHook = Callable[[nn.Module, tuple, torch.Tensor | tuple], torch.Tensor | tuple | None]
InputHook = Callable[[nn.Module, tuple, dict[str, Any]], tuple[tuple, dict[str, Any]] | None]


def _heads_view(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)  # (batch, pos, head, d_head)


def _apply(fn: SiteFn, x: torch.Tensor, n_heads: int | None) -> torch.Tensor | None:
    if n_heads is None:
        return fn(x)
    new = fn(_heads_view(x, n_heads))
    return None if new is None else new.reshape(x.shape)


def _output_hook(fn: SiteFn, n_heads: int | None) -> OutputHook:
    def hook(_module: nn.Module, _args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple | None:
        first = output[0] if isinstance(output, tuple) else output
        new = _apply(fn, first, n_heads)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return hook


def _input_hook(fn: SiteFn, n_heads: int | None) -> InputHook:
    def hook(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        if args:
            new = _apply(fn, args[0], n_heads)
            return None if new is None else ((new, *args[1:]), kwargs)
        new = _apply(fn, kwargs["hidden_states"], n_heads)
        return None if new is None else (args, {**kwargs, "hidden_states": new})
    return hook


def _as_added(fn: SiteFn, arch: ArchSites, site: Site) -> SiteFn:
    """``fn`` on what a sublayer adds to the residual stream, where that is not the module output
    itself: Granite multiplies it by ``residual_scale`` after the module (``fn`` sees the product
    and its replacement is divided back, so the block's own multiply rebuilds it), and Falcon adds
    the attention output into the MLP output in place (``fn`` sees a copy taken before that)."""
    scale = arch.residual_scale if site.hook in ("attn_out", "mlp_out") else 1.0
    if scale != 1.0:
        def scaled(x: torch.Tensor) -> torch.Tensor | None:
            new = fn(x * scale)
            return None if new is None else new / scale
        return scaled
    if site.hook == "mlp_out" and arch.inplace_mlp:
        return lambda x: fn(x.clone())
    return fn


@contextlib.contextmanager
def hooked(model: nn.Module, arch: ArchSites, fns: dict[Site, SiteFn], n_heads: int) -> Iterator[None]:
    """Run ``fns`` on their sites during every forward pass inside the block."""
    handles = []
    try:
        for site, fn in fns.items():
            module, where = site_module(model, arch, site)
            heads = n_heads if site.hook == "z" else None
            fn = _as_added(fn, arch, site)
            if where == "output":
                handles.append(module.register_forward_hook(_output_hook(fn, heads)))
            else:
                handles.append(module.register_forward_pre_hook(_input_hook(fn, heads), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


class _Stop(Exception):
    """Raised inside a hook to end a forward pass once what it needed is captured."""


@dataclass(frozen=True)
class BlockCall:
    """How a model called one decoder block: its hidden input and everything else it passed."""

    hidden: torch.Tensor | None
    """(batch, pos, d_model) input of block 0; None for the others (kept small: replaying
    blocks one by one feeds each the previous block's output)."""
    args: tuple
    """Positional arguments after the hidden states."""
    kwargs: dict
    """Keyword arguments (masks, position embeddings, ...), without hidden_states."""
    positional: bool
    """Whether the hidden states came positionally."""

    def run(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The block's output on ``hidden`` (instead of the recorded input), called the same way."""
        out = block(hidden, *self.args, **self.kwargs) if self.positional else \
            block(*self.args, hidden_states=hidden, **self.kwargs)
        return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def block_calls(model: nn.Module, blocks: nn.ModuleList, inputs: dict) -> list[BlockCall]:
    """How every block is called in a forward pass of ``inputs``, one per block.

    Blocks of one model can get different arguments: Gemma 2/3 give sliding-window layers
    their own mask and (Gemma 3) their own rotary embeddings, so replaying a block needs its
    own call, not block 0's. The pass stops before the last block runs.
    """
    calls: list[BlockCall] = []

    def grab(_m: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        kw = dict(kwargs)
        hidden = args[0] if args else kw.pop("hidden_states")
        calls.append(BlockCall(None if calls else hidden, tuple(args[1:]), kw, bool(args)))
        if len(calls) == len(blocks):
            raise _Stop

    handles = [b.register_forward_pre_hook(grab, with_kwargs=True) for b in blocks]
    try:
        model(**inputs, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return calls
