"""Study settings from TOML files and flags, and back: one path for every study.

A config file has a ``[model]`` table (``interp.model.loading.ModelCfg``: spec, revision, dtype,
device, device_map) and one table named after the study (``[layers]``, ``[weights]``,
``[heads]``, ``[safety]``) whose keys are the fields of that study's config dataclass::

    [model]
    spec = "smollm2-135m-instruct"
    [layers]
    budget = "smoke"
    heal_steps = 20

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


def fields_of(cls: type[DataclassInstance]) -> dict[str, Spec[object]]:
    """The settable fields of a config dataclass and their validate specs."""
    hints = typing.get_type_hints(cls)
    extra = getattr(cls, "CONFIG_SPECS", {})
    return {f.name: extra.get(f.name) or _spec(hints[f.name], f"{cls.__name__}.{f.name}")
            for f in dataclasses.fields(cls) if f.init}


def parse_values(cls: type[DataclassInstance], values: Mapping[str, object], where: str) -> dict[str, Any]:
    """``values`` checked key by key against ``cls``'s fields (unknown keys: the closest valid one)."""
    return _parse(fields_of(cls), values, where)


def _parse(specs: Mapping[str, Spec[object]], values: Mapping[str, object], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in specs:
            hint = closest(key, specs)
            raise ConfigError(f"{where}: unknown key '{key}'" + (f" (did you mean {hint}?)" if hint else "")
                              + f"; valid keys: {', '.join(specs)}")
        out[key] = specs[key].parse(value, f"{where} {key}")
    return out


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
    values: dict[str, Any] = {**(defaults or {}), **parse_values(cls, data.get(study, {}), f"{where} [{study}]")}
    values.update({k: v for k, v in flags.items() if v is not None})
    model_vals.update({k: v for k, v in model_flags.items() if v is not None})
    try:
        return ModelCfg(**model_vals), cls(**values)
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


def as_table(cfg: DataclassInstance) -> dict[str, object]:
    """The config's settable fields as TOML-ready values (None left out, or 'none' over a non-None default)."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        if value is None:
            default = f.default if f.default is not dataclasses.MISSING else None
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
