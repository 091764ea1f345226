"""Per-head gates on ``z`` (the per-head input of the attention output projection), and a
suffix runner that restarts the forward pass at a chosen layer.

``head_gates`` multiplies each head's output by a gate (and optionally replaces the gated
part by a fill vector): the one mechanism behind head masks, zero / mean ablation and the
gradient gates xi of Michel et al. (2019). Gates act on query heads, so grouped-query
models (several query heads per key/value head) are gated per query head; no
``head_mask`` argument is needed.

``Suffix`` caches every block's output from one clean forward pass, then runs only blocks
l..L-1 for each edit at layer l (through Hugging Face's forward, with the blocks below served
from the cache: the sweeps' prefix reuse). Ablating all heads of a deep layer costs a fraction
of a full forward pass; results equal the full forward pass (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from interp.evals.prefix import PrefixCache, PrefixCfg, batch_key, reuse
from interp.model import ops
from interp.model.hooks import SiteFn, _Stop, hooked
from interp.model.loading import Loaded
from interp.model.sites import Site


@dataclass(frozen=True)
class LayerGate:
    """Gates of one layer's heads."""

    gates: torch.Tensor | Callable[[], torch.Tensor]
    """(head,) for every row, or (rows, head) / (rows, pos, head) per batch row and token; or a
    function returning them at each forward pass (routers compute gates on the fly)."""
    fill: torch.Tensor | None = None
    """What a gate of 0 puts in: None (zero), (head, d_head) for all rows, or (rows, head, d_head)."""


def _site_fn(gate: LayerGate) -> SiteFn:
    def fn(z: torch.Tensor) -> torch.Tensor:  # z: (batch, pos, head, d_head)
        g = gate.gates() if callable(gate.gates) else gate.gates
        g = g.to(z.device)
        if g.dim() == 2:
            g = g[:, None, :]  # (rows, 1, head)
        fill = None if gate.fill is None else gate.fill.to(z.device)
        if fill is not None and fill.dim() == 3:
            fill = fill[:, None]  # (rows, 1, head, d_head)
        if g.dim() == 3 and g.shape[0] != z.shape[0]:
            raise ValueError(f"head gates have {g.shape[0]} rows but the batch has {z.shape[0]}")
        return ops.gate_heads(z, g, fill)
    return fn


@contextlib.contextmanager
def head_gates(loaded: Loaded, layers: dict[int, LayerGate]) -> Iterator[None]:
    """Apply per-head gates on ``z`` at the given layers during every forward pass inside."""
    for layer, gate in layers.items():
        if not 0 <= layer < loaded.n_layers:
            raise ValueError(f"layer {layer} out of range: this model has layers 0..{loaded.n_layers - 1}")
        if not callable(gate.gates) and gate.gates.shape[-1] != loaded.n_heads:
            raise ValueError(f"layer {layer} gates have {gate.gates.shape[-1]} heads, the model has {loaded.n_heads}")
    fns = {Site("z", layer): _site_fn(gate) for layer, gate in layers.items()}
    with hooked(loaded.model, loaded.arch, fns, loaded.n_heads):
        yield


def final_hidden(loaded: Loaded, kwargs: dict) -> torch.Tensor:
    """Final-norm output (batch, pos, d_model) of a forward pass of ``kwargs`` (whatever hooks are
    active); the pass stops there, so the unembedding runs only where the caller scores a position."""
    seen: dict[str, torch.Tensor] = {}

    def grab(_m: nn.Module, _args: tuple, out: torch.Tensor | tuple) -> None:
        seen["h"] = out[0] if isinstance(out, tuple) else out
        raise _Stop

    h = loaded.model.get_submodule(loaded.arch.final_norm).register_forward_hook(grab)
    try:
        loaded.model(**kwargs, use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    return seen["h"]


class Suffix:
    """Clean block outputs of one batch, and forward passes that start at any block.

    Outputs are final-norm hidden states; apply the unembedding only where a target is scored.

    ``run(layer, rows)`` runs the batch repeated ``rows // batch`` times (row r is batch row
    r % batch) with blocks ``0..layer-1`` served from the clean pass (``interp.evals.prefix``: the
    sweeps' prefix reuse, one mechanism), so several edits of the same layer share one wide forward
    pass that computes only blocks ``layer..L-1``. Edits come from hooks active around it.
    """

    def __init__(self, loaded: Loaded, kwargs: dict[str, torch.Tensor], cfg: PrefixCfg | None = None) -> None:
        self.loaded = loaded
        self.kwargs = {k: v.to(loaded.device) for k, v in kwargs.items()}  # the clean batch
        self.batch = kwargs["input_ids"].shape[0]
        self.cache = PrefixCache(cfg)
        key = batch_key(self.kwargs)
        if key is None:
            raise ValueError("a suffix runner needs a batch of token ids (input_ids, no KV cache, no embeddings)")
        self.key: str = key
        with torch.no_grad(), reuse(loaded, self.cache, loaded.n_layers):  # records every block's output
            self.final = final_hidden(loaded, self.kwargs).detach()
        """Final-norm output of the clean pass (batch, pos, d_model)."""

    @torch.no_grad()
    def run(self, layer: int, repeats: int) -> torch.Tensor:
        """Final-norm output (repeats * batch, pos, d_model) of blocks ``layer..`` onward."""
        rep = {k: v.repeat(repeats, *([1] * (v.dim() - 1))) for k, v in self.kwargs.items()}
        self.cache.alias(cast(str, batch_key(rep)), self.key, repeats)  # token ids like the clean batch: a key
        with reuse(self.loaded, self.cache, layer):
            return final_hidden(self.loaded, rep)

    def close(self) -> None:
        """Free the clean block outputs (and any scratch files) now rather than when collected."""
        self.cache.close()


def means_digest(means: torch.Tensor) -> str:
    """Content hash of head means (layer, head, d_head): their identity in stored head masks."""
    import hashlib

    h = hashlib.sha256(str(tuple(means.shape)).encode())
    h.update(means.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_means(means: torch.Tensor, directory: str | Path) -> str:
    """Write head means as ``means-<digest>.safetensors`` (content-addressed); returns the digest."""
    from safetensors.torch import save_file

    means = means.detach().float().contiguous().cpu()
    digest = means_digest(means)
    path = Path(directory) / f"means-{digest}.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"means": means}, str(tmp))
        tmp.replace(path)
    return digest


def load_means(digest: str, directory: str | Path) -> torch.Tensor:
    """Head means (layer, head, d_head) with this digest, checked against their content."""
    from safetensors.torch import load_file

    path = Path(directory) / f"means-{digest}.safetensors"
    if not path.exists():
        raise ValueError(f"head means {digest} not found in {directory}: re-run `invoke heads` "
                         "(they are also in the store table heads_means)")
    means = load_file(str(path))["means"]
    if means_digest(means) != digest:
        raise ValueError(f"head means file {path} does not match its digest {digest}: delete it and re-run")
    return means
