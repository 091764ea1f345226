"""Layer-study tables (store/schema/20_layers.sql): writers replace a run's rows in one
transaction, so re-running a study never duplicates anything; readers return DataFrames."""

from __future__ import annotations

import duckdb
import pandas as pd

from store.db import StoreError

TABLES: dict[str, list[str]] = {
    "layer_similarity": ["position", "stream", "layer_a", "layer_b", "cosine", "cosine_se", "angular",
                         "angular_se", "n_prompts"],
    "layer_angular": ["position", "stream", "n", "start_layer", "end_layer", "distance", "distance_se", "best",
                      "n_prompts"],
    "layer_influence": ["position", "stream", "layer", "block_influence", "block_influence_se", "n_prompts"],
    "layer_points": ["strategy", "n", "seed", "heal_steps", "layers", "point"],
    "layer_agreement": ["scope", "n", "proxy", "position", "task", "metric", "spearman", "p_value", "n_points",
                        "expected_sign", "agreement"],
    "layer_heal": ["point", "step", "loss", "seconds"],
}
"""Table -> columns written from a DataFrame (``run_id`` is added)."""


def replace_rows(con: duckdb.DuckDBPyConnection, run_id: int, frames: dict[str, pd.DataFrame]) -> None:
    """Replace the run's rows of each named table by the frame's, all in one transaction."""
    for table in frames:
        if table not in TABLES:
            raise StoreError(f"unknown layer table '{table}': one of {', '.join(TABLES)}")
    con.execute("BEGIN")
    try:
        for table, df in frames.items():
            cols = TABLES[table]
            missing = [c for c in cols if c not in df.columns]
            if missing:
                raise StoreError(f"rows for {table} lack columns {missing}")
            data = df[cols].copy()
            if "layers" in data:
                data["layers"] = [[int(x) for x in v] for v in data["layers"]]
            data.insert(0, "run_id", run_id)
            con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            con.register("_layer_rows", data)
            con.execute(f"INSERT INTO {table} (run_id, {', '.join(cols)}) "
                        f"SELECT run_id, {', '.join(cols)} FROM _layer_rows")
            con.unregister("_layer_rows")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def add_heal_log(con: duckdb.DuckDBPyConnection, run_id: int, point: str, log: pd.DataFrame) -> None:
    """Replace one healed point's training log (step, loss, seconds)."""
    data = log[["step", "loss", "seconds"]].copy()
    data.insert(0, "point", point)
    data.insert(0, "run_id", run_id)
    con.execute("BEGIN")
    try:
        con.execute("DELETE FROM layer_heal WHERE run_id = ? AND point = ?", [run_id, point])
        con.register("_heal_rows", data)
        con.execute("INSERT INTO layer_heal (run_id, point, step, loss, seconds) "
                    "SELECT run_id, point, step, loss, seconds FROM _heal_rows")
        con.unregister("_heal_rows")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def read_table(con: duckdb.DuckDBPyConnection, table: str, run_id: int) -> pd.DataFrame:
    if table not in TABLES:
        raise StoreError(f"unknown layer table '{table}': one of {', '.join(TABLES)}")
    return con.execute(f"SELECT * EXCLUDE (run_id) FROM {table} WHERE run_id = ? ORDER BY ALL", [run_id]).df()


def has_rows(con: duckdb.DuckDBPyConnection, table: str, run_id: int) -> bool:
    if table not in TABLES:
        raise StoreError(f"unknown layer table '{table}'")
    return con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]).fetchone()[0] > 0


def point_evals(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    """(point, task, metric, value, stderr) of every point of the run, base included."""
    return con.execute("SELECT point, task, metric, value, stderr FROM evals WHERE run_id = ? "
                       "ORDER BY point, task, metric", [run_id]).df()


def drops(con: duckdb.DuckDBPyConnection, run_id: int, metric: str | None = None,
          strategy: str | None = None) -> pd.DataFrame:
    """Rows of the ``layer_drops`` view (every evaluated drop with its base value) for a run."""
    sql = ("SELECT strategy, n, seed, heal_steps, layers, point, task, metric, value, stderr, base_value, delta "
           "FROM layer_drops WHERE run_id = ?")
    params: list = [run_id]
    if metric is not None:
        sql += " AND metric = ?"
        params.append(metric)
    if strategy is not None:
        sql += " AND strategy = ?"
        params.append(strategy)
    return con.execute(sql + " ORDER BY strategy, n, seed, heal_steps", params).df()


def cheapest_blocks(con: duckdb.DuckDBPyConnection, run_id: int, n: int, metric: str = "perplexity") -> pd.DataFrame:
    """Evaluated (unhealed) drops of exactly n layers, cheapest first by ``metric``."""
    return con.execute(
        "SELECT DISTINCT point, layers, value, delta, list(strategy) OVER (PARTITION BY point) AS strategies "
        "FROM layer_drops WHERE run_id = ? AND n = ? AND metric = ? AND heal_steps = 0 "
        "ORDER BY value, point", [run_id, n, metric]).df()
