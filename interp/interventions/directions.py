"""Edits along one residual-stream direction: directional ablation (hooks), the same edit made
permanent by orthogonalising the weights that write to the residual stream, and activation
addition at one layer.

All three are values (frozen dataclasses holding the direction as floats), so a sweep point
stored in ``evals.intervention`` rebuilds exactly with ``interventions.from_json``. Applying
never leaves the model modified: hooks are removed and original parameters put back in
``finally``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import nn

from interp.interventions import register
from interp.model import ops
from interp.model.hooks import hooked
from interp.model.sites import Site, block
from interp.provenance import LATER

if TYPE_CHECKING:
    from interp.model.loading import Loaded



class DirectionError(ValueError):
    """A direction that cannot be used: empty, not finite, zero, or the wrong width."""


def _as_tuple(direction: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(x) for x in (direction.tolist() if hasattr(direction, "tolist") else direction))


def _check_direction(direction: tuple[float, ...]) -> None:
    if not direction:
        raise DirectionError("direction is empty: pass one float per model dimension")
    if not all(math.isfinite(x) for x in direction):
        raise DirectionError("direction has NaN or infinite values: recompute it from finite activations")
    if math.fsum(x * x for x in direction) == 0.0:
        raise DirectionError("direction has zero norm: the two classes have the same mean here")


def unit_direction(direction: Sequence[float], loaded: Loaded) -> torch.Tensor:
    """The direction as a unit float32 vector on the model's device, after a width check."""
    r = torch.tensor(direction, dtype=torch.float64)
    if r.shape[0] != loaded.d_model:
        raise DirectionError(f"direction has {r.shape[0]} values but {loaded.name} has d_model {loaded.d_model}: "
                             "use a direction computed from this model's activations")
    return ops.unit(r).to(torch.float32).to(loaded.device)


def _from_dict(cls: type[Any], data: dict) -> Any:  # an instance of cls (shared by three kinds)
    return cls(**{**data, "direction": tuple(data["direction"])})


@register
@dataclass(frozen=True)
class DirectionalAblation:
    """Remove the component along ``direction`` from the residual stream entering every block
    and from every attention and MLP output: x <- x - (x . r^) r^ at all positions."""

    direction: tuple[float, ...]
    """The direction (any norm; it is normalised when applied), one float per model dimension."""
    name: str = "direction"
    """Readable name used in the point label, e.g. 'harmful@resid_pre12/last'."""
    kind: ClassVar[str] = "direction_ablation"

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", _as_tuple(self.direction))
        _check_direction(self.direction)

    from_dict = classmethod(_from_dict)

    def label(self) -> str:
        return f"ablate[{self.name}]"

    def sites(self, n_layers: int) -> list[Site]:
        return [Site(h, l) for l in range(n_layers) for h in ("resid_pre", "attn_out", "mlp_out")]

    @contextlib.contextmanager
    def apply(self, loaded: Loaded) -> Iterator[None]:
        r = unit_direction(self.direction, loaded)
        fn = lambda h: ops.project_out(h, r.to(h.device))  # noqa: E731
        with hooked(loaded.model, loaded.arch, {s: fn for s in self.sites(loaded.n_layers)}, loaded.n_heads):
            yield


def residual_writers(loaded: Loaded) -> list[tuple[str, nn.Module]]:
    """(path, module) of every module whose weights write to the residual stream: the token and
    position embeddings and every block's attention and MLP output projections (in post-norm
    families these write through the post-sublayer norm, see ``writer_directions``)."""
    model, arch = loaded.model, loaded.arch
    paths = [arch.embed, *([arch.pos_embed] if arch.pos_embed else [])]
    for l in range(loaded.n_layers):
        paths += [f"{arch.layers}.{l}.{arch.o_proj}", f"{arch.layers}.{l}.{arch.proj['down']}"]
    return [(p, model.get_submodule(p)) for p in paths]


def _effective_scale(loaded: Loaded, norm: nn.Module) -> torch.Tensor:
    """The elementwise scale an RMSNorm applies after normalising: weight (+1 in the Gemma family)."""
    if getattr(norm, "bias", None) is not None:
        raise DirectionError(f"{type(norm).__name__} after a sublayer has a bias: the weight edit cannot remove "
                             "the direction exactly here; use DirectionalAblation")
    return cast(torch.Tensor, norm.weight).detach().to(torch.float64) + loaded.arch.norm_offset


