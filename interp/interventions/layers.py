"""Layer dropping: run a model as if some decoder blocks were not there.

``skip_layers(loaded, [20, 21])`` takes the blocks out of the model's layer list for the
duration of the block, so the residual stream that enters a dropped layer passes straight
to the next kept layer (and the dropped layers cost no compute). The kept blocks are
renumbered for the KV cache: in transformers 5 every attention module writes its keys and
values to ``cache.layers[self.layer_idx]`` and the cache is sized from
``config.num_hidden_layers`` (and ``config.layer_types``), and generation reads the cached
length from cache layer 0, so the kept blocks get indices 0..k-1 and the config is told
there are k layers. That is exactly the model one would build by hand without those
layers, which the tests check for Llama and GPT-2, with and without the KV cache.

On exit (also on error) the original layer list, every ``layer_idx`` and the config are
put back; no parameter is ever touched, so the model is bit-identical afterwards.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, cast

from torch import nn

from interp.interventions import register
from interp.interventions.heal import HealCfg, HealLog, healed

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from interp.model.loading import Loaded

_CONFIG_FIELDS = ("num_hidden_layers", "layer_types")
"""Config attributes that describe the layer stack (per-layer lists are sliced to the kept layers)."""


class LayerDropError(ValueError):
    """A layer set that cannot be dropped: out of range, not whole numbers, or every layer."""


def check_layers(layers: Iterable, n_layers: int) -> tuple[int, ...]:
    """Sorted, de-duplicated layer indices, validated against a model with ``n_layers`` blocks."""
    out = set()
    for x in layers:
        try:
            if isinstance(x, bool):
                raise TypeError
            i = operator.index(x)
        except TypeError:
            raise LayerDropError(f"layer '{x}' is not a whole number: pass layer indices such as 20,21") from None
        if not 0 <= i < n_layers:
            raise LayerDropError(f"layer {i} out of range: this model has layers 0..{n_layers - 1}")
        out.add(i)
    if len(out) >= n_layers:
        raise LayerDropError(f"cannot drop all {n_layers} layers: keep at least one")
    return tuple(sorted(out))


def layer_label(layers: Iterable[int]) -> str:
    """Compact readable set: (3, 4, 5, 9) -> '3-5,9'."""
    xs = sorted(set(layers))
    parts, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(parts)


def _layer_list(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.ModuleList]:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    return parent, attr, getattr(parent, attr)


def _configs(model: nn.Module) -> list[PretrainedConfig]:
    """The config objects the forward pass and the cache read (the text config may be separate)."""
    cfg = cast("PretrainedConfig", model.config)  # a Hugging Face model's
    out = [cfg]
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    if text is not cfg:
        out.append(text)
    return out


@contextlib.contextmanager
def skip_layers(loaded: Loaded, layers: Iterable[int]) -> Iterator[None]:
    """Run without ``layers`` inside the block (forward passes and generation with the KV cache).

    Inside the block the model's layer list holds only the kept blocks, so hooks and
    layer indices address the pruned stack (kept block j is the j-th kept layer).
    """
    drop = check_layers(layers, loaded.n_layers)
    if not drop:
        yield
        return
    model = loaded.model
    parent, attr, original = _layer_list(model, loaded.arch.layers)
    kept = [i for i in range(len(original)) if i not in drop]
    saved_idx = [(m, m.layer_idx) for i in kept for m in original[i].modules()
                 if isinstance(getattr(m, "layer_idx", None), int)]
    saved_cfg = [(c, f, getattr(c, f)) for c in _configs(model) for f in _CONFIG_FIELDS
                 if getattr(c, f, None) is not None]
    try:
        for new, old in enumerate(kept):
            for m in original[old].modules():
                if isinstance(getattr(m, "layer_idx", None), int):
                    m.layer_idx = new  # type: ignore[assignment]  # torch types Module.__setattr__'s value as Tensor | Module
        for c, f, value in saved_cfg:
            if f == "num_hidden_layers":
                setattr(c, f, len(kept))
            elif isinstance(value, (list, tuple)) and len(value) == len(original):
                setattr(c, f, type(value)(value[i] for i in kept))
        setattr(parent, attr, nn.ModuleList([original[i] for i in kept]))  # same block objects
        yield
    finally:
        setattr(parent, attr, original)
        for m, idx in saved_idx:
            m.layer_idx = idx
        for c, f, value in saved_cfg:
            setattr(c, f, value)


@register
@dataclass(frozen=True)
class LayerDrop:
    """Drop a set of decoder blocks (their input passes straight to the next kept block)."""

    layers: tuple[int, ...]
    """Indices of the blocks to drop, 0-based; stored sorted and de-duplicated."""
    kind: ClassVar[str] = "layer_drop"

    def __post_init__(self) -> None:
        if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, Iterable):
            raise LayerDropError(f"layers must be a list of layer indices, not {self.layers!r}")
        object.__setattr__(self, "layers", check_layers(self.layers, n_layers=1 << 30))

    @classmethod
    def from_dict(cls, data: dict) -> LayerDrop:
        return cls(layers=tuple(data["layers"]))

    def label(self) -> str:
        return f"drop[{layer_label(self.layers)}]" if self.layers else "drop[]"

    def first_layer(self, n_layers: int) -> int:
        """Blocks below the first dropped one keep their place and their computation."""
        return min(self.layers, default=n_layers)

    @contextlib.contextmanager
    def apply(self, loaded: Loaded) -> Iterator[None]:
        with skip_layers(loaded, self.layers):
            yield


@register
@dataclass(frozen=True)
class HealedDrop:
    """Drop layers, then heal the pruned model with a LoRA fine-tune of its MLPs (undone on exit)."""

    layers: tuple[int, ...]
    """Indices of the blocks to drop, as in ``LayerDrop``."""
    heal: HealCfg
    """LoRA healing settings (steps, rank, learning rate, corpus and held-out evaluation windows)."""
    kind: ClassVar[str] = "layer_drop_healed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", LayerDrop(self.layers).layers)
        if isinstance(self.heal, dict):
            object.__setattr__(self, "heal", HealCfg(**self.heal))
        if not isinstance(self.heal, HealCfg):
            raise LayerDropError(f"heal must be a HealCfg, not {type(self.heal).__name__}")

    @classmethod
    def from_dict(cls, data: dict) -> HealedDrop:
        return cls(layers=tuple(data["layers"]), heal=HealCfg(**data["heal"]))

    def label(self) -> str:
        return f"{LayerDrop(self.layers).label()}+heal{self.heal.steps}"

    @contextlib.contextmanager
    def apply(self, loaded: Loaded) -> Iterator[HealLog]:
        """Yields the healing's training log and adapters (a by-product the sweep stores)."""
        with skip_layers(loaded, self.layers), healed(loaded, self.heal, progress=True) as made:
            yield made
