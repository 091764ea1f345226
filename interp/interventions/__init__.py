"""Interventions are values: frozen dataclasses that describe an edit, can be stored as
JSON, compared, and applied with ``with spec.apply(loaded): ...``. Applying never leaves
the model modified: every edit is undone in ``finally``.

Each study adds its own kinds (layer drops, pruning specs, head masks, directions) in
a module of this package and registers them with ``@register``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, cast

from interp.provenance import canonical_json, to_jsonable

if TYPE_CHECKING:
    import duckdb

    from interp.model.loading import Loaded


class ByProduct(Protocol):
    """Something applying an intervention made, yielded by ``apply`` (a prune report, a heal log):
    the sweep stores it with the point, before the point's scores, so a stored point has it."""

    def save(self, con: duckdb.DuckDBPyConnection, run_id: int, point: str) -> None:
        """Write it into the store (idempotent: replaces what the same point stored before)."""


def _has_save(x: object) -> bool:
    # nnsight (imported by the default capture backend) puts a ``save`` on ``object`` itself, so
    # getattr would find one on anything: look for a class of x's own, below object, defining it
    return any(callable(vars(k).get("save")) for k in type(x).__mro__ if k is not object)


def byproducts(made: object) -> list[ByProduct]:
    """What an ``apply`` yielded, as a list: nothing (None), one by-product, or a tuple of them."""
    if made is None:
        return []
    items: list[object] = list(made) if isinstance(made, (list, tuple)) else [made]
    bad = [type(x).__name__ for x in items if not _has_save(x)]
    if bad:
        raise TypeError(f"apply() yielded a {bad[0]}, which has no save(con, run_id, point): "
                        "yield by-products (interp.interventions.ByProduct) or nothing")
    return cast("list[ByProduct]", items)  # each has a save of its own class (checked above)


class Intervention(Protocol):
    kind: ClassVar[str]

    def apply(self, loaded: Loaded) -> contextlib.AbstractContextManager[object]:
        """Enter to edit the model; exit restores it exactly. Yields what applying made (by-products,
        see ``byproducts``) or None."""

    def label(self) -> str:
        """Short readable name used as the sweep point, e.g. 'drop[20-27]'."""


def first_layer(spec: Intervention, n_layers: int) -> int:
    """The first decoder block whose computation ``spec`` can change (``n_layers``: none). Blocks below
    it compute exactly what the unedited model computes, so a sweep may serve them from a cache
    (``interp.evals.prefix``). A kind declares it with ``first_layer(n_layers)``; kinds that do not
    (edits of the embedding, of every layer, or training) count as changing block 0."""
    fn = getattr(spec, "first_layer", None)
    return 0 if fn is None else max(0, min(n_layers, int(fn(n_layers))))


REGISTRY: dict[str, type[Intervention]] = {}

K = TypeVar("K", bound="type[Intervention]")


def register(cls: K) -> K:
    """Class decorator: make an intervention kind loadable from its stored JSON."""
    REGISTRY[cls.kind] = cls
    return cls


def describe(spec: Intervention) -> dict:
    """JSON-able description with its kind; stored in evals.intervention."""
    return {"kind": spec.kind, **to_jsonable(spec)}


def to_json(spec: Intervention) -> str:
    return canonical_json(describe(spec))


def _import_kinds() -> None:
    """Import every module of this package so all kinds are registered (for from_json)."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def from_json(text: str | dict) -> Intervention:
    data = json.loads(text) if isinstance(text, str) else dict(text)
    kind = data.pop("kind")
    if kind not in REGISTRY:
        _import_kinds()
    if kind not in REGISTRY:
        raise ValueError(f"unknown intervention kind '{kind}': known kinds are {', '.join(sorted(REGISTRY))}")
    cls: Any = REGISTRY[kind]  # a dataclass kind: its fields, or its own from_dict
    return cls.from_dict(data) if hasattr(cls, "from_dict") else cls(**data)


@register
@dataclass(frozen=True)
class Base:
    """No intervention: the unedited model, evaluated in every sweep as the baseline."""

    kind: ClassVar[str] = "base"

    @contextlib.contextmanager
    def apply(self, loaded: Loaded) -> Iterator[None]:
        yield

    def label(self) -> str:
        return "base"

    def first_layer(self, n_layers: int) -> int:
        return n_layers


@contextlib.contextmanager
def applied(loaded: Loaded, specs: list[Intervention]) -> Iterator[list[ByProduct]]:
    """Apply several interventions at once (innermost last); yields every by-product they made."""
    with contextlib.ExitStack() as stack:
        made = [b for spec in specs for b in byproducts(stack.enter_context(spec.apply(loaded)))]
        yield made
