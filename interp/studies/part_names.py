"""How a study config names, fills and flattens its parts (interp.studies.parts).

``Where`` names a part's key as the user wrote it (``[layers.heal] rank (--heal-rank)``); ``flat_values`` gives a
config back under the flat names its settings had before the parts existed (the flags, the run identity);
``fill_parts`` fills what a budget sets; ``check_parts`` checks each part's type and that fields the study has no
setting for stay at their defaults. A study config declares ``STUDY``, ``FLAT`` (flat name -> (part, field)) and,
for a flag named otherwise, ``FLAG_NAMES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

from interp.validate import InvalidValue, key_name, refuse

Flat = Mapping[str, tuple[str, str]]
"""A study's flat setting names (its flags) -> (part, field of the part)."""


@dataclass(frozen=True)
class Where:
    """How one study names the keys of one of its parts in errors: the TOML table and each key's flag."""

    table: str
    """The nested table, e.g. 'layers.heal'."""
    flags: Mapping[str, str]
    """Part field -> the study's flag for it ('--heal-rank'); a field without one is named by its table alone."""

    def key(self, name: str) -> str:
        return key_name(name, self.flags.get(name), table=self.table)

    def refuse(self, name: str, accepts: str, value: object, choices: tuple[str, ...] = ()) -> InvalidValue:
        return refuse(name, accepts, value, choices, flag=self.flags.get(name), table=self.table)


def where(cfg: object, part: str) -> Where:
    """The naming of ``part``'s keys for the study config ``cfg`` (its STUDY, FLAT and FLAG_NAMES)."""
    cls = type(cfg)
    shown: Mapping[str, str] = getattr(cls, "FLAG_NAMES", {})
    flags = {k: "--" + shown.get(n, n).replace("_", "-") for n, (p, k) in cls.FLAT.items() if p == part}  # type: ignore[attr-defined]
    return Where(f"{cls.STUDY}.{part}", flags)  # type: ignore[attr-defined]


def flat_values(cfg: object) -> dict[str, Any]:
    """``cfg``'s fields with each part spread under the study's flat names (the keys the run identity had
    before the parts existed)."""
    flat: Flat = type(cfg).FLAT  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    parts = {p for p, _ in flat.values()}
    for f in fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        if f.name in parts:
            out.update({n: getattr(value, k) for n, (p, k) in flat.items() if p == f.name})
        else:
            out[f.name] = value
    return out


def default_part(cls: type, name: str) -> Any:  # noqa: ANN401 (one of the part types)
    """The study's default value of its part ``name`` (its ``default_factory``: defaults differ per study)."""
    f = next(f for f in fields(cls) if f.name == name)
    return f.default_factory() if callable(f.default_factory) else f.default


def flat_defaults(cls: type) -> dict[str, Any]:
    """The defaults of a study's flat part settings (its parts' ``default_factory`` values)."""
    flat: Flat = cls.FLAT  # type: ignore[attr-defined]
    parts = {p: default_part(cls, p) for p, _ in flat.values()}
    return {n: getattr(parts[p], k) for n, (p, k) in flat.items()}


def fill_parts(cfg: object, budget: Mapping[str, object]) -> None:
    """Fill the settings ``cfg`` leaves as None from a budget's flat table (own fields and FLAT names alike)."""
    flat: Flat = type(cfg).FLAT  # type: ignore[attr-defined]
    parts: dict[str, dict[str, object]] = {}
    for name, value in budget.items():
        part, key = flat.get(name, (None, name))
        holder = cfg if part is None else getattr(cfg, part)
        if getattr(holder, key) is None:
            if part is None:
                object.__setattr__(cfg, key, value)
            else:
                parts.setdefault(part, {})[key] = value
    for part, values in parts.items():
        object.__setattr__(cfg, part, replace(getattr(cfg, part), **values))


def check_parts(cfg: object) -> None:
    """Each part is of its type, and a part field the study has no setting for is left at its default."""
    cls = type(cfg)
    for f in fields(cfg):  # type: ignore[arg-type]
        if not callable(f.default_factory):
            continue
        default, value = f.default_factory(), getattr(cfg, f.name)
        if not is_dataclass(default):
            continue
        if type(value) is not type(default):
            raise InvalidValue(f"[{cls.STUDY}.{f.name}] takes a {type(default).__name__}, not "  # type: ignore[attr-defined]
                               f"{type(value).__name__}")
        used = {k for p, k in cls.FLAT.values() if p == f.name}  # type: ignore[attr-defined]
        for g in fields(value):
            if g.name not in used and getattr(value, g.name) != getattr(default, g.name):
                raise InvalidValue(f"[{cls.STUDY}.{f.name}] {g.name} is not a setting of the {cls.STUDY} study "  # type: ignore[attr-defined]
                                   f"(its keys: {', '.join(sorted(used))}): leave it out")


def check_layers(spec: str, key: str = "probe_layers", flag: str | None = None, table: str | None = None) -> None:
    """The form of a layer setting ('all', 'stride:k', '3,7,11'), before the model's layer count is known."""
    k = spec[len("stride:"):].strip() if spec.startswith("stride:") else None
    parts = [x.strip() for x in spec.split(",") if x.strip()]
    ok = spec == "all" or (k.isdigit() and int(k) >= 1 if k is not None else bool(parts) and all(x.isdigit() for x in parts))
    if not ok:
        raise refuse(key, "all, stride:K (K at least 1) or layers like 3,7,11", spec, flag=flag, table=table)
