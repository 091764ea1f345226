"""One validator for typed values from the outside world: command-line flags, prompt files,
config files. A bad value becomes one line that names the key, what it accepts and, where
there is one, the closest valid value::

    from interp.validate import Whole, Number, Boolean, Choice, ListOf, Optional, parse

    parse("8", Whole(min=1), "--batch-size")                  # -> 8
    parse("ture", Boolean(), "--chat")                        # InvalidValue: --chat takes true or
                                                              #   false, not 'ture' (did you mean true?)
    parse("flaot32", Choice(("float32", "float16")), "dtype") # ... (did you mean float32?)
    parse("1,x", ListOf(Whole()), "--sizes")                  # --sizes: item 2 ...
    parse(None, Optional(Whole()), "--limit")                 # -> None

A spec is a small frozen dataclass with ``parse(value, name) -> value``; ``parse`` is the same
call spelled as a function. Values may arrive as strings (flags, CSV) or typed (JSON, TOML):
``Whole`` takes 8 and "8" but not 8.5 or True. Every error is an ``InvalidValue``, a
ValueError whose message is one line.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, SupportsFloat, TypeVar, cast

__all__ = ["Boolean", "Choice", "InvalidValue", "ListOf", "Number", "Optional", "Text", "Whole", "closest", "key_name",
           "parse", "refuse"]

TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0")


T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Spec(Protocol[T_co]):
    """What ``parse`` takes: anything that converts a raw value, or raises InvalidValue naming the key."""

    def parse(self, value: object, name: str) -> T_co: ...


class InvalidValue(ValueError):
    """A value a key does not accept; the message is one line naming the key and the fix."""


def _show(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 60 else text[:57] + "...'"


def closest(value: object, choices: Iterable[object]) -> str | None:
    """The valid value nearest to ``value`` (difflib's ratio), or None if none is close."""
    options = [str(c) for c in choices]
    found = difflib.get_close_matches(str(value).strip().lower(), [o.lower() for o in options], n=1, cutoff=0.6)
    if not found:
        return None
    return next(o for o in options if o.lower() == found[0])


def _fail(name: str, accepts: str, value: object, suggestion: str | None = None) -> InvalidValue:
    hint = f" (did you mean {suggestion}?)" if suggestion is not None else ""
    return InvalidValue(f"{name} takes {accepts}, not {_show(value)}{hint}")


@dataclass(frozen=True)
class Whole:
    """A whole number, optionally within [min, max]."""

    min: int | None = None
    max: int | None = None

    def accepts(self) -> str:
        if self.min is not None and self.max is not None:
            return f"a whole number from {self.min} to {self.max}"
        if self.min is not None:
            return f"a whole number of at least {self.min}"
        if self.max is not None:
            return f"a whole number of at most {self.max}"
        return "a whole number"

    def parse(self, value: object, name: str) -> int:
        if isinstance(value, bool):
            raise _fail(name, self.accepts(), value)
        if isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            number = int(value.strip())
        else:
            raise _fail(name, self.accepts(), value)
        if (self.min is not None and number < self.min) or (self.max is not None and number > self.max):
            raise _fail(name, self.accepts(), value)
        return number


@dataclass(frozen=True)
class Number:
    """A finite real number, optionally within [min, max]."""

    min: float | None = None
    max: float | None = None

    def accepts(self) -> str:
        lo = "" if self.min is None else f" of at least {self.min:g}"
        hi = "" if self.max is None else f"{' and' if lo else ' of'} at most {self.max:g}"
        return f"a number{lo}{hi}"

    def parse(self, value: object, name: str) -> float:
        if isinstance(value, bool):
            raise _fail(name, self.accepts(), value)
        try:
            number = float(cast("SupportsFloat | str", value.strip() if isinstance(value, str) else value))
        except (TypeError, ValueError):
            raise _fail(name, self.accepts(), value) from None
        if not math.isfinite(number) or (self.min is not None and number < self.min) or (
                self.max is not None and number > self.max):
            raise _fail(name, self.accepts(), value)
        return number


@dataclass(frozen=True)
class Boolean:
    """true/false (also yes/no, on/off, 1/0, any case); anything else is an error, never False."""

    def parse(self, value: object, name: str) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in TRUE:
            return True
        if text in FALSE:
            return False
        raise _fail(name, "true or false", value, closest(text, ("true", "false", "yes", "no", "on", "off")))


@dataclass(frozen=True)
class Choice:
    """One of ``choices`` (compared as given; ``ignore_case`` compares lower-cased)."""

    choices: tuple[str, ...]
    ignore_case: bool = False

    def accepts(self) -> str:
        names = list(self.choices)
        return "one of " + ", ".join(names) if len(names) > 2 else " or ".join(names)

    def parse(self, value: object, name: str) -> str:
        text = str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
        if text is not None:
            for c in self.choices:
                if text == c or (self.ignore_case and text.lower() == c.lower()):
                    return c
        raise _fail(name, self.accepts(), value, closest(value, self.choices))


@dataclass(frozen=True)
class Text:
    """A string (numbers are not silently turned into text); ``empty=False`` refuses blank ones."""

    empty: bool = True

    def parse(self, value: object, name: str) -> str:
        if not isinstance(value, str):
            raise InvalidValue(f"{name} takes text, not {type(value).__name__} {_show(value)}")
        if not self.empty and not value.strip():
            raise InvalidValue(f"{name} is empty: give it some text")
        return value


@dataclass(frozen=True)
class ListOf(Generic[T]):
    """A list of ``item``: a Python list/tuple, or a string split on ``sep``."""

    item: Spec[T]
    sep: str = ","
    min_len: int = 1

    def parse(self, value: object, name: str) -> tuple[T, ...]:
        parts = [p.strip() for p in value.split(self.sep) if p.strip()] if isinstance(value, str) else value
        if not isinstance(parts, (list, tuple)):
            raise InvalidValue(f"{name} takes a list, not {_show(value)}")
        if len(parts) < self.min_len:
            raise InvalidValue(f"{name} needs at least {self.min_len} value(s), got {_show(value)}")
        return tuple(self.item.parse(p, f"{name} (item {i})") for i, p in enumerate(parts, 1))


@dataclass(frozen=True)
class Optional(Generic[T]):
    """``inner``, or None for a missing value (None, '', 'none', 'auto')."""

    inner: Spec[T]
    none: tuple[str, ...] = ("", "none", "auto")

    def parse(self, value: object, name: str) -> T | None:
        if value is None or (isinstance(value, str) and value.strip().lower() in self.none):
            return None
        return self.inner.parse(value, name)


def key_name(key: str, flag: str | None = None, table: str | None = None) -> str:
    """A config key as a file writes it and as its flag: 'heal_steps (--heal-steps)'; a key of a nested table
    (a study config's part) names the table and the flag, if it has one: '[layers.heal] rank (--heal-rank)'."""
    if table is not None:
        return f"[{table}] {key}" + (f" ({flag})" if flag else "")
    return f"{key} ({flag or '--' + key.replace('_', '-')})"


def refuse(key: str, accepts: str, value: object, choices: Iterable[object] = (), flag: str | None = None,
           table: str | None = None) -> InvalidValue:
    """The error for a config value out of range, raised by the configs' own checks so that a file key and a flag
    read alike: the key (TOML name and flag), what it accepts and, for an unknown name, the closest valid one."""
    return _fail(key_name(key, flag, table), accepts, value, closest(value, choices) if choices else None)


def parse(value: object, spec: Spec[T], name: str) -> T:
    """``spec.parse(value, name)``: the value converted, or an InvalidValue naming ``name``."""
    return spec.parse(value, name)
