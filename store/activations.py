"""Activation vectors: a streaming, crash-safe shard writer and manifest-driven readers.

Commit protocol (why a kill at any point loses nothing and duplicates nothing):
1. every buffered (hook, layer) block is written to ``part-N.parquet.tmp`` (and fsynced);
2. one DuckDB transaction records the shards, the finished prompts and their tokens;
3. the ``.tmp`` files are renamed to ``.parquet``.
A ``.tmp`` whose shard is in the manifest was committed (finish the rename); any other
``.tmp`` was not (delete it). The view only matches ``*.parquet``, so readers never see
uncommitted data, and ``run_prompts``' primary key rejects a second copy of a prompt.
The renames happen while the writer still holds the DuckDB file, so another process
never sees a committed manifest whose files are still ``.tmp``.
Shards on object storage (store/remote.py) are written under their final keys instead,
and the view there reads only objects listed in the manifest.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from store import remote
from store.cores import usable_cores
from store.db import SHARD_SCHEMA, VEC_TYPE, Store, StoreError, transaction
from store.parquet import row_segments, vector_pages, write_shard
from store.rows import first_row


@dataclass
class Block:
    """Vectors of one (hook, layer) for some prompts, all made by the same reduction."""

    hook: str
    layer: int
    reduce: str
    prompt_ids: list[str] | pa.Array  # an Arrow string array can be shared by the blocks of one batch
    vec: np.ndarray | list[np.ndarray]  # (n, d) float32, or its consecutive row segments (written without a copy)
    pos: np.ndarray | None = None   # (n,) token index, None for mean
    head: np.ndarray | None = None  # (n,) head index for z

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in row_segments(self.vec))

    def table(self) -> pa.Table:
        vec = np.concatenate(row_segments(self.vec)) if isinstance(self.vec, (list, tuple)) else self.vec
        n, d = vec.shape
        values = pa.array(np.ascontiguousarray(vec, dtype=np.float32).reshape(-1))
        offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
        ids = self.prompt_ids if isinstance(self.prompt_ids, pa.Array) else pa.array(self.prompt_ids, pa.string())
        return pa.table({
            "prompt_id": ids,
            "reduce": pa.repeat(pa.scalar(self.reduce, pa.string()), n),
            "pos": pa.array(self.pos, pa.int32()) if self.pos is not None else pa.nulls(n, pa.int32()),
            "head": pa.array(self.head, pa.int16()) if self.head is not None else pa.nulls(n, pa.int16()),
            "vec": pa.ListArray.from_arrays(offsets, values, type=VEC_TYPE),
        }, schema=SHARD_SCHEMA)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):  # not Linux: the fsync at close does all the work
        return None


_SYNC_FILE_RANGE = _load_sync_file_range()


def _start_writeback(path: Path) -> None:
    """Ask the kernel to start writing a file's dirty pages now, without waiting (Linux
    sync_file_range, SYNC_FILE_RANGE_WRITE), so the fsync pass of sync="end" finds them written."""
    if _SYNC_FILE_RANGE is None:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        _SYNC_FILE_RANGE(fd, 0, 0, 2)
    finally:
        os.close(fd)


def recover(store: Store) -> dict[str, int]:
    """Finish or discard what an interrupted writer left behind. Call under the write lock.

    Object storage has no ``.tmp`` step: an uncommitted object is invisible (the view reads
    the manifest) and is overwritten when the run resumes, so there is nothing to do.
    """
    if store.is_remote or not store.shard_dir.exists():
        return {"renamed": 0, "deleted": 0}
    tmps = list(store.shard_dir.rglob("*.parquet*.tmp"))
    if not tmps:
        return {"renamed": 0, "deleted": 0}
    with store.connect() as con:
        committed = {r[0] for r in con.execute("SELECT path FROM shards").fetchall()}
    renamed = deleted = 0
    for tmp in tmps:
        if not tmp.name.endswith(".parquet.tmp"):  # a Ray worker's file (worker_suffix) no commit took
            tmp.unlink()
            deleted += 1
            continue
        rel = str(tmp.relative_to(store.shard_dir))[: -len(".tmp")]
        if rel in committed:
            os.replace(tmp, store.shard_dir / rel)
            renamed += 1
        else:
            tmp.unlink()
            deleted += 1
    return {"renamed": renamed, "deleted": deleted}


SYNCS = ("commit", "end", "off")
"""When shards are fsynced: before their commit is recorded (the default), once when the writer
closes, or never (the page cache only). Only ``commit`` survives a power loss mid-run; all three
survive a killed process (the kernel still writes its page cache)."""


class ActivationWriter:
    """Buffers blocks and commits them in the background every ``flush_bytes`` or ``flush_seconds``.

    At most one commit is in flight and one buffer is filling, so memory stays flat
    whatever the dataset size. Call ``close()`` (or use as a context manager) to commit
    the rest; ``abort()`` drops what is not committed. ``sync`` (one of SYNCS; None: "commit"
    if ``durable`` else "off") says when shard files are fsynced; ``first_part`` (``next_part``
    read by the caller while the run cannot change) saves the writer an open of the store.
    """

    def __init__(self, store: Store, run_id: int, *, flush_bytes: int = 128 << 20,
                 flush_seconds: float = 30.0, threads: int = 2, durable: bool = True, sync: str | None = None,
                 first_part: int | None = None) -> None:
        sync = sync or ("commit" if durable else "off")
        if sync not in SYNCS:
            raise ValueError(f"unknown sync '{sync}': use one of {', '.join(SYNCS)}")
        self.store, self.run_id, self.sync = store, run_id, sync
        self.flush_bytes, self.flush_seconds, self.durable = flush_bytes, flush_seconds, sync == "commit"
        self._unsynced: list[Path] = []  # committed shards still to fsync at close (sync="end")
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="shard")
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self._pending: Future[None] | None = None
        self._lock = threading.Lock()
        if first_part is None:  # the caller may have read it in a connection of its own (one open less)
            with store.connect() as con:
                first_part = next_part(con, run_id)
        self._part = first_part
        self.stats = {"commits": 0, "rows": 0, "bytes": 0, "write_s": 0.0}
        self._reset()

    def _reset(self) -> None:
        self._blocks: dict[tuple[str, int], list[Block]] = {}
        self._prompts: list[tuple[str, int, int]] = []
        self._tokens: list[pd.DataFrame] = []
        self._bytes = 0
        self._since = time.monotonic()

    def add(self, prompts: list[tuple[str, int, int]], tokens: pd.DataFrame, blocks: list[Block]) -> None:
        """Buffer the complete results of some prompts: (prompt_id, n_tokens, truncated) rows,
        their tokens (prompt_id, pos, token_id, token) and every block of vectors."""
        self._check()
        for b in blocks:
            self._blocks.setdefault((b.hook, b.layer), []).append(b)
            self._bytes += b.nbytes
        self._prompts += prompts
        self._tokens.append(tokens)
        if self._bytes >= self.flush_bytes or time.monotonic() - self._since >= self.flush_seconds:
            self.commit()

    def commit(self) -> None:
        """Hand the buffer to the background committer (waiting for the previous commit)."""
        if not self._prompts:
            return
        self._wait()
        job = (self._blocks, self._prompts, self._tokens, self._part)
        self._part += 1
        self._reset()
        self._pending = self._committer.submit(self._commit, *job)

    def close(self) -> None:
        try:
            self.commit()
            self._wait()
            if self._unsynced:  # sync="end": one pass over every shard this writer committed
                list(self._pool.map(_fsync, self._unsynced))
                self._unsynced = []
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Drop the uncommitted buffer but let an in-flight commit finish cleanly."""
        self._reset()
        try:
            self._wait()
        finally:
            self._shutdown()

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None or exc_type is KeyboardInterrupt:
            self.close()  # on Ctrl-C keep the prompts already finished
        else:
            self.abort()

    def _shutdown(self) -> None:
        self._committer.shutdown(wait=True)
        self._pool.shutdown(wait=True)

    def _check(self) -> None:
        if self._pending is not None and self._pending.done():
            self._wait()

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a failed commit in the caller's thread

    def _write_shard(self, key: tuple[str, int], blocks: list[Block], part: int) -> ShardRow:
        row = write_part(self.store, self.run_id, key[0], key[1], part, blocks, self.durable)
        if self.sync == "end" and not self.store.is_remote:
            _start_writeback(self.store.shard_dir / (row[3] + ".tmp"))
        return row

    def _commit(self, blocks: dict[tuple[str, int], list[Block]], prompts: list[tuple[str, int, int]],
                tokens: list[pd.DataFrame], part: int) -> None:
        t0 = time.perf_counter()
        try:
            shards = list(self._pool.map(lambda kv: self._write_shard(kv[0], kv[1], part), blocks.items()))
        except OSError as e:
            raise shard_write_error(self.store, e) from None
        shard_df = commit_parts(self.store, self.run_id, shards, prompts, tokens)
        if self.sync == "end" and not self.store.is_remote:
            self._unsynced += [self.store.shard_dir / rel for rel in shard_df["path"]]
        self.stats["commits"] += 1
        self.stats["rows"] += int(shard_df["n_rows"].sum())
        self.stats["bytes"] += int(shard_df["n_bytes"].sum())
        self.stats["write_s"] += time.perf_counter() - t0


