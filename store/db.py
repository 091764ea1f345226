"""Opening a store: one DuckDB file plus a directory of Parquet activation shards.

``Store(path).connect()`` creates or migrates the schema and (re)points the
``activations`` view at the shard directory; ``connect(read_only=True)`` never writes.
Shards may live on S3-compatible object storage instead (``Store(path, shards="s3://b/p")``
or ``INTERP_SHARDS``; see store/remote.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from store import remote

SCHEMA_VERSION = 1
CORE_SCHEMA = Path(__file__).with_name("schema.sql")
SCHEMA_DIR = Path(__file__).with_name("schema")
DEFAULT_STORE = "interp.duckdb"

# Every shard file has these columns; run_id, hook and layer come from the directory names.
# The vector is a non-nullable list of non-nullable floats: Parquet then stores no definition
# levels for it, which makes writing and reading it much faster (BENCHMARKS.md, section 2).
# Shards written before that (nullable list) read the same: readers cast to VEC_TYPE.
VEC_TYPE = pa.list_(pa.field("element", pa.float32(), nullable=False))
SHARD_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("reduce", pa.string()),      # last | mean | all
    ("pos", pa.int32()),          # token index (null for mean)
    ("head", pa.int16()),         # attention head for z, else null
    pa.field("vec", VEC_TYPE, nullable=False),
])
HIVE_TYPES = "{'run_id': INTEGER, 'hook': VARCHAR, 'layer': INTEGER}"

# Migrations from version k to k+1, applied in order inside one transaction.
MIGRATIONS: dict[int, list[str]] = {}
# Oldest schema version this code can migrate from (stores older than this are refused).
OLDEST_MIGRATABLE = 1


class StoreError(RuntimeError):
    """A store that cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Store:
    path: Path
    shards: str | None = None
    """Where the shards live: None for ``<name>.shards`` beside the file, or ``s3://bucket/prefix``
    (default: the ``INTERP_SHARDS`` environment variable)."""

    def __init__(self, path: str | Path = DEFAULT_STORE, shards: str | None = None):
        object.__setattr__(self, "path", Path(path).expanduser().resolve())
        shards = shards or os.environ.get("INTERP_SHARDS") or None
        if shards is not None and not remote.is_remote(shards):
            shards = str(Path(shards).expanduser().resolve())
        object.__setattr__(self, "shards", shards.rstrip("/") if shards else None)

    @property
    def is_remote(self) -> bool:
        """True when the shards live on object storage (s3://...)."""
        return self.shards is not None and remote.is_remote(self.shards)

    @property
    def shard_dir(self) -> Path:
        """The local shard directory (only for stores whose shards are on local disk)."""
        if self.is_remote:
            raise StoreError(f"the shards of {self.path} are at {self.shards}, not on local disk")
        if self.shards is not None:
            return Path(self.shards)
        return self.path.with_name(self.path.name.removesuffix(".duckdb") + ".shards")

    @property
    def shard_root(self) -> str:
        """The shard location as a string: a local directory or an s3:// URL."""
        return self.shards if self.is_remote else str(self.shard_dir)

    def shard_url(self, rel: str) -> str:
        """Where the shard at manifest path ``rel`` lives (local path or URL)."""
        return remote.join(self.shards, rel) if self.is_remote else str(self.shard_dir / rel)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def connect(self, read_only: bool = False, wait_s: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection; read-only ones fail if the store does not exist yet."""
        if read_only and not self.path.exists():
            raise StoreError(f"no store at {self.path}: run `invoke cache` first or pass --store PATH")
        con = _open(self.path, read_only, wait_s)
        try:
            if self.is_remote:
                remote.configure(con)
            if read_only:
                check_version(con, self.path)
                check_shard_root(con, self)
            else:
                ensure_schema(con, self)
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Exclusive right to add shards; a second writer gets a clear error, not a race."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.lock_path, "a+")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(
                    f"store {self.path} is being written by another process: wait for it to finish"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()


def _open(path: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
    """Open the file, waiting briefly while another process holds DuckDB's file lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            msg = str(e)
            if "lock" in msg.lower() and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            if "not a valid duckdb" in msg.lower():
                raise StoreError(
                    f"{path} is not a readable interp store (not a valid DuckDB file): "
                    "pass another --store or move the file away"
                ) from None
            raise StoreError(f"cannot open store {path}: {msg.splitlines()[0]}") from None
        except duckdb.Error as e:
            raise StoreError(
                f"{path} is not a readable interp store ({str(e).splitlines()[0]}): "
                "pass another --store or move the file away"
            ) from None


def _stored_version(con: duckdb.DuckDBPyConnection) -> int | None:
    has_meta = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'"
    ).fetchone()[0]
    if not has_meta:
        return None
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def check_version(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    version = _stored_version(con)
    if version is None:
        raise StoreError(f"{path} is a DuckDB file but not an interp store (no schema_version)")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema version {version}, newer than this interp ({SCHEMA_VERSION}): "
            "upgrade interp"
        )
    if version < OLDEST_MIGRATABLE:
        raise StoreError(
            f"store {path} has schema version {version}, older than this interp can migrate "
            f"(oldest {OLDEST_MIGRATABLE}): re-create it with this interp (e.g. `invoke cache` into a new --store)"
        )
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema version {version}; open it with any writing task (e.g. `invoke cache`) "
            f"to migrate it to {SCHEMA_VERSION}"
        )


