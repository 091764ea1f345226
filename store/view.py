"""The ``activations`` view: this store's shards, wherever the store now is.

A write-open (re)creates the stored view when the shard location changed (the store was moved
or copied); a read-only open that finds the stored view pointing elsewhere shadows it with a
TEMP view over its own shards, so a copied or moved store reads its own shards even when no
writing task has opened it yet. Glob characters in the path (``[``, ``?``, ``*``) are escaped
as one-character classes (``[[]``), which DuckDB's glob matches literally.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb
import pyarrow.parquet as pq

from store import remote
from store.errors import StoreError

if TYPE_CHECKING:
    from store.db import Store

HIVE_TYPES = "{'run_id': INTEGER, 'hook': VARCHAR, 'layer': INTEGER}"
COLUMNS = "run_id, hook, layer, prompt_id, reduce, pos, head, vec"
SCHEMA_REL = "run_id=0/hook=_schema/layer=0/part-000000.parquet"
_EMPTY = ("SELECT NULL::INTEGER AS run_id, NULL::VARCHAR AS hook, NULL::INTEGER AS layer, NULL::VARCHAR AS prompt_id, "
          "NULL::VARCHAR AS reduce, NULL::INTEGER AS pos, NULL::SMALLINT AS head, NULL::FLOAT[] AS vec WHERE false")


def glob_escape(path: str) -> str:
    """``path`` with every glob metacharacter matched literally by DuckDB's glob."""
    return "".join(f"[{c}]" if c in "[]?*" else c for c in path)


def _q(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _local_sql(store: Store) -> str:
    pattern = glob_escape(str(store.shard_dir)) + "/**/*.parquet"
    return (f"SELECT {COLUMNS} FROM read_parquet({_q(pattern)}, hive_partitioning = true, "
            f"hive_types = {HIVE_TYPES}) WHERE run_id > 0")


def _remote_sql(store: Store) -> str:
    pattern = remote.join(store.remote_url, "**/*.parquet")
    root = store.remote_url.rstrip("/") + "/"
    return (f"SELECT {COLUMNS} FROM read_parquet({_q(pattern)}, hive_partitioning = true, hive_types = {HIVE_TYPES}, "
            f"filename = true) WHERE run_id > 0 AND filename IN (SELECT {_q(root)} || path FROM shards)")


def view_sql(store: Store) -> str:
    return _remote_sql(store) if store.is_remote else _local_sql(store)


def _stored(con: duckdb.DuckDBPyConnection) -> str | None:
    row = con.execute("SELECT value FROM meta WHERE key = 'view_sql'").fetchone()
    return row[0] if row else None


def ensure_schema_file(store: Store) -> None:
    """The zero-row shard that fixes the view's column types before any capture."""
    from store.db import SHARD_SCHEMA

    if store.is_remote:
        try:
            present = remote.list_objects(store.remote_url, SCHEMA_REL.rsplit("/", 1)[0] + "/*.parquet")
        except remote.RemoteError as e:
            raise StoreError(str(e)) from None
        if not present:
            remote.write_table(SHARD_SCHEMA.empty_table(), store.shard_url(SCHEMA_REL))
        return
    schema_file = store.shard_dir / SCHEMA_REL
    if not schema_file.exists():
        schema_file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(SHARD_SCHEMA.empty_table(), schema_file)


def point_view(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    """Write-open: (re)create the stored view when it does not read this store's shards."""
    ensure_schema_file(store)
    sql = view_sql(store)
    if _stored(con) == sql:
        return
    try:
        con.execute(f"CREATE OR REPLACE VIEW activations AS {sql}")
    except duckdb.Error as e:
        raise StoreError(f"cannot read the shards at {store.shard_root}: {str(e).splitlines()[0]}"
                         + (" (check the bucket, AWS_* credentials and AWS_ENDPOINT_URL)" if store.is_remote else ""))
    con.execute("INSERT OR REPLACE INTO meta VALUES ('view_sql', ?)", [sql])


def shadow_view(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    """Read-only open: a TEMP view over this store's own shards when the stored one reads others."""
    sql = view_sql(store)
    if _stored(con) == sql:
        return
    if not store.is_remote and not (store.shard_dir / SCHEMA_REL).exists() and (
            not store.shard_dir.exists() or not any(store.shard_dir.rglob("*.parquet"))):
        sql = _EMPTY  # no shards at all (a store copied without its .shards): an empty view, not an error
    try:
        con.execute(f"CREATE OR REPLACE TEMP VIEW activations AS {sql}")
    except duckdb.Error as e:
        raise StoreError(f"cannot read the shards at {store.shard_root}: {str(e).splitlines()[0]}") from None
