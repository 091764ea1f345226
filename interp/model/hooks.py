"""One small factory that turns a tensor function into PyTorch hooks on a site.

Capture and every intervention use it, so tuple outputs, keyword inputs and the per-head
view of ``z`` are handled once. Hooks are always removed on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from interp.model.sites import ArchSites, Site, site_module

SiteFn = Callable[[torch.Tensor], torch.Tensor | None]
"""Gets the site's tensor; returns a replacement, or None to leave it unchanged."""


def _heads_view(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)  # (batch, pos, head, d_head)


def _apply(fn: SiteFn, x: torch.Tensor, n_heads: int | None) -> torch.Tensor | None:
    if n_heads is None:
        return fn(x)
    new = fn(_heads_view(x, n_heads))
    return None if new is None else new.reshape(x.shape)


def _output_hook(fn: SiteFn, n_heads: int | None):
    def hook(_module, _args, output):
        first = output[0] if isinstance(output, tuple) else output
        new = _apply(fn, first, n_heads)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    return hook


def _input_hook(fn: SiteFn, n_heads: int | None):
    def hook(_module, args, kwargs):
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