def next_part(con: duckdb.DuckDBPyConnection, run_id: int) -> int:
    """The first part number no committed shard of run ``run_id`` uses."""
    last = first_row(con.execute("SELECT max(part) FROM shards WHERE run_id = ?", [run_id]))[0]
    return 0 if last is None else last + 1


def shard_write_error(store: Store, e: OSError) -> StoreError:
    """A failed shard write as one line saying what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StoreError(f"disk full while writing shards to {store.shard_root}: free space and "
                          "rerun the same command to resume (finished prompts are kept)")
    return StoreError(f"cannot write shards to {store.shard_root}: {e}")


ShardRow = tuple[str, int, int, str, int, int, int | None]
"""A shard's manifest row: (hook, layer, part, path, n_rows, n_bytes, crc32; None on object storage)."""


def write_part(store: Store, run_id: int, hook: str, layer: int, part: int, blocks: list[Block],
               durable: bool = True, suffix: str = ".tmp") -> ShardRow:
    """Step 1 of the commit protocol for one (hook, layer) shard: write ``part-N.parquet.tmp``
    (fsynced when ``durable``), or the final object on object storage. Returns the manifest row
    (hook, layer, part, path, n_rows, n_bytes, crc32) for ``commit_parts``. Needs no DuckDB
    connection, so any process that reaches the shard location can call it: Ray capture workers
    pass a ``worker_suffix()`` and the driver takes the file with ``take_worker_part``."""
    rel = f"run_id={run_id}/hook={hook}/layer={layer}/part-{part:06d}.parquet"
    if store.is_remote:  # written by DuckDB's httpfs: no bytes of ours to checksum
        n_rows, n_bytes = remote.write_table(pa.concat_tables([b.table() for b in blocks]), store.shard_url(rel))
        return hook, layer, part, rel, n_rows, n_bytes, None
    tmp = store.shard_dir / (rel + suffix)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    n_rows, n_bytes, crc = write_shard(tmp, blocks)
    if durable:
        _fsync(tmp)
    return hook, layer, part, rel, n_rows, n_bytes, crc


