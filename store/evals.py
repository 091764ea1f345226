"""The ``evals`` table: every evaluation of every sweep point, base model included."""

from __future__ import annotations

import duckdb
import pandas as pd

COLUMNS = ["run_id", "study", "point", "intervention", "task", "metric", "value", "stderr", "n",
           "chance", "dataset", "seconds", "harness", "task_version", "num_fewshot", "fewshot_seed"]
"""Columns a sweep writes; the last four are NULL for the suite's own tasks (10_evals.sql)."""


def write_evals(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    """Insert rows (dicts with COLUMNS; missing keys are NULL) for one point in one transaction."""
    if not rows:
        return
    df = pd.DataFrame(rows, columns=COLUMNS)  # noqa: F841 - read by name in the SQL (DuckDB replacement scan)
    df = df.astype({"num_fewshot": "Int64", "fewshot_seed": "Int64"})  # None -> NULL, not a float column
    con.execute("BEGIN")
    try:
        con.execute(f"INSERT INTO evals ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM df")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def done_points(con: duckdb.DuckDBPyConnection, run_id: int) -> set[str]:
    """Intervention JSON of the points a run has already evaluated (for resume)."""
    rows = con.execute("SELECT DISTINCT intervention::VARCHAR FROM evals WHERE run_id = ?", [run_id]).fetchall()
    return {r[0] for r in rows}


def read_evals(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    return con.execute(
        "SELECT point, task, metric, value, stderr, n, chance FROM evals WHERE run_id = ? ORDER BY created, task, metric",
        [run_id],
    ).df()
