"""Per-head gates on ``z`` (the per-head input of the attention output projection), and a
suffix runner that restarts the forward pass at a chosen layer.

``head_gates`` multiplies each head's output by a gate (and optionally replaces the gated
part by a fill vector): the one mechanism behind head masks, zero / mean ablation and the
gradient gates xi of Michel et al. (2019). Gates act on query heads, so grouped-query
models (several query heads per key/value head) are gated per query head; no
``head_mask`` argument is needed.

``Suffix`` caches every block's input from one clean forward pass, then runs only blocks
l..L-1 for each edit at layer l. Ablating all heads of a deep layer costs a fraction of a
full forward pass; results equal the full forward pass (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from interp.model import ops
from interp.model.hooks import BlockCall, block_calls, hooked
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


def _site_fn(gate: LayerGate):
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


def _first(out):
    return out[0] if isinstance(out, tuple) else out


class Suffix:
    """Clean block inputs of one batch, and forward passes that start at any block.

    Outputs are final-norm hidden states; apply the unembedding only where a target is scored.

    ``run(layer, rows)`` runs blocks ``layer..L-1`` on the clean input of ``layer``
    repeated ``rows // batch`` times (row r is batch row r % batch), so several edits of
    the same layer share one wide forward pass. Edits come from hooks active around it.
    """

    def __init__(self, loaded: Loaded, kwargs: dict):
        self.loaded = loaded
        self.kwargs = {k: v.to(loaded.device) for k, v in kwargs.items()}  # the clean batch
        self.batch = kwargs["input_ids"].shape[0]
        self.inputs: list[torch.Tensor] = []  # block inputs (batch, pos, d_model), per layer
        self._calls: dict[int, list[BlockCall]] = {}  # repeats -> how each block is called
        self.final = self._clean()
        """Final-norm output of the clean pass (batch, pos, d_model)."""

    def _blocks(self):
        return self.loaded.model.get_submodule(self.loaded.arch.layers)

    @torch.no_grad()
    def _clean(self) -> torch.Tensor:
        """One plain forward pass: records every block's input; returns the final-norm output."""
        handles, seen = [], {}

        def grab(_m, args, kwargs):
            self.inputs.append((args[0] if args else kwargs["hidden_states"]).detach())

        def grab_final(_m, _args, out):
            seen["final"] = _first(out).detach()

        try:
            for blk in self._blocks():
                handles.append(blk.register_forward_pre_hook(grab, with_kwargs=True))
            norm = self.loaded.model.get_submodule(self.loaded.arch.final_norm)
            handles.append(norm.register_forward_hook(grab_final))
            self.loaded.model(**self.kwargs, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return seen["final"]

    def _block_calls(self, repeats: int) -> list[BlockCall]:
        """How each block is called (masks, rotary embeddings: they can differ per block) for the
        batch repeated ``repeats`` times."""
        if repeats not in self._calls:
            rep = {k: v.repeat(repeats, *([1] * (v.dim() - 1))) for k, v in self.kwargs.items()}
            self._calls[repeats] = block_calls(self.loaded.model, self._blocks(), rep)
        return self._calls[repeats]

    @torch.no_grad()
    def run(self, layer: int, repeats: int) -> torch.Tensor:
        """Final-norm output (repeats * batch, pos, d_model) of blocks ``layer..`` onward."""
        calls = self._block_calls(repeats)
        h = self.inputs[layer].repeat(repeats, 1, 1)
        blocks = self._blocks()
        for i in range(layer, len(blocks)):
            h = calls[i].run(blocks[i], h)
        return _first(self.loaded.model.get_submodule(self.loaded.arch.final_norm)(h))


def means_digest(means: torch.Tensor) -> str:
    """Content hash of head means (layer, head, d_head): their identity in stored head masks."""
    import hashlib

    h = hashlib.sha256(str(tuple(means.shape)).encode())
    h.update(means.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_means(means: torch.Tensor, directory) -> str:
    """Write head means as ``means-<digest>.safetensors`` (content-addressed); returns the digest."""
    from pathlib import Path

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


def load_means(digest: str, directory) -> torch.Tensor:
    """Head means (layer, head, d_head) with this digest, checked against their content."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(directory) / f"means-{digest}.safetensors"
    if not path.exists():
        raise ValueError(f"head means {digest} not found in {directory}: re-run `invoke heads` "
                         "(they are also in the store table heads_means)")
    means = load_file(str(path))["means"]
    if means_digest(means) != digest:
        raise ValueError(f"head means file {path} does not match its digest {digest}: delete it and re-run")
    return means
