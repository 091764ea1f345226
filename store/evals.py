"""The ``evals`` table (every evaluation of every sweep point, base model included), the per-item
scores behind it (``eval_items``) and each point's paired comparison with the base (``eval_deltas``)."""

from __future__ import annotations

import duckdb
import pandas as pd

from store import tables
from store.db import transaction

INTEGER_COLUMNS = {"num_fewshot": "Int64", "fewshot_seed": "Int64"}
"""Nullable integer columns: None -> NULL, not a float column."""


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    return df.astype({c: t for c, t in INTEGER_COLUMNS.items() if c in df})


def write_evals(con: duckdb.DuckDBPyConnection, rows: list[dict], items: list[dict] | None = None,
                deltas: list[dict] | None = None) -> None:
    """Insert one point's evals rows (dicts with the ``evals`` columns; missing keys are NULL), its
    per-item scores (``eval_items`` rows) and its comparison with the base (``eval_deltas`` rows), all in
    one transaction: a point is stored whole or not at all. Writing a point again replaces it: its evals
    rows by the table's key (run, point, task, metric), its item and comparison rows by deleting the
    point's old ones first."""
    if not rows:
        return
    with transaction(con):
        for table in ("eval_items", "eval_deltas"):
            for run_id, point in sorted({(r["run_id"], r["point"]) for r in rows}):
                tables.delete(con, table, run_id=run_id, point=point)
        tables.insert(con, "evals", _frame(rows), replace=True)
        tables.insert(con, "eval_items", _frame(items or []))
        tables.insert(con, "eval_deltas", _frame(deltas or []))


def done_points(con: duckdb.DuckDBPyConnection, run_id: int) -> set[str]:
    """Intervention JSON of the points a run has already evaluated (for resume)."""
    rows = con.execute("SELECT DISTINCT intervention::VARCHAR FROM evals WHERE run_id = ?", [run_id]).fetchall()
    return {r[0] for r in rows}


def read_evals(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    return con.execute(
        "SELECT point, task, metric, value, stderr, n, chance FROM evals WHERE run_id = ? ORDER BY created, task, metric",
        [run_id],
    ).df()


def point_items(con: duckdb.DuckDBPyConnection, run_id: int, point: str) -> pd.DataFrame:
    """(task, metric, item, value) of one point of a run (empty when it stored none)."""
    return con.execute("SELECT task, metric, item, value FROM eval_items WHERE run_id = ? AND point = ? "
                       "ORDER BY task, metric, item", [run_id, point]).df()


def vs_base(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    """Every evals row of a run with the base value and the paired comparison (view ``eval_vs_base``)."""
    return con.execute("SELECT point, task, metric, value, base_value, delta, lo, hi, p, mde, method, noise "
                       "FROM eval_vs_base WHERE run_id = ? ORDER BY point = 'base' DESC, point, task, metric",
                       [run_id]).df()


def read_point(con: duckdb.DuckDBPyConnection, run_id: int, point: str) -> tuple[str, pd.DataFrame]:
    """(intervention JSON, its (task, metric, value) rows) of one evaluated point of a run."""
    rows = con.execute("SELECT intervention::VARCHAR AS spec, task, metric, value FROM evals WHERE run_id = ? "
                       "AND point = ? ORDER BY task, metric", [run_id, point]).df()
    if rows.empty:
        known = [r[0] for r in con.execute("SELECT DISTINCT point FROM evals WHERE run_id = ? ORDER BY point",
                                           [run_id]).fetchall()]
        raise KeyError(f"run {run_id} has no evaluated point '{point}'"
                       + (f": its points are {', '.join(known[:12])}{' ...' if len(known) > 12 else ''}" if known
                          else ": it has no evaluated points"))
    return rows["spec"].iloc[0], rows[["task", "metric", "value"]]
