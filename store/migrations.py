"""Schema versions: ``SCHEMA_VERSION`` and the migrations that bring an older store up to it.

``MIGRATIONS[k]`` takes a store from version k to k + 1. Each step is an SQL string or a
function ``step(con) -> str | None`` (a line saying what it changed, or None). All steps run in
one transaction, committed before the schema scripts run in a second one (store/db.py
``ensure_schema``): DuckDB checks a new key against rows deleted earlier in the same
transaction. So every step must be safe to run again (a failure in the scripts leaves the old
version, and the next write-open repeats the steps). Each entry is self-contained history: it
names the tables and columns as they were at its version, never today's definitions.
"""

from __future__ import annotations

import duckdb

from store.rows import first_row

SCHEMA_VERSION = 2
OLDEST_MIGRATABLE = 1
"""Oldest schema version this code can migrate from (older stores are refused)."""


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


# Natural keys of result tables that version 1 did not enforce (GROUP BY groups NULLs together).
_V2_KEYS = {
    "evals": "run_id, point, task, metric",
    "layer_points": "run_id, strategy, n, seed, heal_steps, point",
    "layer_agreement": "run_id, scope, n, proxy, position, task, metric",
}


def _has_primary_key(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(first_row(con.execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = ? "
                            "AND constraint_type = 'PRIMARY KEY'", [table]))[0])


def v1_to_v2(con: duckdb.DuckDBPyConnection) -> str | None:
    """Remove duplicated result rows, keeping the first one written (the lowest rowid), and give
    ``evals`` its primary key. DuckDB checks a new key against rows deleted earlier in the same
    transaction, so ``evals`` is rebuilt from its first rows instead (its v1 constraints restated).
    The view's location moves from meta 'shard_glob' to 'view_sql'."""
    have = _tables(con)
    removed = []
    for table, key in _V2_KEYS.items():
        if table not in have:
            continue
        first = f"SELECT min(rowid) FROM {table} GROUP BY {key}"
        before = first_row(con.execute(f"SELECT count(*) FROM {table}"))[0]
        if table == "evals" and not _has_primary_key(con, "evals"):
            con.execute(f"CREATE TABLE evals_v2 AS SELECT * FROM evals WHERE rowid IN ({first}) ORDER BY rowid")
            con.execute("DROP TABLE evals")
            con.execute("ALTER TABLE evals_v2 RENAME TO evals")
            for col in ("run_id", "study", "point", "intervention", "task", "metric", "dataset", "created"):
                con.execute(f"ALTER TABLE evals ALTER COLUMN {col} SET NOT NULL")
            con.execute("ALTER TABLE evals ALTER COLUMN created SET DEFAULT current_timestamp")
            con.execute(f"ALTER TABLE evals ADD PRIMARY KEY ({key})")
        else:
            con.execute(f"DELETE FROM {table} WHERE rowid NOT IN ({first})")
        n = before - first_row(con.execute(f"SELECT count(*) FROM {table}"))[0]
        if n:
            removed.append(f"{table} {n}")
    con.execute("DELETE FROM meta WHERE key = 'shard_glob'")
    return f"removed duplicated rows: {', '.join(removed)}" if removed else None


MIGRATIONS: dict[int, list] = {1: [v1_to_v2]}
