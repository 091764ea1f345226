"""Study settings from TOML files and flags, and back: one path for every study.

A config file has a ``[model]`` table (``interp.model.loading.ModelCfg``: spec, revision, dtype,
device, device_map) and one table named after the study (``[layers]``, ``[weights]``,
``[heads]``, ``[safety]``) whose keys are the fields of that study's config dataclass::

    [model]
    spec = "smollm2-135m-instruct"
    [layers]
    budget = "smoke"
    [layers.heal]
    steps = 20
    rank = 8

A study's shared parts (``interp.studies.parts``: evaluation, healing, calibration, probes, router) are
nested tables (``[layers.eval]``, ``[layers.heal]``, ``[weights.calib]``, ``[heads.router]``,
``[safety.probe]``). The study table also takes each part's settings under their flag names
(``heal_rank = 8``, ``tasks = [...]``: the study's ``FLAT`` map), so one vocabulary serves flags, older files
and the run identity; giving one setting both ways is refused.

``load(study, path, flags)`` reads the file, lays the flags the user gave on top (flags win)
and builds the configs; ``dumps(study, model_cfg, cfg)`` writes the effective config so that
``--config`` on the printed file rebuilds an equal config (equal run identity, so the run
resumes). Every value goes through ``interp.validate``, with the spec derived from the field's
annotation, so a file, a flag and a prompt file are refused with the same one line: the key,
what it accepts, and the closest valid key for a misspelt one. Range checks stay in each
config's ``__post_init__`` (one-line ValueErrors), which runs before any model is loaded.

TOML has no null: a field whose effective value is None is left out of the printed file (all
such fields default to None), or written as ``"none"`` where its default is something else.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import tomli_w
import tomllib

from interp.model.loading import ModelCfg
from interp.studies.part_names import default_part
from interp.validate import (
    Boolean,
    InvalidValue,
    ListOf,
    Number,
    Optional,
    Spec,
    Text,
    Whole,
    closest,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

C = TypeVar("C", bound="DataclassInstance")
"""A study's config dataclass."""


class ConfigError(ValueError):
    """A config file that cannot be read or used; the message is one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class Counts:
    """An evaluation budget: a preset name (smoke, quick, full, or 'ppl=2048,facts=40'), or a
    table of per-task counts. The evaluation config checks the names and counts themselves."""

    def parse(self, value: object, name: str) -> str | dict[str, int]:
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            return {str(k): Whole(min=1).parse(v, f"{name}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            return {str(k): Whole(min=1).parse(v, f"{name}.{k}") for k, v in value}
        raise InvalidValue(f"{name} takes a budget name (smoke, quick, full), counts like 'ppl=2048,facts=40' "
                           f"or a table of counts, not {value!r}")


@dataclasses.dataclass(frozen=True)
class Pairs:
    """A list of (name, number) pairs, e.g. a per-module rate recipe: a TOML table or 'attn=0.2:mlp=0.6'."""

    sep: str = ":"

    def parse(self, value: object, name: str) -> tuple[tuple[str, float], ...]:
        if isinstance(value, str):
            items = [p.partition("=") for p in value.split(self.sep) if p.strip()]
            if any(not eq for _, eq, _ in items):
                raise InvalidValue(f"{name} takes name=rate pairs like attn=0.2{self.sep}mlp=0.6, not '{value}'")
            value = [(k.strip(), v) for k, _, v in items]
        elif isinstance(value, dict):
            value = list(value.items())
        if not isinstance(value, (list, tuple)) or not value:
            raise InvalidValue(f"{name} takes name=rate pairs like attn=0.2{self.sep}mlp=0.6, not {value!r}")
        out: list[tuple[str, float]] = []
        for k, v in value:
            try:
                out.append((Text(empty=False).parse(k, name), Number(min=0, max=1).parse(v, name)))
            except InvalidValue:
                raise InvalidValue(f"{name} takes name=rate pairs with rates from 0 to 1, not '{k}={v}'") from None
        return tuple(out)


def _spec(hint: object, where: str) -> Spec[object]:
    """The validate spec for a field annotation: int, float, bool, str, tuples of them, ``X | None``,
    evaluation budgets (``str | dict``), rate recipes (tuples of (name, number) pairs)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        inner = Counts() if len(rest) > 1 else _spec(rest[0], where)  # str | dict: budgets only
        return Optional(inner) if type(None) in args else inner
    if typing.get_origin(hint) is tuple:
        item = args[0]
        if typing.get_origin(item) is tuple and typing.get_args(item)[0] is str:
            return Pairs()  # tuple[tuple[str, float], ...]: one recipe of (module, rate) pairs
        return ListOf(_spec(item, where), min_len=0)  # (several recipes: items split on ',', pairs on ':')
    specs: dict[object, Spec[object]] = {int: Whole(), float: Number(), bool: Boolean(), str: Text()}
    spec = specs.get(hint)
    if spec is None:
        raise TypeError(f"no config spec for the annotation {hint} of {where}")
    return spec


