"""The ``evals`` table: every evaluation of every sweep point, base model included."""

from __future__ import annotations

import duckdb
import pandas as pd

COLUMNS = ["run_id", "study", "point", "intervention", "task", "metric", "value", "stderr", "n",
           "chance", "dataset", "seconds"]


def write_evals(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    """Insert rows (dicts with COLUMNS) for one point in one transaction."""
    if not rows:
        return
    df = pd.DataFrame(rows, columns=COLUMNS)  # noqa: F841 - read by name in the SQL (DuckDB replacement scan)
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
