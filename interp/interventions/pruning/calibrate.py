"""Wanda's calibration statistics: the L2 norm of every input feature of every pruned linear
module over the calibration tokens, collected with forward pre-hooks (these inputs are not
TransformerLens hook points).

``layerwise_norms`` runs the decoder blocks one at a time on the cached inputs of the
previous block, as the original method does: with a ``prune_layer`` callback, block l's
statistics are taken on the output of the already pruned blocks < l (sequential Wanda);
without it every statistic comes from the dense model (one-shot).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from interp.interventions.pruning.targets import Target
from interp.model.hooks import BlockCall, InputHook, block_calls

BATCH = 8
"""Calibration windows per forward pass."""

Norms = dict[tuple[int, str], torch.Tensor]
"""(layer, projection) -> (in,) float32 L2 norms of the input features."""


class NormAccumulator:
    """Running sums of squared inputs per module, in float64 (the hook adapter's state)."""

    def __init__(self) -> None:
        self.sumsq: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}

    def hook(self, key: str) -> InputHook:
        def pre_hook(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            flat = x.detach().reshape(-1, x.shape[-1]).double()  # (tokens, in)
            acc = flat.pow(2).sum(0)
            self.sumsq[key] = acc if key not in self.sumsq else self.sumsq[key] + acc
            self.tokens[key] = self.tokens.get(key, 0) + flat.shape[0]
        return pre_hook

    def norms(self) -> dict[str, torch.Tensor]:
        return {k: v.sqrt().float().cpu() for k, v in self.sumsq.items()}


@contextlib.contextmanager
def input_norms(modules: dict[str, nn.Module]) -> Iterator[NormAccumulator]:
    """Accumulate input-feature squared norms of ``modules`` during forward passes in the block."""
    acc = NormAccumulator()
    handles = []
    try:
        for key, module in modules.items():
            handles.append(module.register_forward_pre_hook(acc.hook(key), with_kwargs=True))
        yield acc
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _block_calls(model: nn.Module, blocks: nn.ModuleList, windows: list[list[int]],
                 device: torch.device) -> list[list[BlockCall]]:
    """Per calibration batch, how the model calls each block (inputs of block 0 included)."""
    out = []
    for b in range(0, len(windows), BATCH):
        ids = torch.tensor(windows[b:b + BATCH], dtype=torch.long, device=device)
        out.append(block_calls(model, blocks, {"input_ids": ids}))
    return out


@torch.no_grad()
def layerwise_norms(model: nn.Module, blocks: nn.ModuleList, targets: list[Target], windows: list[list[int]],
                    prune_layer: Callable[[int, Norms], None] | None = None, progress: bool = False) -> Norms:
    """Input norms of every target, block by block; ``prune_layer(l, norms_of_l)`` prunes block l
    before its output is fed to block l + 1 (sequential Wanda)."""
    by_layer: dict[int, list[Target]] = {}
    for t in targets:
        by_layer.setdefault(t.layer, []).append(t)
    if not by_layer:
        return {}
    device = next(model.parameters()).device
    calls = _block_calls(model, blocks, windows, device)  # per batch, per block
    inputs = [c[0].hidden for c in calls]
    last = max(by_layer)
    out: Norms = {}
    for layer in tqdm(range(last + 1), desc="calibration", unit="layer", disable=not progress):
        block, here = blocks[layer], by_layer.get(layer, [])
        with input_norms({t.name: t.module for t in here}) as acc:
            hidden = [c[layer].run(block, x) for c, x in zip(calls, inputs)]  # dense output (the stats pass)
        layer_norms = {(layer, k): v for k, v in acc.norms().items()}
        out.update(layer_norms)
        if here and prune_layer is not None:
            prune_layer(layer, layer_norms)
            if layer < last:
                hidden = [c[layer].run(block, x) for c, x in zip(calls, inputs)]  # the pruned output feeds on
        inputs = hidden
    return out
