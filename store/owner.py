"""Which store a shard location belongs to: exactly one.

Every store has an id (``meta.store_id``, made when the store is created or migrated); its
shard location carries the same id (``.interp-store`` in a local shard directory, the object
``interp-store.csv`` on object storage). Opening a store whose shard location
holds another store's id is refused: two stores writing ``run_id=1/...`` into one directory
would serve each other's vectors. A copied store (file and shard directory copied together)
keeps its id in both, so it just works.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

import duckdb

from store import remote
from store.errors import StoreError

if TYPE_CHECKING:
    from store.db import Store

MARKER = ".interp-store"
REMOTE_MARKER = "interp-store.csv"


def new_id() -> str:
    return uuid.uuid4().hex


def store_id(con: duckdb.DuckDBPyConnection) -> str | None:
    row = con.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
    return row[0] if row else None


def _read_marker(store: Store) -> str | None:
    if store.is_remote:
        url = remote.join(store.remote_url, REMOTE_MARKER)
        try:
            if not remote.list_objects(store.remote_url, REMOTE_MARKER.replace(".csv", "*.csv")):  # an exact name is not looked up
                return None
            return remote.read_value(url)
        except remote.RemoteError as e:
            raise StoreError(str(e)) from None
    try:
        return (store.shard_dir / MARKER).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_marker(store: Store, sid: str) -> str:
    """Write this store's id to its shard location unless one is there; returns the id found there."""
    if store.is_remote:
        remote.write_value(remote.join(store.remote_url, REMOTE_MARKER), sid)
        return sid
    store.shard_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(store.shard_dir / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # another store created it a moment ago
        return _read_marker(store) or sid
    with os.fdopen(fd, "w") as f:
        f.write(sid + "\n")
    return sid


def check(con: duckdb.DuckDBPyConnection, store: Store, read_only: bool) -> None:
    """Refuse a shard location that belongs to another store; a write-open marks an unmarked one."""
    sid = store_id(con)
    if sid is None:
        return  # a store from before ids (read-only open of a version the caller already refused)
    found = _read_marker(store)
    if found is None and not read_only:
        found = _write_marker(store, sid)
    if found is not None and found != sid:
        raise StoreError(
            f"shard location {store.shard_root} belongs to another store (id {found[:8]}, this one is {sid[:8]}; "
            f"e.g. `--store X` and `--store X.duckdb` share X.shards): use a store name with its own shard "
            "directory, or move one of the stores (with its .shards) elsewhere")
