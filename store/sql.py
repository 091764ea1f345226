"""User SQL (`invoke sql`): read-only unless the caller explicitly asks to write.

Read-only SQL passes three lines of defence:

1. **A statement check** (here, before anything opens the store). Only SELECT-like statements
   (SELECT, FROM, WITH, VALUES, TABLE, DESCRIBE, SHOW, SUMMARIZE; not PIVOT,
   which creates a type) and EXPLAIN [ANALYZE] of
   them are allowed, comments anywhere. Every function the statement calls is read from DuckDB's
   own parse tree (``json_serialize_sql``) and checked against ``DENIED``: functions that write,
   log, profile, checkpoint, or run SQL text this check cannot see. This line is needed even
   with DuckDB's sandbox: on a read-only connection the sandbox still lets ``COPY ... TO`` write
   into an allowed directory, and ``SELECT * FROM enable_logging(...)`` slips past it and then
   aborts the process when the connection closes.
2. **DuckDB's sandbox** on the connection that runs the query (store/sql_worker.py): external
   access off except the store's own shard location (and its spill directory), configuration
   locked, no persistent secrets, no extension loading. It is applied on that connection only:
   it would also turn off the replacement scans the store's own code uses.
3. **Isolation**: the query runs in a child process, so a DuckDB crash or abort ends that
   process only, never the caller (a notebook that also writes, a study) nor a cache run.

``--write`` (``write=True``) is the escape hatch: the SQL runs, without the statement check or
the sandbox, on a read-write connection opened under the store's write lock (so never during a
cache commit). It can do anything DuckDB can do as this user: change or drop tables, COPY to any
file, ATTACH other databases. Still in a child process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from store.db import Store, StoreError
from store.rows import first_row

# Statement kinds that only read (EXPLAIN is judged by the statement it explains).
READ_ONLY_KINDS = {"SELECT", "EXPLAIN"}
DENIED = {
    "checkpoint": "writes the store", "force_checkpoint": "writes the store",
    "enable_logging": "writes log files", "disable_logging": "changes logging",
    "truncate_duckdb_logs": "changes logging", "enable_profiling": "writes profiles",
    "disable_profiling": "changes profiling", "query": "runs SQL text this check cannot see",
    "json_execute_serialized_sql": "runs SQL this check cannot see", "duckdb_secrets": "shows credentials",
    "arrow_scan": "reads process memory", "arrow_scan_dumb": "reads process memory",
    "pandas_scan": "reads process memory", "python_map_function": "runs Python code",
    "nextval": "advances a sequence", "setval": "changes a sequence",
}
"""Functions refused in read-only SQL, with why."""


def _functions(node: object, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        name = node.get("function_name")
        if isinstance(name, str):
            out.add(name.lower())
        for value in node.values():
            _functions(value, out)
    elif isinstance(node, list):
        for value in node:
            _functions(value, out)
    return out


def _explained(query: str) -> str:
    """The statement an EXPLAIN [ANALYZE] explains (comments anywhere before it are skipped)."""
    tokens = duckdb.tokenize(query)  # comments are not tokens
    starts = [pos for pos, _ in tokens]
    words = [query[a:b].strip().lower() for a, b in zip(starts, [*starts[1:], len(query)])]
    skip = 2 if len(words) > 1 and words[1] in ("analyze", "analyse") else 1
    return query[starts[skip]:] if len(starts) > skip else ""


def check_read_only(sql: str, checker: duckdb.DuckDBPyConnection | None = None) -> None:
    """Refuse anything but reading statements and the functions in ``DENIED`` (one-line StoreError)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise StoreError(f"SQL error: {str(e).splitlines()[0]}") from None
    con = checker or duckdb.connect()
    try:
        for st in statements:
            kind = st.type.name
            if kind == "EXPLAIN":
                inner = _explained(st.query)
                if not inner.strip() or inner.strip() == st.query.strip():
                    raise StoreError("EXPLAIN of what? `invoke sql` explains one reading statement")
                check_read_only(inner, con)
                continue
            if kind not in READ_ONLY_KINDS:
                raise StoreError(f"{kind} is not allowed: `invoke sql` is read-only; add --write to modify the store")
            tree = json.loads(first_row(con.execute("SELECT json_serialize_sql(?)", [st.query]))[0])
            if tree.get("error"):
                why = tree.get("error_message", "not a plain query")
                raise StoreError(f"cannot check `{st.query.strip()[:60]}` ({why}): write it as a plain SELECT "
                                 "(e.g. SELECT * FROM pragma_table_info('runs')), or add --write")
            for name in sorted(_functions(tree, set()) & set(DENIED)):
                raise StoreError(f"{name}() is not allowed: `invoke sql` is read-only and {name}() "
                                 f"{DENIED[name]}; add --write to run it on a writable connection")
    finally:
        if checker is None:
            con.close()


def _worker_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def query_table(store: Store, sql: str, write: bool = False, as_frame: bool = False) -> pa.Table | None:
    """Run ``sql`` (read-only unless ``write``) in a child process; the last statement's rows as
    Arrow (SQL NULLs stay nulls), None when it returns no rows or columns. ``as_frame``: the
    DataFrame DuckDB's ``.df()`` makes, carried in Arrow (``to_pandas()`` restores its dtypes)."""
    if not sql.strip():
        raise StoreError('empty SQL: pass a query, e.g. invoke sql "SELECT * FROM runs"')
    if not write:
        check_read_only(sql)
        if not store.path.exists():
            raise StoreError(f"no store at {store.path}: run `invoke cache` first or pass --store PATH")
    job = json.dumps({"path": str(store.path), "shards": store.shards, "sql": sql, "write": write,
                      "as_frame": as_frame})
    proc = subprocess.run([sys.executable, "-m", "store.sql_worker"], input=job.encode(), capture_output=True,
                          env=_worker_env(), check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            raise StoreError(f"the query crashed DuckDB ({name}) in its own process: the store is unchanged and "
                             "nothing else was affected; simplify the query"
                             + (f" ({lines[-1][:160]})" if lines else ""))
        raise StoreError(lines[-1] if lines else f"the SQL process failed (exit {proc.returncode})")
    if not proc.stdout:
        return None
    with pa.ipc.open_stream(proc.stdout) as reader:
        return reader.read_all()


def run_sql(store: Store, sql: str, write: bool = False) -> pd.DataFrame:
    """The rows as DuckDB's own ``.df()`` gives them (the same dtypes as a direct connection)."""
    table = query_table(store, sql, write, as_frame=True)
    return pd.DataFrame() if table is None else table.to_pandas()
