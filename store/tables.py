"""Writing DataFrames into the store's tables: one way to insert, one way to replace rows.

A table's columns come from the database, which the schema scripts (store/schema.sql,
store/schema/*.sql) made: they are the one source, so no Python list repeats them. A frame
may carry columns the table lacks (ignored) and may leave out NULL-able ones (stored as
NULL); leaving out a NOT NULL column is a StoreError naming it.
"""

from __future__ import annotations

import itertools

import duckdb
import pandas as pd

from store.db import StoreError, transaction

_names = itertools.count()
"""Registered frames get unique names, so nested writers never see each other's frames."""


def columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The table's (or view's) columns in schema order."""
    rows = con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                       "AND table_schema = 'main' ORDER BY ordinal_position", [table]).fetchall()
    if not rows:
        raise StoreError(f"no table '{table}' in this store: open it for writing once to create the schema")
    return [r[0] for r in rows]


def required(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The table's NOT NULL columns without a default, in schema order: a frame must hold them."""
    rows = con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                       "AND table_schema = 'main' AND is_nullable = 'NO' AND column_default IS NULL "
                       "ORDER BY ordinal_position",
                       [table]).fetchall()
    return [r[0] for r in rows]


def insert(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame, *, replace: bool = False) -> None:
    """Insert the frame's rows (``INSERT OR REPLACE`` by the table's key when ``replace``); call it
    inside ``transaction`` when other statements must land with it."""
    if frame.empty:
        return
    have = set(frame.columns)
    missing = [c for c in required(con, table) if c not in have]
    if missing:
        raise StoreError(f"rows for {table} lack columns {missing}")
    cols = ", ".join(c for c in columns(con, table) if c in have)
    name = f"_rows_{next(_names)}"
    con.register(name, frame)
    try:
        con.execute(f"INSERT {'OR REPLACE ' if replace else ''}INTO {table} ({cols}) SELECT {cols} FROM {name}")
    finally:
        con.unregister(name)


def delete(con: duckdb.DuckDBPyConnection, table: str, **key: object) -> None:
    """Delete the rows whose columns equal ``key`` (at least one column)."""
    if not key:
        raise StoreError(f"deleting from {table} needs a key (e.g. run_id=...)")
    unknown = [k for k in key if k not in columns(con, table)]
    if unknown:
        raise StoreError(f"{table} has no columns {unknown}")
    where = " AND ".join(f"{k} = ?" for k in key)
    con.execute(f"DELETE FROM {table} WHERE {where}", list(key.values()))


def replace_rows(con: duckdb.DuckDBPyConnection, frames: dict[str, pd.DataFrame], **key: object) -> None:
    """Replace the rows under ``key`` (e.g. ``run_id=3, point="drop-4"``) of each named table by the
    frame's, all in one transaction; the key's values are written into every row. Writing the same
    frames twice leaves one copy."""
    for table in frames:
        columns(con, table)  # an unknown table fails before anything is deleted
    with transaction(con):
        for table, frame in frames.items():
            delete(con, table, **key)
            insert(con, table, frame.assign(**key) if len(frame) else frame)