def parts_of(cls: type[DataclassInstance]) -> dict[str, type[DataclassInstance]]:
    """The config's part fields (``interp.studies.parts``) and their types."""
    from interp.studies.parts import PARTS

    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and hints[f.name] in PARTS}


def fields_of(cls: type[DataclassInstance]) -> dict[str, Spec[object]]:
    """The settable fields of a config dataclass and their validate specs: its own fields, and each part's fields
    under the study's flat (flag) names (``cls.FLAT``)."""
    hints = typing.get_type_hints(cls)
    extra = getattr(cls, "CONFIG_SPECS", {})
    parts = parts_of(cls)
    own = {f.name: extra.get(f.name) or _spec(hints[f.name], f"{cls.__name__}.{f.name}")
           for f in dataclasses.fields(cls) if f.init and f.name not in parts}
    flat = getattr(cls, "FLAT", {})
    return {**own, **{n: fields_of(parts[p])[k] for n, (p, k) in flat.items()}}


def part_keys(cls: type[DataclassInstance], part: str) -> dict[str, Spec[object]]:
    """The keys of the study's nested table ``part``: the part fields the study has a setting for."""
    specs = fields_of(parts_of(cls)[part])
    return {k: specs[k] for p, k in getattr(cls, "FLAT", {}).values() if p == part}


