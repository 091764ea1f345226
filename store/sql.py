"""User SQL: read-only unless the caller explicitly asks to write."""

from __future__ import annotations

import pandas as pd

from store.db import Store, StoreError


def run_sql(store: Store, sql: str, write: bool = False) -> pd.DataFrame:
    """Run one statement; a read-only connection makes modification impossible."""
    if not sql.strip():
        raise StoreError('empty SQL: pass a query, e.g. invoke sql "SELECT * FROM runs"')
    import duckdb

    with store.connect(read_only=not write) as con:
        try:
            rel = con.execute(sql)
        except duckdb.Error as e:
            msg = str(e).splitlines()[0]
            if not write and ("read-only" in msg.lower() or "read only" in msg.lower()):
                raise StoreError(f"{msg} — `invoke sql` is read-only; add --write to modify the store") from None
            raise StoreError(f"SQL error: {msg}") from None
        return rel.df() if rel.description else pd.DataFrame()
