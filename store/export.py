"""Export a store as plain Parquet that any engine reads (DuckDB, Polars, Spark, pyarrow).

Layout under ``out`` (a local directory or an ``s3://`` URL)::

    activations/run_id=R/hook=H/layer=L/part-N.parquet   # hive partitions: run, hook, layer
    tables/<table>.parquet                               # runs, prompts, run_prompts, tokens, evals, ...

Activation files are the store's committed shards (only those in the manifest, never a
``.tmp``), copied byte for byte when both sides are local (or hard-linked with
``link=True``: shards are immutable), else rewritten through DuckDB. Their columns are
``prompt_id, reduce, pos, head, vec``; ``run_id, hook, layer`` come from the directories.

Every copy is verified: a local copy's CRC-32 against the one recorded at commit (or the
source's, for shards written before checksums), a rewritten one's row count against the
manifest. Exporting into the store's own shard directory is refused: the view would read
every exported shard as a second copy of its rows.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb

from store import remote
from store.db import Store, StoreError
from store.parquet import file_crc32
from store.rows import first_row


def _q(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _copy_shard(store: Store, src: str, dst: str, local: bool, link: bool, n_rows: int, crc: int | None) -> None:
    """Copy (or hard-link) one shard and verify the copy."""
    if local:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        linked = False
        if link:
            try:
                os.link(src, dst)
                linked = True
            except OSError:
                pass  # another file system: copy instead
        if not linked:
            shutil.copyfile(src, dst)
        want = crc if crc is not None else file_crc32(src)
        got = file_crc32(dst)
        if got != want:
            Path(dst).unlink(missing_ok=True)
            raise StoreError(f"the export of {src} does not match {'its recorded checksum' if crc is not None else 'it'} "
                             f"(crc32 {got:08x}, expected {want:08x}): run `invoke check --deep --store {store.path}`")
        return
    con = remote.connection()
    if not remote.is_remote(dst):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        con.execute(f"COPY (SELECT * FROM read_parquet({_q(src)})) TO {_q(dst)} "
                    "(FORMAT parquet, COMPRESSION uncompressed)")
        got = first_row(con.execute(f"SELECT count(*) FROM read_parquet({_q(dst)})"))[0]
    except duckdb.Error as e:
        raise StoreError(f"cannot copy {src} to {dst}: {str(e).splitlines()[0]}") from None
    if got != n_rows:
        raise StoreError(f"the export of {src} holds {got} rows, the manifest {n_rows}: "
                         f"run `invoke check --deep --store {store.path}`")


def _already_exported(out: str) -> bool:
    if remote.is_remote(out):
        return bool(remote.list_objects(out, "activations/**/*.parquet") or remote.list_objects(out, "tables/*"))
    p = Path(out)
    return (p / "activations").exists() or (p / "tables").exists()


def export_store(store: Store, out: str | Path, runs: list[int] | None = None, hooks: list[str] | None = None,
                 tables: bool = True, link: bool = False) -> dict[str, int]:
    """Write the store's committed shards (and its tables) under ``out``; returns counts."""
    out = str(out) if remote.is_remote(str(out)) else str(Path(out).expanduser().resolve())
    own = store.shard_root.rstrip("/")
    if out.rstrip("/") == own or out.startswith(own + "/"):
        raise StoreError(f"{out} is inside the store's own shard directory {own}: the store would read every "
                         "exported shard as a second copy of its rows; pass an --out outside it")
    if _already_exported(out):
        raise StoreError(f"{out} already holds an export: pass an empty or new --out")
    where: list[str] = ["TRUE"]
    params: list[int | str] = []
    if runs:
        where.append(f"run_id IN ({', '.join('?' * len(runs))})")
        params += list(runs)
    if hooks:
        where.append(f"hook IN ({', '.join('?' * len(hooks))})")
        params += list(hooks)
    counts = {"shards": 0, "rows": 0, "tables": 0}
    with store.connect(read_only=True) as con:
        shards = con.execute(f"SELECT path, n_rows, crc32 FROM shards WHERE {' AND '.join(where)} ORDER BY path",
                             params).fetchall()
        if (runs or hooks) and not shards:
            raise StoreError(f"no shards match runs {runs or 'any'} and hooks {hooks or 'any'}: "
                             "`invoke runs` lists the runs")
        both_local = not store.is_remote and not remote.is_remote(out)
        for rel, n_rows, crc in shards:
            _copy_shard(store, store.shard_url(rel), remote.join(out, f"activations/{rel}"), both_local, link,
                        n_rows, crc)
            counts["shards"] += 1
            counts["rows"] += n_rows
        if tables:
            if remote.is_remote(out) and not store.is_remote:
                remote.configure(con)
            names = [r[0] for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                "AND table_name <> 'meta' ORDER BY table_name").fetchall()]
            with_run = {r[0] for r in con.execute(
                "SELECT table_name FROM information_schema.columns WHERE column_name = 'run_id'").fetchall()}
            if not remote.is_remote(out):
                Path(out, "tables").mkdir(parents=True, exist_ok=True)
            for name in names:
                filt = f" WHERE run_id IN ({', '.join(map(str, runs))})" if runs and name in with_run else ""
                dst = remote.join(out, f"tables/{name}.parquet")
                try:
                    con.execute(f'COPY (SELECT * FROM "{name}"{filt}) TO {_q(dst)} (FORMAT parquet)')
                except duckdb.Error as e:
                    raise StoreError(f"cannot export table {name} to {dst}: {str(e).splitlines()[0]}") from None
                counts["tables"] += 1
    return counts