def writer_directions(loaded: Loaded, r: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    """(module, unit direction to remove from its output) for every residual writer.

    Where the output passes through a post-sublayer RMSNorm with effective scale g before the
    residual add (Gemma 2/3, OLMo 2), the norm's output is g * u / rms(u); its component along r
    is (g * r) . u / rms(u), which is zero for every token exactly when u has no component along
    g * r. So those projections lose the direction g * r (normalised), not r.
    """
    arch, model = loaded.arch, loaded.model
    out = [(model.get_submodule(p), r) for p in [arch.embed, *([arch.pos_embed] if arch.pos_embed else [])]]
    for layer in range(loaded.n_layers):
        blk = block(model, arch, layer)
        for proj, norm in ((arch.o_proj, arch.post_attn_norm), (arch.proj["down"], arch.post_mlp_norm)):
            d = r if norm is None else ops.unit(_effective_scale(loaded, blk.get_submodule(norm)) * r.double())
            out.append((blk.get_submodule(proj), d.to(r.dtype)))
    return out


def _orthogonal_params(module: nn.Module, r: torch.Tensor) -> dict[str, torch.Tensor]:
    """New weight (and bias) of ``module`` whose outputs have no component along unit ``r``.

    nn.Linear stores (out, in): its output space is the rows' index, so W <- (I - r r^T) W.
    Embeddings and GPT-2 Conv1D store output vectors as rows: W <- W (I - r r^T).
    Computed in float32 (or wider) and cast back to the parameter's dtype.
    """
    w = cast(torch.Tensor, module.weight)
    work = w.detach().to(torch.promote_types(w.dtype, torch.float32))
    ru = r.to(work.device, work.dtype)
    if isinstance(module, nn.Linear):
        new = {"weight": ops.orthogonalize_rows(work, ru)}
    else:
        if work.shape[-1] != ru.shape[0]:
            raise DirectionError(f"cannot orthogonalise {type(module).__name__} with weight {tuple(w.shape)}: "
                                 f"its rows are not d_model={ru.shape[0]} vectors")
        new = {"weight": ops.project_out(work, ru)}
    if getattr(module, "bias", None) is not None:
        new["bias"] = ops.project_out(cast(torch.Tensor, module.bias).detach().to(work.dtype), ru)
    return {k: v.to(getattr(module, k).dtype) for k, v in new.items()}


def _tied(loaded: Loaded) -> bool:
    head = cast(torch.Tensor, loaded.model.get_submodule(loaded.arch.lm_head).weight)
    embed = cast(torch.Tensor, loaded.model.get_submodule(loaded.arch.embed).weight)
    return head is embed or head.data_ptr() == embed.data_ptr()


@register
@dataclass(frozen=True)
class OrthogonalizedWeights:
    """Directional ablation made a weight edit: the token embedding (and position embedding,
    where there is one) and every attention and MLP output projection are orthogonalised
    to ``direction``, so nothing written to the residual stream has a component along it.

    With tied input/output embeddings (SmolLM2, the tiny test Llama) only the input side is
    edited: the unembedding keeps the original matrix (the tie is undone while applied and
    restored on exit), so the output vocabulary projection does not change.

    Post-norm families (Gemma 2/3, OLMo 2) normalise each sublayer output and scale it by the
    norm's weight g before the residual add; there the projections lose g * r instead of r
    (``writer_directions``), which still leaves zero r-component in every residual state. It
    is then not the same edit as ``DirectionalAblation``: ablation removes r after the norm,
    while here the norm sees the edited output, so its per-token scale 1 / rms(u) changes too
    (other components of what the sublayer adds change in size). The two are separate sweep
    points; in pre-norm and parallel families they agree to float rounding.
    """

    direction: tuple[float, ...]
    """The direction (any norm; normalised when applied), one float per model dimension."""
    name: str = "direction"
    """Readable name used in the point label."""
    kind: ClassVar[str] = "direction_orthogonalized"

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", _as_tuple(self.direction))
        _check_direction(self.direction)

    from_dict = classmethod(_from_dict)

    def label(self) -> str:
        return f"orth[{self.name}]"

    @contextlib.contextmanager
    def apply(self, loaded: Loaded) -> Iterator[None]:
        r = unit_direction(self.direction, loaded)
        saved: list[tuple[nn.Module, str, nn.Parameter]] = []
        try:
            with torch.no_grad():
                for module, d in writer_directions(loaded, r):
                    for attr, value in _orthogonal_params(module, d).items():
                        saved.append((module, attr, getattr(module, attr)))
                        # A new Parameter object: the original tensor (and anything tied to it,
                        # such as a tied lm_head) is never written to.
                        setattr(module, attr, nn.Parameter(value, requires_grad=False))
            yield
        finally:
            for module, attr, param in reversed(saved):
                setattr(module, attr, param)


def orthogonalize_model(loaded: Loaded, direction: Sequence[float]) -> None:
    """Permanently orthogonalise ``loaded``'s residual writers to ``direction`` (for saving an
    edited model). Tied embeddings are untied first: the lm_head gets its own copy of the
    original matrix and ``config.tie_word_embeddings`` is set to False, so the output
    projection stays exactly as it was."""
    r = unit_direction(_as_tuple(direction), loaded)
    model = loaded.model
    with torch.no_grad():
        if _tied(loaded):
            head = model.get_submodule(loaded.arch.lm_head)
            head.weight = nn.Parameter(cast(torch.Tensor, head.weight).detach().clone(), requires_grad=False)
            loaded.config.tie_word_embeddings = False
            if hasattr(loaded.config, "get_text_config"):
                loaded.config.get_text_config().tie_word_embeddings = False
        for module, d in writer_directions(loaded, r):
            for attr, value in _orthogonal_params(module, d).items():
                getattr(module, attr).copy_(value)


ADD_HOOKS = ("resid_pre", "resid_post", "attn_out", "mlp_out")
POSITIONS = ("all", "prompt", "generated")
"""Where steering acts: every token; only the forward pass that reads the prompt; only the passes that
generate after it (those that find the KV cache already holding tokens)."""


@contextlib.contextmanager
def _phase(model: nn.Module) -> Iterator[dict]:
    """Tracks whether the model's current forward pass reads a prompt (an empty or no KV cache) or
    generates after one (``state['generated']``); the hook is removed on exit."""
    state = {"generated": False}

    def pre(_module: nn.Module, _args: tuple, kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("past_key_values", kwargs.get("cache"))  # transformers 5 names it `cache`
        state["generated"] = bool(cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0)

    handle = model.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield state
    finally:
        handle.remove()


@register
@dataclass(frozen=True)
class ActivationAddition:
    """x <- x + alpha * scale * r^ at one site (every position); alpha < 0 subtracts.

    ``scale`` fixes the unit of ``alpha``: with scale = |mean(harmful) - mean(neutral)| at that
    layer, alpha = 1 adds exactly the class-mean difference.
    """

    direction: tuple[float, ...]
    """The direction (any norm; normalised when applied), one float per model dimension."""
    layer: int
    """Block index of the site."""
    alpha: float
    """Coefficient in units of ``scale``; 0 leaves the model unchanged."""
    scale: float = 1.0
    """Length of alpha = 1 in residual-stream units."""
    hook: str = "resid_pre"
    """resid_pre (input of the block), resid_post, attn_out or mlp_out."""
    name: str = "direction"
    """Readable name used in the point label."""
    more_layers: tuple[int, ...] = field(default=(), metadata=LATER)
    """Further blocks steered at the same hook with the same vector (several layers at once)."""
    positions: str = field(default="all", metadata=LATER)
    """Which tokens are steered: all, prompt (the pass that reads the prompt) or generated (the passes
    that generate after it; a plain forward such as perplexity's is then unchanged)."""
    kind: ClassVar[str] = "activation_addition"

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", _as_tuple(self.direction))
        _check_direction(self.direction)
        if self.hook not in ADD_HOOKS:
            raise DirectionError(f"activation addition hook '{self.hook}' is not one of {', '.join(ADD_HOOKS)}")
        if self.layer < 0:
            raise DirectionError(f"layer must be >= 0, not {self.layer}")
        if not (math.isfinite(self.alpha) and math.isfinite(self.scale)) or self.scale <= 0:
            raise DirectionError(f"alpha must be finite and scale positive (got alpha={self.alpha}, "
                                 f"scale={self.scale})")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "scale", float(self.scale))
        more = tuple(sorted({int(l) for l in self.more_layers} - {self.layer}))
        if any(l < 0 for l in more):
            raise DirectionError(f"layers must be >= 0, not {min(more)}")
        object.__setattr__(self, "more_layers", more)
        if self.positions not in POSITIONS:
            raise DirectionError(f"steering positions '{self.positions}' is not one of {', '.join(POSITIONS)}")

    from_dict = classmethod(_from_dict)

    @property
    def layers(self) -> tuple[int, ...]:
        """Every steered block."""
        return tuple(sorted({self.layer, *self.more_layers}))

    def label(self) -> str:
        where = "" if not self.more_layers else f" @{','.join(map(str, self.layers))}"
        only = "" if self.positions == "all" else f" {self.positions}"
        return f"actadd[{self.name} {self.alpha:+g}{where}{only}]"

    def first_layer(self, n_layers: int) -> int:
        """Every site of block ``layer`` (its input, its sublayers' outputs, its output) is hooked on
        that block, which must therefore run; the blocks below it are untouched."""
        return self.layer

    @contextlib.contextmanager
    def apply(self, loaded: Loaded) -> Iterator[None]:
        if max(self.layers) >= loaded.n_layers:
            raise DirectionError(f"layer {max(self.layers)} out of range: {loaded.name} has layers "
                                 f"0..{loaded.n_layers - 1}")
        r = unit_direction(self.direction, loaded) * self.scale
        with _phase(loaded.model) as phase:
            def fn(h: torch.Tensor) -> torch.Tensor | None:
                if self.positions != "all" and phase["generated"] != (self.positions == "generated"):
                    return None
                return ops.add(h, r.to(h.device), self.alpha)

            with hooked(loaded.model, loaded.arch, {Site(self.hook, l): fn for l in self.layers}, loaded.n_heads):
                yield