def worker_suffix() -> str:
    """A file suffix of its own for one attempt of a Ray worker at a part (``.w<random>.tmp``).

    Ray may run a chunk twice (a task retried after its result was delivered): each attempt
    writes its own file, and only the driver turns the attempt it commits into ``part-N.parquet.tmp``
    (``take_worker_part``), so a late attempt can never write a file that ``recover()`` would
    rename over a committed shard; ``recover()`` deletes every worker file no commit took."""
    return f".w{uuid.uuid4().hex[:12]}.tmp"


def take_worker_part(store: Store, rel: str, suffix: str) -> None:
    """The driver's side of ``worker_suffix``: the worker's file becomes ``rel.tmp``, before the
    commit that lists it (call under the write lock). Object storage has no ``.tmp`` step."""
    if store.is_remote:
        return
    try:
        os.replace(store.shard_dir / (rel + suffix), store.shard_dir / (rel + ".tmp"))
    except FileNotFoundError:
        raise StoreError(f"a Ray worker wrote {rel} where the driver cannot see it ({store.shard_root}): every "
                         "worker must write to the store's shard location (a shared file system or S3)") from None


def commit_parts(store: Store, run_id: int, shards: list[tuple], prompts: list[tuple[str, int, int]],
                 tokens: list[pd.DataFrame]) -> pd.DataFrame:
    """Steps 2 and 3 of the commit protocol: one transaction records the shards (rows from
    ``write_part``), the finished prompts and their tokens, then the ``.tmp`` files are renamed
    while the DuckDB file is still held. Call under the store's write lock. Returns the shards."""
    shard_df = pd.DataFrame(shards, columns=["hook", "layer", "part", "path", "n_rows", "n_bytes", "crc32"])
    shard_df["crc32"] = shard_df["crc32"].astype("Int64")
    shard_df.insert(0, "run_id", run_id)
    prompt_df = pd.DataFrame(prompts, columns=["prompt_id", "n_tokens", "truncated"])
    prompt_df.insert(0, "run_id", run_id)
    token_df = pd.concat(tokens, ignore_index=True)
    token_df.insert(0, "run_id", run_id)
    with store.connect() as con:
        with transaction(con):
            con.execute("INSERT INTO shards (run_id, hook, layer, part, path, n_rows, n_bytes, crc32) "
                        "SELECT run_id, hook, layer, part, path, n_rows, n_bytes, crc32 FROM shard_df")
            con.execute("INSERT INTO run_prompts (run_id, prompt_id, n_tokens, truncated) "
                        "SELECT * FROM prompt_df")
            con.execute("INSERT INTO tokens SELECT run_id, prompt_id, pos, token_id, token FROM token_df")
        if not store.is_remote:  # still holding the file: no reader sees a half-renamed commit
            for rel in shard_df["path"]:
                os.replace(store.shard_dir / (rel + ".tmp"), store.shard_dir / rel)
    return shard_df