def schema_sql() -> list[str]:
    """The schema scripts: the core tables (store/schema.sql), then one per study in name order
    (store/schema/NN_<study>.sql)."""
    return [CORE_SCHEMA.read_text(), *(p.read_text() for p in sorted(SCHEMA_DIR.glob("*.sql")))]


def _schema_digest() -> str:
    import hashlib

    return hashlib.sha256("\n".join(schema_sql()).encode()).hexdigest()[:16]


def ensure_schema(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    """Create, migrate, or top up the schema; idempotent, so it runs on every write-open.

    A store already at this version, made from these exact schema scripts (their digest is
    in ``meta``) for this shard root, is left alone: no transaction, no commit to sync."""
    version = _stored_version(con)
    if version == SCHEMA_VERSION:
        stored = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('schema_digest', 'shard_root')")
                      .fetchall())
        if stored.get("schema_digest") == _schema_digest() and stored.get("shard_root") == store.shard_root:
            _point_view(con, store)
            return
    if version is None:
        tables = con.execute("SELECT count(*) FROM information_schema.tables").fetchone()[0]
        if tables:
            raise StoreError(f"{store.path} is a DuckDB file with other tables, not an interp store")
    elif version > SCHEMA_VERSION or version < OLDEST_MIGRATABLE:
        check_version(con, store.path)
    check_shard_root(con, store)
    con.execute("BEGIN")
    try:
        if version is not None and version < SCHEMA_VERSION:
            for v in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[v]:
                    con.execute(stmt)
        for script in schema_sql():
            con.execute(script)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        con.execute("INSERT OR REPLACE INTO meta VALUES ('shard_root', ?)", [store.shard_root])
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_digest', ?)", [_schema_digest()])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    _point_view(con, store)


def check_shard_root(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    """Refuse to use a store whose shards were written to object storage with another location.

    Local stores may move (the view is re-pointed on the next write-open); shards on object
    storage cannot be found from the file's location, so both sides must agree.
    """
    has_meta = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'"
    ).fetchone()[0]
    if not has_meta:
        return
    row = con.execute("SELECT value FROM meta WHERE key = 'shard_root'").fetchone()
    stored = row[0] if row else None
    if stored is None or stored == store.shard_root:
        return
    if remote.is_remote(stored) or store.is_remote:
        has_shards = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'shards'"
        ).fetchone()[0] and con.execute("SELECT count(*) FROM shards").fetchone()[0]
        if has_shards:
            raise StoreError(
                f"store {store.path} keeps its shards at {stored}, not {store.shard_root}: "
                f"set INTERP_SHARDS={stored} (or pass shards=) to use it"
            )


def _point_view(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    """(Re)create the ``activations`` view over this store's shard directory.

    A zero-row shard fixes the column types so the view works before any capture.
    """
    if store.is_remote:
        _point_remote_view(con, store)
        return
    schema_file = store.shard_dir / "run_id=0" / "hook=_schema" / "layer=0" / "part-000000.parquet"
    if not schema_file.exists():
        schema_file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(SHARD_SCHEMA.empty_table(), schema_file)
    pattern = str(store.shard_dir / "**" / "*.parquet").replace("'", "''")
    current = con.execute("SELECT value FROM meta WHERE key = 'shard_glob'").fetchone()
    if current and current[0] == pattern:
        return
    con.execute(
        "CREATE OR REPLACE VIEW activations AS SELECT run_id, hook, layer, prompt_id, reduce, pos, head, vec "
        f"FROM read_parquet('{pattern}', hive_partitioning = true, hive_types = {HIVE_TYPES}) "
        "WHERE run_id > 0"
    )
    con.execute("INSERT OR REPLACE INTO meta VALUES ('shard_glob', ?)", [pattern])


def _point_remote_view(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    """The view over shards on object storage: only objects listed in the manifest are read,
    since an interrupted commit may leave an object behind (objects cannot be renamed)."""
    schema_url = store.shard_url("run_id=0/hook=_schema/layer=0/part-000000.parquet")
    try:
        present = remote.list_objects(store.shards, "run_id=0/hook=_schema/layer=0/*.parquet")
    except remote.RemoteError as e:
        raise StoreError(str(e)) from None
    if not present:
        remote.write_table(SHARD_SCHEMA.empty_table(), schema_url)
    pattern = remote.join(store.shards, "**/*.parquet").replace("'", "''")
    root = (store.shards.rstrip("/") + "/").replace("'", "''")
    current = con.execute("SELECT value FROM meta WHERE key = 'shard_glob'").fetchone()
    if current and current[0] == pattern:
        return
    try:
        con.execute(
            "CREATE OR REPLACE VIEW activations AS SELECT run_id, hook, layer, prompt_id, reduce, pos, head, vec "
            f"FROM read_parquet('{pattern}', hive_partitioning = true, hive_types = {HIVE_TYPES}, filename = true) "
            f"WHERE run_id > 0 AND filename IN (SELECT '{root}' || path FROM shards)"
        )
    except duckdb.Error as e:
        raise StoreError(f"object storage failed on {store.shards}: {str(e).splitlines()[0]} "
                         "(check the bucket, AWS_* credentials and AWS_ENDPOINT_URL)") from None
    con.execute("INSERT OR REPLACE INTO meta VALUES ('shard_glob', ?)", [pattern])
