"""The child process that runs user SQL for store/sql.py (``python -m store.sql_worker``).

Reads a JSON job from stdin ({path, shards, sql, write, as_frame}), writes the last statement's rows
to stdout as an Arrow IPC stream (``as_frame``: the DataFrame DuckDB's ``.df()`` makes, dtypes kept), or one line to stderr and exit status 2. Read-only jobs run on a
read-only connection inside DuckDB's sandbox (``sandbox``); write jobs run on a read-write
connection under the store's write lock, without the sandbox.
"""

from __future__ import annotations

import json
import sys

import duckdb
import pyarrow as pa

from store import view
from store.db import Store, StoreError


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sandbox(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    """Lock this connection down to reading: external access only to the store's shard location
    and spill directory, no persistent secrets, no extensions, the configuration locked.
    Call after the store's own setup (views, httpfs and its temporary S3 secret)."""
    root = store.shard_root.rstrip("/") + "/"
    allowed = [root, view.glob_escape(root), str(store.path) + ".tmp/"]  # the view names its root escaped
    con.execute(f"SET allowed_directories = [{', '.join(_sql_str(a) for a in allowed)}]")
    if not store.is_remote:  # (remote: set up with a TEMPORARY secret; the setting is frozen once one exists)
        con.execute("SET allow_persistent_secrets = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _rows(rel: duckdb.DuckDBPyConnection, as_frame: bool) -> pa.Table | None:
    """The result as Arrow; ``as_frame``: DuckDB's own DataFrame (its dtypes) carried in Arrow."""
    if not rel.description:
        return None
    return pa.Table.from_pandas(rel.df(), preserve_index=False) if as_frame else rel.to_arrow_table()


def run(job: dict) -> pa.Table | None:
    store = Store(job["path"], shards=job.get("shards"))
    if job.get("write"):
        with store.write_lock(), store.connect() as con:
            return _rows(con.execute(job["sql"]), job.get("as_frame", False))
    with store.connect(read_only=True) as con:
        sandbox(con, store)
        return _rows(con.execute(job["sql"]), job.get("as_frame", False))


def main() -> int:
    job = json.loads(sys.stdin.buffer.read())
    try:
        table = run(job)
    except StoreError as e:
        print(f"{e}", file=sys.stderr)
        return 2
    except duckdb.Error as e:
        msg = str(e).splitlines()[0]
        low = msg.lower()
        if not job.get("write") and ("read-only" in low or "read only" in low):
            print(f"{msg}: `invoke sql` is read-only; add --write to modify the store", file=sys.stderr)
        elif "file system operations are disabled" in low or "external" in low and "disabled" in low:
            print(f"{msg}: read-only `invoke sql` reads only this store (its tables and shards); "
                  "copy other files into a table with --write, or query them with duckdb directly", file=sys.stderr)
        else:
            print(f"SQL error: {msg}", file=sys.stderr)
        return 2
    if table is not None:
        with pa.ipc.new_stream(sys.stdout.buffer, table.schema) as writer:
            writer.write_table(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