# --- readers -------------------------------------------------------------------------------


def gather_rows(views: list[np.ndarray], rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``rows`` of the stacked (n_i, d) arrays ``views`` as one (len(rows), d) float32
    array (written into ``out`` if given).

    The views are zero-copy (pages of memory-mapped shards, or Arrow buffers); each is
    copied once, straight into its place in the output, several in parallel threads (NumPy
    releases the GIL while it copies). A view whose rows land in one contiguous run is a
    slice copy; otherwise its rows are scattered.
    """
    views = [v for v in views if len(v)]
    if out is None:
        out = np.empty((len(rows), views[0].shape[1] if views else 0), np.float32)
    if not views or not len(rows):
        return out
    total = sum(len(v) for v in views)
    dest = np.full(total, -1, np.int64)
    dest[rows] = np.arange(len(rows))
    jobs, start = [], 0
    for v in views:
        jobs.append((v, dest[start:start + len(v)]))
        start += len(v)

    def place(job: tuple[np.ndarray, np.ndarray]) -> None:
        v, d = job
        keep = d >= 0
        if not keep.any():
            return
        if keep.all() and d[-1] - d[0] == len(d) - 1 and (len(d) < 2 or bool(np.all(np.diff(d) == 1))):
            out[d[0]:d[-1] + 1] = v
        else:
            out[d[keep]] = v[keep]

    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(jobs))) as pool:
        list(pool.map(place, jobs))
    return out


_READ_THREADS = min(4, usable_cores())


class ShardRef(NamedTuple):
    """A shard as the manifest lists it: its path relative to the shard root and its size."""

    path: str
    n_bytes: int | None = None


def _shard_rows(con: duckdb.DuckDBPyConnection, run_id: int, hook: str,
                layers: list[int] | None) -> list[tuple[int, ShardRef]]:
    sql = "SELECT layer, path, n_bytes FROM shards WHERE run_id = ? AND hook = ?"
    params: list = [run_id, hook]
    if layers is not None:
        sql += f" AND layer IN ({', '.join('?' * len(layers))})"
        params += list(layers)
    return [(layer, ShardRef(path, n)) for layer, path, n in con.execute(sql + " ORDER BY layer, part", params).fetchall()]


_META = [f.name for f in SHARD_SCHEMA if f.name != "vec"]
_META_SCHEMA = pa.schema([f for f in SHARD_SCHEMA if f.name != "vec"])


def _missing(store: Store, path: str) -> StoreError:
    return StoreError(f"shard {path} is listed in the store but missing: run `invoke check --store {store.path}`, "
                      "then re-run the cache task into a new store to rebuild it")


def _damaged(store: Store, path: str, why: str) -> StoreError:
    return StoreError(f"shard {path} is damaged ({why}): run `invoke check --deep --store {store.path}` to list "
                      "every damaged shard, then restore them or re-cache the run into a new store")


def _checked_size(store: Store, ref: ShardRef) -> str:
    """The shard's local path after checking its size against the manifest, before anything maps
    it: a file that is shorter than its pages raises SIGBUS when a mapped page is touched."""
    path = store.shard_url(ref.path)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise _missing(store, path) from None
    if ref.n_bytes is not None and size != ref.n_bytes:
        raise _damaged(store, path, f"{size} bytes, the manifest says {ref.n_bytes}")
    return path


def read_shard_file(store: Store, rel: str | ShardRef, columns: list[str]) -> pa.Table:
    """Some columns of one shard (path relative to the shard root, or a ShardRef), as stored; a
    missing, truncated or unreadable file or a remote failure is a one-line StoreError."""
    ref = rel if isinstance(rel, ShardRef) else ShardRef(rel)
    path = store.shard_url(ref.path)
    try:
        if store.is_remote:
            return remote.read_table(path, columns)
        path = _checked_size(store, ref)
        # memory-mapped, no pre-buffering: uncompressed pages decode straight from the mapping
        return pq.read_table(path, columns=columns, use_threads=False, memory_map=True, pre_buffer=False)
    except remote.RemoteError as e:
        raise StoreError(str(e)) from None
    except FileNotFoundError:
        raise _missing(store, path) from None
    except (OSError, pa.ArrowException, ValueError) as e:
        raise _damaged(store, path, str(e).splitlines()[0][:160]) from None


def read_shard(store: Store, rel: str | ShardRef, columns: list[str] = _META) -> tuple[pa.Table, list[np.ndarray]]:
    """One shard as (the metadata ``columns``, its vectors as (rows, d) float32 arrays in row order).

    The vectors are zero-copy views: of the memory-mapped file's data pages when the shard
    is in the layout ``store.parquet`` writes (checked page by page), else of the buffers
    pyarrow decoded them into (remote shards, other writers' files). The metadata columns
    have SHARD_SCHEMA's types whichever writer made the file. Given a ShardRef, the file's size
    is checked against the manifest first.
    """
    ref = rel if isinstance(rel, ShardRef) else ShardRef(rel)
    views = None
    if not store.is_remote:
        path = _checked_size(store, ref)
        try:
            parquet = pq.ParquetFile(path, memory_map=True, pre_buffer=False)
            views = vector_pages(path, parquet.metadata)
            if views is not None:
                table = parquet.read(columns=columns, use_threads=False)
        except FileNotFoundError:
            raise _missing(store, path) from None
        except (OSError, pa.ArrowException, ValueError) as e:
            raise _damaged(store, path, str(e).splitlines()[0][:160]) from None
    if views is None:
        table = read_shard_file(store, ref, [*columns, "vec"])
        vec = table.column("vec")
        table = table.drop_columns(["vec"])
        views = [c.flatten().to_numpy(zero_copy_only=False).reshape(len(c), -1) for c in vec.chunks if len(c)]
    want = pa.schema([_META_SCHEMA.field(c) for c in columns])
    if table.schema != want:  # Polars-written shards have large strings
        table = table.cast(want)
    return table, views


def read_shard_vectors(store: Store, rel: str | ShardRef, columns: list[str] = _META,
                       reduce: str | None = None) -> tuple[pa.Table, np.ndarray]:
    """One shard as (metadata ``columns``, an (rows, d) float32 array of its vectors), only
    the rows stored with reduction ``reduce`` if given ("reduce" must then be a column)."""
    table, views = read_shard(store, rel, columns)
    if reduce is None:
        return table, gather_rows(views, np.arange(table.num_rows))
    keep = pc.equal(table.column("reduce"), reduce)
    return table.filter(keep), gather_rows(views, np.flatnonzero(keep.to_numpy(zero_copy_only=False)))


def _nothing_stored(con: duckdb.DuckDBPyConnection, run_id: int, hook: str, layers: list[int] | None) -> str:
    """Why a read found no shards, naming what the run does have (nearest names first)."""
    import difflib

    stored = con.execute("SELECT hook, list(DISTINCT layer ORDER BY layer) FROM shards WHERE run_id = ? "
                         "GROUP BY hook ORDER BY hook", [run_id]).fetchall()
    if not stored:
        return f"run {run_id} has no vectors: `invoke runs` lists the runs, `invoke cache --hooks ...` makes one"
    have = dict(stored)
    if hook not in have:
        near = difflib.get_close_matches(hook, list(have), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        return (f"run {run_id} has no '{hook}' vectors: {hint}stored: {', '.join(have)} "
                "(capture others with `invoke cache --hooks ...`)")
    got = have[hook]
    spans = _spans(got)
    return (f"run {run_id} has no '{hook}' vectors for layers {layers}: stored layers: {spans} "
            f"(capture others with `invoke cache --hooks {hook}:LO-HI`)")


def _spans(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def read_vectors(con: duckdb.DuckDBPyConnection, store: Store, run_id: int, hook: str,
                 layers: list[int] | None = None, reduce: str = "last",
                 prompt_ids: list[str] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Vectors of a run's hook as (meta, X): meta has layer, prompt_id, pos, head; X is (rows, d).

    Rows are ordered by layer, prompt_id, pos, head. If the run stored every position
    (``all``), ``last`` and ``mean`` are derived from those rows.

    Shards are read in parallel threads, their vectors as zero-copy views (``read_shard``);
    only the small metadata is sorted, then the vectors are copied once, into the output.
    """
    rows = _shard_rows(con, run_id, hook, layers)
    if not rows:
        raise StoreError(_nothing_stored(con, run_id, hook, layers))
    def one(row: tuple[int, ShardRef]) -> tuple[pa.Table, list[np.ndarray]]:
        layer, rel = row
        table, views = read_shard(store, rel)
        return table.append_column("layer", pa.array(np.full(table.num_rows, layer, np.int32))), views

    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(rows))) as pool:
        shards = list(pool.map(one, rows))
    table = pa.concat_tables([t for t, _ in shards])
    views = [v for _, vs in shards for v in vs]
    stored = set(pc.unique(table.column("reduce")).to_pylist())
    source = reduce if reduce in stored else "all" if "all" in stored else None
    if source is None:
        raise StoreError(f"run {run_id} stored '{hook}' as {sorted(stored)}, not '{reduce}'")
    keep = pc.equal(table.column("reduce"), source)
    if prompt_ids is not None:
        keep = pc.and_(keep, pc.is_in(table.column("prompt_id").cast(pa.string()),
                                      value_set=pa.array(list(prompt_ids), pa.string())))
    meta = pd.DataFrame({
        "layer": table.column("layer").to_numpy(),
        "prompt_id": table.column("prompt_id").cast(pa.string()).to_numpy(zero_copy_only=False),
        "pos": table.column("pos").to_pandas(),
        "head": table.column("head").to_pandas(),
    })[keep.to_numpy(zero_copy_only=False)]
    if reduce == "last" and source == "all":
        n_tok = dict(con.execute("SELECT prompt_id, n_tokens FROM run_prompts WHERE run_id = ?", [run_id]).fetchall())
        meta = meta[(meta["pos"] == meta["prompt_id"].map(n_tok) - 1).fillna(False).to_numpy(bool)]
    # meta's index is the row number in ``table``: sorting it gives the gather order, and the
    # vectors are copied once, straight from the Arrow buffers into the output. The sort is a
    # lexsort of integer keys (prompt ids as codes of their sorted categories; missing pos and
    # head last, as sort_values would put them), several times faster than sorting strings.
    idx = np.lexsort((meta["head"].to_numpy(dtype=float, na_value=np.inf),
                      meta["pos"].to_numpy(dtype=float, na_value=np.inf),
                      pd.Categorical(meta["prompt_id"]).codes,
                      meta["layer"].to_numpy()))
    order = meta.index.to_numpy()[idx]
    meta = meta.iloc[idx].reset_index(drop=True)
    X = gather_rows(views, order)
    if reduce == "mean" and source == "all":
        meta, X = _mean_over_positions(meta, X)
    return meta, X


