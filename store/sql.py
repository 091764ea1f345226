"""User SQL: read-only unless the caller explicitly asks to write."""

from __future__ import annotations

import re

import pandas as pd

from store.db import Store, StoreError

# Statement kinds that only read. Everything else (INSERT, DELETE, DROP, COPY, ATTACH,
# EXPORT, SET, CALL, ...) needs --write: a read-only DuckDB connection alone still lets
# COPY ... TO overwrite files (shards included) and ATTACH open other databases for writing.
READ_ONLY_KINDS = {"SELECT", "EXPLAIN"}
_EXPLAIN = re.compile(r"^\s*explain\s+(analy[sz]e\s+)?", re.IGNORECASE)


def _refuse_writes(sql: str) -> None:
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise StoreError(f"SQL error: {str(e).splitlines()[0]}") from None
    for st in statements:
        kind = st.type.name
        if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs its statement: judge that one
            _refuse_writes(_EXPLAIN.sub("", st.query, count=1))
            continue
        if kind not in READ_ONLY_KINDS:
            raise StoreError(f"{kind} is not allowed: `invoke sql` is read-only; add --write to modify the store")


def run_sql(store: Store, sql: str, write: bool = False) -> pd.DataFrame:
    """Run one statement; a read-only connection makes modification impossible."""
    if not sql.strip():
        raise StoreError('empty SQL: pass a query, e.g. invoke sql "SELECT * FROM runs"')
    import duckdb

    if not write:
        _refuse_writes(sql)
    with store.connect(read_only=not write) as con:
        try:
            rel = con.execute(sql)
        except duckdb.Error as e:
            msg = str(e).splitlines()[0]
            if not write and ("read-only" in msg.lower() or "read only" in msg.lower()):
                raise StoreError(f"{msg} — `invoke sql` is read-only; add --write to modify the store") from None
            raise StoreError(f"SQL error: {msg}") from None
        return rel.df() if rel.description else pd.DataFrame()
