"""Opening a store: one DuckDB file plus a directory of Parquet activation shards.

``Store(path).connect()`` creates or migrates the schema and (re)points the ``activations``
view at the shard directory; ``connect(read_only=True)`` never writes. Shards may live on
S3-compatible object storage instead (``Store(path, shards="s3://b/p")`` or ``INTERP_SHARDS``;
see store/remote.py). A shard directory belongs to exactly one store (store/owner.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from store import locks, owner, remote, view
from store.errors import StoreError
from store.migrations import MIGRATIONS, OLDEST_MIGRATABLE, SCHEMA_VERSION
from store.rows import first_row

__all__ = ["DEFAULT_STORE", "MIGRATIONS", "OLDEST_MIGRATABLE", "SCHEMA_VERSION", "SHARD_SCHEMA", "Store",
           "StoreError", "VEC_TYPE", "transaction"]

CORE_SCHEMA = Path(__file__).with_name("schema.sql")
SCHEMA_DIR = Path(__file__).with_name("schema")
DEFAULT_STORE = "interp.duckdb"
HIVE_TYPES = view.HIVE_TYPES

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

READ_WAIT_S = 30.0
"""How long a reader waits for a commit in flight (commits are short)."""
WRITE_NOTE_S = float(os.environ.get("INTERP_WRITE_NOTE_S", "30"))
"""A writer waits for readers as long as they need; it says so on stderr this often."""


@dataclass(frozen=True)
class Store:
    path: Path
    shards: str | None = None
    """Where the shards live: None for ``<name>.shards`` beside the file, or ``s3://bucket/prefix``
    (default: the ``INTERP_SHARDS`` environment variable)."""

    def __init__(self, path: str | Path = DEFAULT_STORE, shards: str | None = None) -> None:
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
    def remote_url(self) -> str:
        """The shards' object-storage URL (``s3://...``); only for a store whose shards are remote."""
        if self.shards is None or not self.is_remote:
            raise StoreError(f"the shards of {self.path} are on local disk, not on object storage")
        return self.shards

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
        return self.remote_url if self.is_remote else str(self.shard_dir)

    def shard_url(self, rel: str) -> str:
        """Where the shard at manifest path ``rel`` lives (local path or URL)."""
        return remote.join(self.remote_url, rel) if self.is_remote else str(self.shard_dir / rel)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def claim_path(self, run_id: int) -> Path:
        """The lock file a process holds while it computes run ``run_id`` (store.runs)."""
        return locks.claim_path(self.path, run_id)

    @contextlib.contextmanager
    def connect(self, read_only: bool = False, wait_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection; read-only ones fail if the store does not exist yet.

        A read-only open waits up to ``wait_s`` (default 30 s) for a commit in flight; a
        write-open waits for readers as long as they hold the file (``wait_s`` caps it)."""
        if read_only and not self.path.exists():
            raise StoreError(f"no store at {self.path}: run `invoke cache` first or pass --store PATH")
        con = _open(self.path, read_only, READ_WAIT_S if read_only and wait_s is None else wait_s)
        try:
            if self.is_remote:
                remote.configure(con)
            if read_only:
                check_version(con, self.path)
                check_shard_root(con, self)
                owner.check(con, self, read_only=True)
                view.shadow_view(con, self)
            else:
                ensure_schema(con, self)
            yield con
        finally:
            con.close()

    def preflight(self) -> None:
        """What a writing task needs from the store, checked before it loads a model: the file is
        an interp store (or absent), its directory can be written, its schema is not newer than
        this code, its shard location is its own. Writes nothing but the lock file a run makes anyway."""
        if _is_duckdb_file(self.path) is False:
            raise _not_ours(self.path)
        _make_parent(self.path)
        locks.check_writable(self.lock_path, self.path)
        if _is_duckdb_file(self.path):
            con = _open(self.path, True, READ_WAIT_S)
            try:
                version = _stored_version(con)
                if version is None or version > SCHEMA_VERSION or version < OLDEST_MIGRATABLE:
                    check_version(con, self.path)  # (an older, migratable one is migrated by the task)
                check_shard_root(con, self)
                owner.check(con, self, read_only=True)
            finally:
                con.close()

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Exclusive right to add shards; a second writer gets a clear error, not a race."""
        if locks.holds(self.lock_path) or locks.try_lock(self.lock_path, self.path) is None:
            pid = locks.holder(self.lock_path)
            raise StoreError(f"store {self.path} is being written by another process"
                             f"{f' ({pid})' if pid and pid > 0 and pid != os.getpid() else ''}: wait for it to finish")
        try:
            yield
        finally:
            locks.release(self.lock_path)


def _is_duckdb_file(path: Path) -> bool | None:
    """True for a DuckDB file, False for another kind of file, None when it is empty or absent."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:
        return False
    if not head:
        return None
    return head[8:12] == b"DUCK"


def _not_ours(path: Path) -> StoreError:
    try:
        head = path.read_bytes()[:16] if path.is_file() else b""
    except OSError:
        head = b""
    kind = ("a directory" if path.is_dir() else "an SQLite database" if head.startswith(b"SQLite format 3")
            else "not a DuckDB file")
    return StoreError(f"{path} is not a readable interp store ({kind}): pass another --store or move the file away")


def _make_parent(path: Path) -> None:
    """The store's directory, created if needed; a one-line StoreError when it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in locks.READ_ONLY_ERRNOS:
            raise StoreError(locks.read_only_message(path, e)) from None
        blocker = next((p for p in path.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise StoreError(f"cannot create the store {path}: {blocker} is a file, not a directory") from None
        raise StoreError(f"cannot create {path.parent}: {e.strerror}") from None


def _open(path: Path, read_only: bool, wait_s: float | None) -> duckdb.DuckDBPyConnection:
    """Open the file, waiting while another process holds DuckDB's file lock."""
    if _is_duckdb_file(path) is False:
        raise _not_ours(path)  # before DuckDB sees it: it would try to download a reader extension
    if not read_only:
        _make_parent(path)
    start = time.monotonic()
    noted = start
    config: dict[str, str | bool | int | float | list[str]] = {"autoinstall_known_extensions": False,
                                                               "autoload_known_extensions": False}
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.IOException as e:
            msg = str(e).splitlines()[0]
            now = time.monotonic()
            if "lock" in msg.lower() and (wait_s is None or now - start < wait_s):
                if not read_only and now - noted >= WRITE_NOTE_S:
                    noted = now
                    holder = msg.split("(PID ")[-1].split(")")[0] if "(PID " in msg else "another process"
                    print(f"note: waiting {now - start:.0f}s for process {holder} to close {path} "
                          "(a long query holds it; this run continues once it lets go)", file=sys.stderr, flush=True)
                time.sleep(0.05)
                continue
            if "read-only file system" in msg.lower() or "permission denied" in msg.lower():
                raise StoreError(locks.read_only_message(path, OSError(30 if "read-only" in msg.lower() else 13,
                                                                       msg))) from None
            if "not a valid duckdb" in msg.lower():
                raise _not_ours(path) from None
            raise StoreError(f"cannot open store {path}: {msg}") from None
        except duckdb.Error as e:
            raise StoreError(
                f"{path} is not a readable interp store ({str(e).splitlines()[0]}): "
                "pass another --store or move the file away"
            ) from None


DISK_FULL = ("no space left", "file too large", "disk quota")


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT, or ROLLBACK on any error; the original error surfaces, never the rollback's.

    A commit that fails because the disk is full is a StoreError saying so (nothing of the
    transaction is stored; rerunning the same command resumes)."""
    con.execute("BEGIN")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException as e:
        with contextlib.suppress(duckdb.Error):  # a failed COMMIT has already ended the transaction
            con.execute("ROLLBACK")
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, duckdb.Error) and any(k in msg.lower() for k in DISK_FULL):
            raise StoreError(f"the store's disk is full ({msg.split(': ')[-1]}): nothing of this step was stored; "
                             "free space and rerun the same command to resume") from None
        raise


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _stored_version(con: duckdb.DuckDBPyConnection) -> int | None:
    if "meta" not in _tables(con):
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
            f"store {path} has schema version {version}: run `invoke check --repair --store {path}` (or any "
            f"writing task) to migrate it to {SCHEMA_VERSION}"
        )


def schema_sql() -> list[str]:
    """The schema scripts: the core tables (store/schema.sql), then one per study in name order
    (store/schema/NN_<study>.sql)."""
    return [CORE_SCHEMA.read_text(), *(p.read_text() for p in sorted(SCHEMA_DIR.glob("*.sql")))]


def _schema_digest() -> str:
    import hashlib

    return hashlib.sha256("\n".join(schema_sql()).encode()).hexdigest()[:16]


def ensure_schema(con: duckdb.DuckDBPyConnection, store: Store) -> list[str]:
    """Create, migrate, or top up the schema; idempotent, so it runs on every write-open.
    Returns what it did (one line per migration that changed something).

    A store already at this version, made from these exact schema scripts (their digest is
    in ``meta``) for this shard root, is left alone: no transaction, no commit to sync."""
    version = _stored_version(con)
    if version == SCHEMA_VERSION:
        stored = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('schema_digest', 'shard_root')")
                      .fetchall())
        if stored.get("schema_digest") == _schema_digest() and stored.get("shard_root") == store.shard_root:
            owner.check(con, store, read_only=False)
            view.point_view(con, store)
            return []
    if version is None:
        if _tables(con):
            raise StoreError(f"{store.path} is a DuckDB file with other tables, not an interp store")
    elif version > SCHEMA_VERSION or version < OLDEST_MIGRATABLE:
        check_version(con, store.path)
    check_shard_root(con, store)
    notes: list[str] = []
    if version is not None and version < SCHEMA_VERSION:
        # The migration steps commit before the schema scripts run: DuckDB checks a new key against
        # rows deleted earlier in the same transaction. Steps are safe to repeat, and the version
        # only moves once the scripts (the new keys) are in.
        with transaction(con):
            for v in range(version, SCHEMA_VERSION):
                for step in MIGRATIONS[v]:
                    note = step(con) if callable(step) else con.execute(step) and None
                    if note:
                        notes.append(f"schema {v} -> {v + 1}: {note}")
    with transaction(con):
        for script in schema_sql():
            con.execute(script)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        con.execute("INSERT OR REPLACE INTO meta VALUES ('shard_root', ?)", [store.shard_root])
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_digest', ?)", [_schema_digest()])
        con.execute("INSERT INTO meta SELECT 'store_id', ? WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'store_id')",
                    [owner.new_id()])
    owner.check(con, store, read_only=False)
    view.point_view(con, store)
    return notes


def check_shard_root(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    """Refuse to use a store whose shards were written to object storage with another location.

    Local stores may move (the view follows the file); shards on object storage cannot be
    found from the file's location, so both sides must agree.
    """
    if "meta" not in _tables(con):
        return
    row = con.execute("SELECT value FROM meta WHERE key = 'shard_root'").fetchone()
    stored = row[0] if row else None
    if stored is None or stored == store.shard_root:
        return
    if remote.is_remote(stored) or store.is_remote:
        has_shards = "shards" in _tables(con) and first_row(con.execute("SELECT count(*) FROM shards"))[0]
        if has_shards:
            raise StoreError(
                f"store {store.path} keeps its shards at {stored}, not {store.shard_root}: "
                f"set INTERP_SHARDS={stored} (or pass shards=) to use it"
            )
