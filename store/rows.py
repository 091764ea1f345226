"""The one row a query is known to return (an aggregate, a count), typed for the checker."""

from __future__ import annotations

from typing import Any

import duckdb


def first_row(cur: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    """``cur.fetchone()`` for a query that always returns a row (``SELECT count(*) ...``): never None."""
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("the query returned no row")
    return row
