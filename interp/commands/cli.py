"""Helpers for tasks.py: one-line errors, tables on the terminal, flag parsing."""

from __future__ import annotations

import functools
import sys

import pandas as pd

# Errors that carry a message written for the user: printed as one line, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, FileNotFoundError, KeyError)


def user_errors(fn):
    """Turn a user-facing error into a one-line message and exit status 2 (no traceback)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from invoke.exceptions import Exit

        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            if isinstance(e, KeyError):
                e = str(e).strip("'\"")
            raise Exit(f"error: {e}", code=2) from None
    return wrapper


def opt_int(value) -> int | None:
    if value in (None, "", "none", "None"):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a whole number, got '{value}'") from None


def lmeval_tasks(value) -> tuple[str, ...]:
    """--lm-eval arc_easy,mmlu:5shot -> ('lm-eval:arc_easy', 'lm-eval:mmlu:5shot'); () when not given."""
    if value is None:
        return ()
    names = tuple(t if t.startswith("lm-eval:") else f"lm-eval:{t}" for t in
                  (x.strip() for x in str(value).split(",")) if t)
    if not names:
        raise ValueError("--lm-eval names no task: give lm-eval task names like arc_easy,boolq")
    return names


def opt_bool(value) -> bool | None:
    if value in (None, "", "auto"):
        return None
    if isinstance(value, bool):
        return value
    return str(value).lower() in {"1", "true", "yes", "on"}


def print_table(df: pd.DataFrame, title: str | None = None, max_rows: int = 200, fmt: str = "table") -> None:
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


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if hasattr(v, "__len__") and not isinstance(v, str) and len(v) > 6:
        return f"[{', '.join(_cell(x) for x in list(v)[:4])}, ... ({len(v)} values)]"
    return str(v)
