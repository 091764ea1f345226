"""Helpers for tasks.py: one-line errors, typed flags, tables on the terminal.

Every task is declared with ``@task(klass=CliTask, types={...})``: CliTask converts each flag
with ``interp.validate`` before the task body runs, so a bad value is one line and exit status
2 (invoke's own parser would print a traceback for ``--batch-size abc``), names the flag, what
it accepts and the closest valid value. Flags whose default is a whole number are whole numbers
without being listed; ``types`` adds ranges, booleans that take a value (``--chat true``),
choices and lists.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

import pandas as pd
from invoke import Task
from invoke.parser import Argument

from interp.validate import Choice, InvalidValue, Spec, Whole

if TYPE_CHECKING:
    from invoke.exceptions import Exit

    from interp.model.loading import Loaded, ModelCfg

# Errors that carry a message written for the user: printed as one line, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, FileNotFoundError, KeyError)
FORMATS = Choice(("table", "csv", "json"))
P = ParamSpec("P")
R = TypeVar("R")


def _quiet_broken_pipe() -> Exit:
    """stdout's reader went away (``invoke sql ... | head``): end quietly, as Unix tools do."""
    from invoke.exceptions import Exit

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    except OSError:
        pass
    return Exit(code=141)  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a user-facing error into a one-line message and exit status 2 (no traceback)."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from invoke.exceptions import Exit

        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            raise _quiet_broken_pipe() from None
        except USER_ERRORS as e:
            text = str(e).strip("'\"") if isinstance(e, KeyError) else str(e)  # KeyError's str() quotes it
            message = " ".join(text.split("\n")[0].split()) or type(e).__name__
            raise Exit(f"error: {message}", code=2) from None
    return wrapper


def fit_threads() -> None:
    """Size torch's CPU threads by the cores this process may use (``store.cores.usable_cores``).

    torch sizes its pool by the cores the process may run on (its affinity), not by a container's CPU
    quota: with ``docker --cpus 4`` on a 64-core host, dozens of threads share four cores' worth. Unless
    the user chose (``OMP_NUM_THREADS``), the pool is capped at the quota: through the environment while
    torch is not imported yet (it reads it on import; the tasks import it lazily), directly once it is."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    from store.cores import usable_cores

    cores = usable_cores()
    torch = sys.modules.get("torch")
    if torch is not None:
        if torch.get_num_threads() > cores:
            torch.set_num_threads(cores)
    elif hasattr(os, "sched_getaffinity") and cores < len(os.sched_getaffinity(0)):
        os.environ["OMP_NUM_THREADS"] = str(cores)


class _RawValue(Argument):
    """A typed flag whose text reaches CliTask unconverted (help still shows INT)."""

    def set_value(self, value: object, cast: bool = True) -> None:
        super().set_value(value, cast=False)


class CliTask(Task):
    """An invoke Task whose flags are converted by ``interp.validate`` specs (see the module doc)."""

    def __init__(self, body: Callable[..., None], types: dict[str, Spec[object]] | None = None,
                 **kwargs: Any) -> None:  # invoke's own Task options (help, name, ...)
        self.types: dict[str, Spec[object]] = dict(types or {})
        super().__init__(body, **kwargs)
        params = inspect.signature(body).parameters
        for name, p in params.items():
            if isinstance(p.default, int) and not isinstance(p.default, bool) and name not in self.types:
                self.types[name] = Whole()
        unknown = set(self.types) - set(params)
        if unknown:
            raise TypeError(f"types for unknown flags {sorted(unknown)} of task {body.__name__}")

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        # (``default`` is the body's default value, whatever its type; invoke annotates it as str)
        opts = super().arg_opts(name, default, taken_names)
        # invoke takes the first free character of the name as the short flag, a '-' included
        # (shown as `--=STRING`): only letters make short flags
        long, *short = opts["names"]
        if short and not short[0].isalpha():
            free = [c for c in long if c.isalpha() and c not in taken_names and c != long]
            opts["names"] = [long, *free[:1]]
        return opts

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        args = super().get_arguments(ignore_unknown_help)
        for arg in args:
            if arg.kind is int:
                arg.__class__ = _RawValue
        return args

    def __call__(self, *args: Any, **kwargs: Any) -> object:  # the body's arguments, converted here
        from invoke.exceptions import Exit

        for name, spec in self.types.items():
            if name in kwargs:
                try:
                    kwargs[name] = spec.parse(kwargs[name], "--" + name.replace("_", "-"))
                except InvalidValue as e:
                    raise Exit(f"error: {e}", code=2) from None
        fit_threads()
        return super().__call__(*args, **kwargs)


def opt_int(value: object) -> int | None:
    if value in (None, "", "none", "None"):
        return None
    return Whole().parse(value, "value")


def lmeval_tasks(value: object) -> tuple[str, ...]:
    """--lm-eval arc_easy,mmlu:5shot -> ('lm-eval:arc_easy', 'lm-eval:mmlu:5shot'); () when not given."""
    if value is None:
        return ()
    names = tuple(t if t.startswith("lm-eval:") else f"lm-eval:{t}" for t in
                  (x.strip() for x in str(value).split(",")) if t)
    if not names:
        raise ValueError("--lm-eval names no task: give lm-eval task names like arc_easy,boolq")
    return names


def opt_bool(value: object, name: str = "value") -> bool | None:
    """None for a missing value ('', 'auto'); true/false strictly (a typo is an error, never False)."""
    if value in (None, "", "auto"):
        return None
    from interp.validate import Boolean

    return Boolean().parse(value, name)


def print_table(df: pd.DataFrame, title: str | None = None, max_rows: int = 200, fmt: str = "table") -> None:
    """Print ``df`` as a table (NULLs as NULL), CSV (NULLs empty) or JSON (NULLs null)."""
    fmt = FORMATS.parse(fmt, "--format")
    if fmt == "csv":
        df.to_csv(sys.stdout, index=False)
        return
    if fmt == "json":
        print(df.to_json(orient="records", date_format="iso"))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in df.columns:
        table.add_column(str(col), overflow="fold")
    for row in df.head(max_rows).itertuples(index=False):
        table.add_row(*[escape(_cell(v)) for v in row])  # labels like 'ablate[x]' are not rich markup
    # Piped output (files, CI logs, tests) gets room for whole words instead of folded cells.
    console = Console(width=None if sys.stdout.isatty() else 220)
    console.print(table)
    if len(df) > max_rows:
        console.print(f"... {len(df) - max_rows} more rows (use --format csv for all)")


def _cell(v: object) -> str:
    if v is None or v is pd.NA or v is pd.NaT:
        return "NULL"
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else f"{v:.6g}"
    if hasattr(v, "__len__") and not isinstance(v, (str, bytes, dict)):
        items = list(cast("Iterable[object]", v))  # sized and not a string: a sequence or an array
        more = f", ... ({len(items)} values)" if len(items) > 6 else ""
        return f"[{', '.join(_cell(x) for x in items[:4 if more else 6])}{more}]"
    return str(v)


def model_cfg(model: str, *, revision: str | None, dtype: str, device: str, device_map: str | None) -> ModelCfg:
    """The model the task's --model/--revision/--dtype/--device/--device-map flags name."""
    from interp.model.loading import ModelCfg

    return ModelCfg(model, revision=revision, dtype=dtype, device=device, device_map=device_map)


def load(model: str, *, revision: str | None, dtype: str, device: str, device_map: str | None) -> Loaded:
    """That model, loaded."""
    from interp.model.loading import load_model

    return load_model(model_cfg(model, revision=revision, dtype=dtype, device=device, device_map=device_map))