def _parse(specs: Mapping[str, Spec[object]], values: Mapping[str, object], where: str,
           tables: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in specs:
            names = {**{k: k for k in specs}, **{t.strip("[]").rpartition(".")[2]: t for t in tables}}
            hint = names.get(closest(key, names) or "")
            raise ConfigError(f"{where}: unknown key '{key}'" + (f" (did you mean {hint}?)" if hint else "")
                              + f"; valid keys: {', '.join(specs)}"
                              + (f"; tables: {', '.join(tables)}" if tables else ""))
        out[key] = specs[key].parse(value, f"{where} {key}")
    return out


def _split(cls: type[DataclassInstance], values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Flat settings -> (the config's own fields, {part: {field: value}}) through ``cls.FLAT``."""
    flat = getattr(cls, "FLAT", {})
    own: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {p: {} for p in parts_of(cls)}
    for name, value in values.items():
        if name in flat:
            parts[flat[name][0]][flat[name][1]] = value
        else:
            own[name] = value
    return own, parts


def build(cls: type[C], values: Mapping[str, Any], nested: Mapping[str, Mapping[str, Any]] | None = None) -> C:
    """The study config from flat settings (own fields and FLAT names) over the parts' ``nested`` values."""
    own, flat_parts = _split(cls, values)
    parts = {p: dataclasses.replace(default_part(cls, p), **{**(nested or {}).get(p, {}), **flat_parts[p]})
             for p in flat_parts}
    return cls(**own, **parts)


def read(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is one line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file '{path}' does not exist: write one with --print-config > FILE")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file '{path}' is not valid TOML: {' '.join(str(e).split())}") from None


def load(study: str, cls: type[C], path: str | None, flags: Mapping[str, object], model_flags: Mapping[str, object],
         defaults: Mapping[str, object] | None = None) -> tuple[ModelCfg, C]:
    """(ModelCfg, study config) from the file at ``path`` (or none) with ``flags`` on top.

    ``flags`` and ``model_flags`` hold the flags (None: not given); ``defaults`` lie under the file
    (a command's own defaults, such as its budget, where they differ from the config class's)."""
    data = read(path) if path else {}
    where = f"config file '{path}'"
    other = [k for k in data if k not in ("model", study)]
    if other:
        hint = closest(other[0], ("model", study))
        raise ConfigError(f"{where}: unknown table [{other[0]}]" + (f" (did you mean [{hint}]?)" if hint else "")
                          + f"; invoke {study} reads [model] and [{study}]")
    for name in ("model", study):
        if name in data and not isinstance(data[name], dict):
            raise ConfigError(f"{where}: '{name}' must be a table ([{name}]), not a single value")
    model_vals = _parse(MODEL_SPECS, data.get("model", {}), where + " [model]")
    table: dict[str, Any] = data.get(study, {})
    parts = parts_of(cls)
    nested: dict[str, dict[str, Any]] = {}
    for name in parts:
        if name in table and not isinstance(table[name], dict):
            raise ConfigError(f"{where}: '{study}.{name}' must be a table ([{study}.{name}]), not a single value")
        nested[name] = _parse(part_keys(cls, name), table.get(name, {}), f"{where} [{study}.{name}]")
    flat = _parse(fields_of(cls), {k: v for k, v in table.items() if k not in parts}, f"{where} [{study}]",
                  tables=tuple(f"[{study}.{p}]" for p in parts))
    for name, (part, key) in getattr(cls, "FLAT", {}).items():
        if name in flat and key in nested[part]:
            raise ConfigError(f"{where}: [{study}] {name} and [{study}.{part}] {key} are the same setting: keep one")
    given = {k: v for k, v in flags.items() if v is not None}
    d_own, d_parts = _split(cls, defaults or {})
    model_vals.update({k: v for k, v in model_flags.items() if v is not None})
    try:
        return ModelCfg(**model_vals), build(cls, {**d_own, **flat, **given},
                                             {p: {**d_parts[p], **nested[p]} for p in parts})
    except TypeError as e:  # a required field left out of the file
        raise ConfigError(f"{where}: {e}") from None


MODEL_SPECS: dict[str, Spec[object]] = {
    "spec": Text(empty=False), "revision": Optional(Text(), none=("none",)), "dtype": Text(),
    "device": Text(), "device_map": Optional(Text(), none=("none",))}
"""The [model] table's keys (ModelCfg's fields; device_map 'auto' stays 'auto')."""


def _plain(value: object) -> object:
    if isinstance(value, tuple) and value and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                                  for p in value) and not isinstance(value[0][1], tuple):
        return {k: _plain(v) for k, v in value}  # (name, number) pairs: a table
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def as_table(cfg: DataclassInstance, keys: tuple[str, ...] | None = None,
             defaults: DataclassInstance | None = None) -> dict[str, object]:
    """The config's settable fields (or ``keys``) as TOML-ready values (None left out, or 'none' over a non-None
    default; ``defaults``: an instance holding them); each part as a nested table of the keys the study sets."""
    out: dict[str, object] = {}
    parts = parts_of(type(cfg))
    flat = getattr(cfg, "FLAT", {})
    for f in dataclasses.fields(cfg):
        if not f.init or (keys is not None and f.name not in keys):
            continue
        value = getattr(cfg, f.name)
        if f.name in parts:
            out[f.name] = as_table(value, tuple(k for p, k in flat.values() if p == f.name),
                                   default_part(type(cfg), f.name))
            continue
        if value is None:
            default = getattr(defaults, f.name) if defaults is not None else (
                f.default if f.default is not dataclasses.MISSING else None)
            if default is not None:
                out[f.name] = "none"
            continue
        out[f.name] = _plain(value)
    return out


def dumps(study: str, model: ModelCfg, cfg: DataclassInstance) -> str:
    """The effective config as TOML: ``--config`` on it rebuilds the same configs (same run identity)."""
    head = (f"# invoke {study} --config FILE reproduces this run (flags given with it override the file)\n"
            "# every key: the docstrings of ModelCfg and of the study's config class\n")
    return head + tomli_w.dumps({"model": as_table(model), study: as_table(cfg)})