def _mean_over_positions(meta: pd.DataFrame, X: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    codes = meta.groupby(["layer", "prompt_id", "head"], dropna=False, sort=False).ngroup().to_numpy()
    n_groups = codes.max() + 1 if len(codes) else 0
    sums = np.zeros((n_groups, X.shape[1]), np.float64)
    np.add.at(sums, codes, X)
    counts = np.bincount(codes, minlength=n_groups)[:, None]
    first = meta.groupby(codes, sort=True).first().reset_index(drop=True)
    first["pos"] = pd.NA
    return first, (sums / counts).astype(np.float32)


def layer_stack(con: duckdb.DuckDBPyConnection, store: Store, run_id: int, hook: str = "resid_post",
                reduce: str = "last", layers: list[int] | None = None) -> tuple[list[str], list[int], np.ndarray]:
    """Per-prompt vectors of every layer as (prompt_ids, layers, X) with X (layer, prompt, d)."""
    meta, X = read_vectors(con, store, run_id, hook, layers, reduce)
    if meta["head"].notna().any():
        raise StoreError(f"'{hook}' is per head: use read_vectors for it")
    got_layers = sorted(meta["layer"].unique().tolist())
    prompts = meta.loc[meta["layer"] == got_layers[0], "prompt_id"].tolist()
    if len(meta) != len(got_layers) * len(prompts):
        raise StoreError(f"run {run_id} '{hook}' does not have every prompt at every layer: "
                         "resume the cache run to complete it")
    return prompts, got_layers, X.reshape(len(got_layers), len(prompts), -1)

