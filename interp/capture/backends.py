"""Hooking backends that read sites during a forward pass: TransformerLens, nnsight, plain torch.

``with open_backend(loaded, "tl") as backend: backend.run(batch, sites, sink)`` calls
``sink(site, tensor)`` once per site with the (batch, pos, ...) activation; ``z`` comes as
(batch, pos, head, d_head). The model is restored exactly on exit.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, cast

import torch
from torch.utils.hooks import RemovableHandle

from interp.capture.batching import Batch
from interp.model.hooks import SiteFn, hooked
from interp.model.loading import Loaded
from interp.model.sites import HOOKS, Site, block

if TYPE_CHECKING:
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel

Sink = Callable[[Site, torch.Tensor], None]
BACKENDS = ("tl", "nnsight", "torch", "ndif")
"""tl: TransformerLens TransformerBridge; nnsight: nnsight TransformersModel; torch: plain module hooks;
ndif: nnsight remote execution on an NDIF server (needs network and an API key, see NNsightBackend)."""


class _Stop(Exception):
    """Ends a forward pass once the last requested block has run."""


def _stop_after(block: torch.nn.Module) -> RemovableHandle:
    """Hook that ends the forward pass after ``block``: every backend stops there, so the blocks
    above the last site and the unembedding (most of the work for a 262k vocabulary) never run."""
    def hook(_m: torch.nn.Module, _args: tuple, _out: object) -> NoReturn:
        raise _Stop
    return block.register_forward_hook(hook)


class TorchBackend:
    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded

    def run(self, batch: Batch, sites: list[Site], sink: Sink) -> None:
        fns: dict[Site, SiteFn] = {s: partial(sink, s) for s in sites}
        last = block(self.loaded.model, self.loaded.arch, max(s.layer for s in sites))
        with torch.no_grad(), hooked(self.loaded.model, self.loaded.arch, fns, self.loaded.n_heads):
            handle = _stop_after(last)  # registered after the site hooks, so they run first
            try:
                self.loaded.model(**batch.model_kwargs(), use_cache=False)
            except _Stop:
                pass
            finally:
                handle.remove()


class TLBackend:
    def __init__(self, bridge: TransformerBridge) -> None:
        self.bridge = bridge

    def run(self, batch: Batch, sites: list[Site], sink: Sink) -> None:
        def make(site: Site) -> Callable[[torch.Tensor, HookPoint], torch.Tensor]:
            def hook(x: torch.Tensor, hook: HookPoint) -> torch.Tensor:  # noqa: ARG001 - TransformerLens passes the HookPoint
                sink(site, x)
                return x
            return hook

        # TransformerLens's stop_at_layer never stops after the last block (it counts blocks
        # started), so a capture of the last layer ran the final norm and the unembedding too
        # (most of the tl backend's extra cost over the others, BENCHMARKS.md section 11): stop
        # after the last site's block as the other backends do. run_with_hooks removes its
        # hooks in a finally, so the exception leaves nothing behind.
        handle = _stop_after(self.bridge.blocks[max(s.layer for s in sites)])
        try:
            with torch.no_grad():
                self.bridge.run_with_hooks(
                    batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    fwd_hooks=[(s.tl_name, make(s)) for s in sites], use_cache=False,
                )
        except _Stop:
            pass
        finally:
            handle.remove()


def _walk(obj: Any, path: str) -> Any:  # nnsight's envoys carry no types
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# Execution order of the sites inside one block, which nnsight requires.
_ORDER = {"resid_pre": 0, "z": 1, "attn_out": 2, "mlp_out": 3, "resid_post": 4}


class NNsightBackend:
    """nnsight tracing, locally or remotely.

    ``remote=True`` ships each trace to NDIF (``nnsight.CONFIG.set_default_api_key(KEY)``
    or ``NDIF_API_KEY``; host ``CONFIG.API.HOST``) and runs it on the server's copy of the
    hub checkpoint ``loaded.name`` at ``loaded.revision`` (a commit hash; anything else
    means the default branch), so the local model only provides the module tree and the
    tokenizer. ``remote="local"`` is nnsight's dry run of that path: the trace is
    serialised and deserialised exactly as for the server, then run in-process.
    """

    def __init__(self, loaded: Loaded, remote: bool | str = False) -> None:
        from nnsight import TransformersModel

        self.loaded, self.remote = loaded, remote
        self.lm = TransformersModel(loaded.model, tokenizer=loaded.tokenizer, task="text-generation")
        if remote and remote != "local":
            import os
            import re

            from nnsight import CONFIG

            if os.environ.get("NDIF_API_KEY"):
                CONFIG.set_default_api_key(os.environ["NDIF_API_KEY"])
            self.lm.repo_id = loaded.name  # the server names checkpoints by hub id
            self.lm.revision = loaded.revision if re.fullmatch(r"[0-9a-f]{40}", loaded.revision) else None

    def _proxy(self, site: Site) -> Any:
        """The value at a site: a block's input/output or a submodule's (inside a trace, where
        nnsight serves real tensors). Modules that return tuples give their first element."""
        arch = self.loaded.arch
        blk = _walk(self.lm, arch.layers)[site.layer]
        if site.hook == "resid_pre":
            return blk.input
        if site.hook == "z":
            return _walk(blk, arch.o_proj).input
        module = blk if site.hook == "resid_post" else _walk(blk, arch.attn_out if site.hook == "attn_out"
                                                             else arch.mlp_out)
        out = module.output
        return out[0] if isinstance(out, tuple) else out

    def run(self, batch: Batch, sites: list[Site], sink: Sink) -> None:
        ordered = sorted(sites, key=lambda s: (s.layer, _ORDER[s.hook]))
        saved = []
        remote = {"remote": self.remote} if self.remote else {}
        try:
            with torch.no_grad(), self.lm.trace(batch.model_kwargs(), use_cache=False, **remote) as tracer:
                for site in ordered:
                    value = self._proxy(site)
                    if site.hook == "mlp_out" and self.loaded.arch.inplace_mlp:
                        value = value.clone()  # the block adds attention into it in place afterwards
                    saved.append(value.save())
                tracer.stop()  # nothing after the last site runs (later blocks, the unembedding)
        except Exception as e:  # no network, host down, hub unreachable, job refused by the server
            if not self.remote or self.remote == "local":
                raise
            from nnsight import CONFIG

            first = str(e).splitlines()[0] if str(e) else ""
            raise RuntimeError(f"remote nnsight run of {self.loaded.name} on {CONFIG.API.HOST} failed "
                               f"({type(e).__name__}: {first}): remote execution needs network access, "
                               "an NDIF API key (NDIF_API_KEY) and a model NDIF hosts") from None
        scale = self.loaded.arch.residual_scale
        for site, value in zip(ordered, saved):
            if site.hook == "z":
                value = value.view(*value.shape[:-1], self.loaded.n_heads, self.loaded.d_head)
            elif site.hook in ("attn_out", "mlp_out") and scale != 1.0:
                value = value * scale  # what the block adds to the residual (Granite)
            sink(site, value)


Children = dict[torch.nn.Module, dict[str, torch.nn.Module | None]]
"""Each module -> its named children (``module._modules``)."""
Tree = tuple[tuple[int, tuple[tuple[str, int], ...]], ...]
"""A module tree by object ids: (module id, ((child name, child id), ...)) per module."""


@dataclass
class _Booted:
    bridge: TransformerBridge
    tree: Tree          # the plain model's module tree the bridge wrapped (object ids, kept alive below)
    bridged: Children   # module -> its children while the bridge is on
    attn_impl: str | None


def _tree(children: Children) -> Tree:
    return tuple((id(m), tuple((k, id(c)) for k, c in kids.items())) for m, kids in children.items())


@contextlib.contextmanager
def own_forwards(model: torch.nn.Module) -> Iterator[None]:
    """Put back every module's instance-level ``forward`` on exit: nnsight wraps each module's
    forward when it wraps a model, and some TransformerLens adapters patch forwards at boot
    (Falcon's linear and decoder layers). The class's own forward runs again afterwards."""
    own = {m: {k: vars(m).get(k) for k in _PATCHED} for m in model.modules()}
    try:
        yield
    finally:
        for m, attrs in own.items():
            for k, value in attrs.items():
                if value is None:
                    vars(m).pop(k, None)
                else:
                    setattr(m, k, value)


_PATCHED = ("forward", "__nnsight__")
"""Instance attributes wrappers set on modules: the forward, and nnsight's per-module state (left
behind, it makes the next nnsight wrapper of the same model think its forward was replaced and
refuse every site with OutOfOrderError)."""


@contextlib.contextmanager
def transformer_bridge(loaded: Loaded) -> Iterator[TransformerBridge]:
    """A TransformerBridge around the loaded model, undone on exit.

    Booting a bridge swaps the HF model's submodules for wrappers and forces eager
    attention; we snapshot every module's children and the attention implementation and
    put them back, so the plain model is exactly as before. Booting takes about half a
    second, so the bridge is kept on ``loaded`` and put back on at the next use, as long as
    the model's module tree is still the one it wrapped (an intervention that swapped a
    module makes a fresh boot).
    """
    model = cast("PreTrainedModel", loaded.model)  # a Hugging Face model (set_attn_implementation)
    plain: Children = {m: dict(m._modules) for m in model.modules()}
    attn_impl = getattr(model.config, "_attn_implementation", None)
    booted = loaded.bridge_cache
    try:
        if isinstance(booted, _Booted) and booted.tree == _tree(plain):
            for module, kids in booted.bridged.items():
                module._modules.clear()
                module._modules.update(kids)
            if booted.attn_impl is not None and booted.attn_impl != attn_impl:
                model.set_attn_implementation(booted.attn_impl)
            yield booted.bridge
        else:
            bridge = _boot(loaded)
            loaded.bridge_cache = _Booted(bridge, _tree(plain), {m: dict(m._modules) for m in plain},
                                          getattr(model.config, "_attn_implementation", None))
            yield bridge
    finally:
        for module, kids in plain.items():
            module._modules.clear()
            module._modules.update(kids)
        if attn_impl is not None and getattr(model.config, "_attn_implementation", None) != attn_impl:
            model.set_attn_implementation(attn_impl)


TL_REFUSED = {
    ("falcon", "new_decoder_architecture"): (
        "transformer-lens 4.3's Falcon adapter splits the new decoder architecture's fused qkv as "
        "[q | k | v], but the model groups it per key/value head"),
}
"""(family, config flag that is true) -> why the tl backend would capture wrong values there."""


def _tl_refusal(loaded: Loaded) -> str | None:
    for (family, flag), why in TL_REFUSED.items():
        if loaded.arch.family == family and getattr(loaded.config, flag, False):
            return f"the tl backend cannot capture {loaded.name}: {why}; use --backend nnsight or torch"
    return None


def _boot(loaded: Loaded) -> TransformerBridge:
    from transformer_lens.model_bridge import TransformerBridge

    if (why := _tl_refusal(loaded)) is not None:
        raise ValueError(why)
    model = loaded.model
    # The bridge re-loads the tokenizer by name (a hub or disk round trip) unless it already
    # adds BOS. We always pass token ids, so give it a copy marked that way.
    tokenizer = copy.deepcopy(loaded.tokenizer)
    tokenizer.init_kwargs["add_bos_token"] = True
    tokenizer.init_kwargs.setdefault("name_or_path", loaded.name)
    # The adapter is picked by the model's class (a config built in code has no
    # ``architectures``), the same adapter interp.model.families read the site table from.
    return TransformerBridge.boot_transformers(
        loaded.name, hf_model=model, tokenizer=tokenizer, dtype=next(model.parameters()).dtype,
        hf_config_overrides={"architectures": [type(model).__name__]},
    )


@contextlib.contextmanager
def open_backend(loaded: Loaded, name: str) -> Iterator[TorchBackend | TLBackend | NNsightBackend]:
    if name == "tl":
        with own_forwards(loaded.model), transformer_bridge(loaded) as bridge:
            yield TLBackend(bridge)
    elif name in ("nnsight", "ndif"):
        with own_forwards(loaded.model):
            yield NNsightBackend(loaded, remote=name == "ndif")
    elif name == "torch":
        yield TorchBackend(loaded)
    else:
        raise ValueError(f"unknown backend '{name}': use one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "HOOKS", "open_backend", "transformer_bridge"]
