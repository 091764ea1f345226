"""Integrity check of a store: the manifest against the shard files, row counts, duplicates,
interrupted writes and runs, evaluation duplicates; with ``deep=True`` every byte of every
shard against the CRC-32 recorded when it was written.

``check_store(store)`` never writes (it works on a read-only file system). ``repair(store)``
does only what is provably safe under the write lock: finish the rename of committed ``.tmp``
shards, delete uncommitted ones, and migrate an older store (which removes result rows stored
twice, keeping the first); anything else is reported with what to do, never "fixed" by
deleting data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from store import locks, remote
from store.activations import recover
from store.db import Store, StoreError, _open, ensure_schema
from store.layers import NULLABLE_KEYS
from store.parquet import file_crc32
from store.rows import first_row
from store.runs import claimed_by


@dataclass(frozen=True)
class Finding:
    check: str
    """Short name of the check (manifest, rows, duplicates, ...)."""
    ok: bool
    message: str
    """One line: what was found and, when it is a problem, what to do."""
    repairable: bool = False
    """``check --repair`` fixes it."""


@dataclass
class Report:
    store: Path
    findings: list[Finding] = field(default_factory=list)
    writer_pid: int | None = None
    """A process holding the write lock while the check ran (its in-flight work is skipped)."""

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, check: str, problems: list[str], ok_message: str, repairable: bool = False) -> None:
        if problems:
            self.findings += [Finding(check, False, p, repairable) for p in problems]
        else:
            self.findings.append(Finding(check, True, ok_message))


def writer_pid(store: Store) -> int | None:
    """The pid holding the store's write lock, or None when nobody is writing."""
    return locks.holder(store.lock_path)


def _first(items: list, n: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _file_facts(store: Store, rel: str) -> tuple[int, int] | str:
    """(rows, bytes) of a shard from its footer, or a string saying why it cannot be read."""
    url = store.shard_url(rel)
    try:
        if store.is_remote:
            return remote.object_rows(url)
        meta = pq.ParquetFile(url).metadata
        return meta.num_rows, Path(url).stat().st_size
    except FileNotFoundError:
        return "missing"
    except (OSError, remote.RemoteError, ValueError) as e:  # pyarrow raises OSError/ArrowInvalid
        return f"unreadable ({str(e).splitlines()[0][:120]})"


def _files_on_storage(store: Store) -> tuple[set[str], list[str]]:
    """(committed-looking shard paths relative to the root, leftover .tmp paths)."""
    if store.is_remote:
        root = store.remote_url.rstrip("/") + "/"
        names = [u[len(root):] for u in remote.list_objects(store.remote_url, "**/*.parquet*")]
    else:
        if not store.shard_dir.exists():
            return set(), []
        names = [str(p.relative_to(store.shard_dir)) for p in store.shard_dir.rglob("*.parquet*")]
    parquet = {n for n in names if n.endswith(".parquet") and not n.startswith("run_id=0/")}
    tmps = sorted(n for n in names if n.endswith(".tmp"))  # .parquet.tmp, and Ray workers' .parquet.w*.tmp
    return parquet, tmps


def _check_files(con: duckdb.DuckDBPyConnection, store: Store, report: Report, busy_runs: set[int]) -> None:
    manifest = con.execute("SELECT run_id, path, n_rows, n_bytes FROM shards ORDER BY run_id, path").fetchall()
    on_storage, tmps = _files_on_storage(store)
    listed = {r[1] for r in manifest}
    missing, bad_rows, unreadable = [], [], []
    for run_id, rel, n_rows, n_bytes in manifest:
        if run_id in busy_runs and rel not in on_storage:
            continue  # committed a moment ago; the writer renames it next
        facts = _file_facts(store, rel)
        if facts == "missing":
            missing.append(rel)
        elif isinstance(facts, str):
            unreadable.append(f"{rel} {facts}")
        elif facts != (n_rows, n_bytes):
            bad_rows.append(f"{rel} has {facts[0]} rows/{facts[1]} bytes, manifest {n_rows}/{n_bytes}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} shard(s) in the manifest are missing from {store.shard_root}: "
                        f"{_first(missing)}; restore them or re-cache the run into a new store")
    if unreadable:
        problems.append(f"{len(unreadable)} shard(s) cannot be read: {_first(unreadable, 2)}; "
                        "restore them or re-cache the run into a new store")
    if bad_rows:
        problems.append(f"{len(bad_rows)} shard(s) differ from the manifest (truncated or replaced): "
                        f"{_first(bad_rows, 2)}")
    report.add("manifest", problems, f"{len(manifest)} shard(s) match their files (rows and bytes)")

    strays = sorted(on_storage - listed)
    busy_prefixes = tuple(f"run_id={r}/" for r in busy_runs)
    strays = [s for s in strays if not s.startswith(busy_prefixes)] if busy_prefixes else strays
    if store.is_remote:
        report.add("unlisted", [(f"{len(strays)} object(s) not in the manifest (left by an interrupted commit; "
                                f"the view ignores them, a resumed run overwrites them): {_first(strays)}")]
                   if strays else [], "no objects outside the manifest")
    else:
        report.add("unlisted", [(f"{len(strays)} .parquet file(s) not in the manifest are visible to SQL but not "
                                f"part of the store: {_first(strays)}; move them out of {store.shard_dir}")]
                   if strays else [], "no shard files outside the manifest")
    tmps = [t for t in tmps if not t.startswith(busy_prefixes)] if busy_prefixes else tmps
    report.add("tmp", [(f"{len(tmps)} unfinished .tmp shard file(s) from an interrupted write: "
                       f"{_first(tmps, 2)}; `invoke check --repair` (or the next cache run) finishes or removes them")]
               if tmps else [], "no unfinished .tmp files", repairable=True)


_DUPLICATES = """
SELECT run_id, hook, layer, prompt_id, reduce, pos, head, count(*) AS n FROM ({src})
GROUP BY ALL HAVING count(*) > 1 ORDER BY n DESC LIMIT 5
"""
# Per (run, hook, layer, reduce): prompts with vectors vs prompts the run finished, and
# per-token rows vs the tokens the run recorded.
_COVERAGE = """
WITH a AS (
    SELECT run_id, hook, layer, reduce, prompt_id, count(DISTINCT pos) AS n_pos
    FROM ({src}) GROUP BY ALL
), g AS (
    SELECT a.run_id, a.hook, a.layer, a.reduce, count(*) AS n_prompts,
           count(*) FILTER (WHERE rp.prompt_id IS NULL) AS unknown,
           count(*) FILTER (WHERE a.reduce = 'all' AND a.n_pos <> rp.n_tokens) AS short
    FROM a LEFT JOIN run_prompts rp USING (run_id, prompt_id) GROUP BY ALL
)
SELECT g.*, (SELECT count(*) FROM run_prompts r WHERE r.run_id = g.run_id) AS expected
FROM g WHERE unknown > 0 OR short > 0 OR n_prompts <> expected
ORDER BY run_id, hook, layer, reduce
"""


def _check_rows(con: duckdb.DuckDBPyConnection, report: Report, busy_runs: set[int]) -> None:
    busy = f"WHERE run_id NOT IN ({', '.join(map(str, busy_runs))})" if busy_runs else ""
    src = f"SELECT run_id, hook, layer, prompt_id, reduce, pos, head FROM activations {busy}"
    try:
        dups = con.execute(_DUPLICATES.format(src=src)).fetchall()
        gaps = con.execute(_COVERAGE.format(src=src)).fetchall()
    except duckdb.Error as e:
        report.add("rows", [(f"cannot scan the activations view: {str(e).splitlines()[0][:200]}; "
                            "a shard file is damaged (see the manifest check)")], "")
        return
    report.add("duplicates", [f"{len(dups)}+ vector(s) stored more than once, e.g. run {d[0]} {d[1]} layer {d[2]} "
                              f"prompt {d[3]} ({d[4]}, pos {d[5]}, head {d[6]}) x{d[7]}" for d in dups[:1]],
               "no vector stored twice per (run, prompt, hook, layer, reduce, pos, head)")
    report.add("coverage", [f"run {g[0]} {g[1]} layer {g[2]} ({g[3]}): vectors for {g[4]} prompt(s), the run finished "
                            f"{g[7]}; {g[5]} unknown, {g[6]} with missing positions" for g in gaps[:5]],
               "every finished prompt has its vectors at every stored hook and layer")
    tok = con.execute(f"""
        SELECT rp.run_id, rp.prompt_id, rp.n_tokens, count(t.pos), count(DISTINCT t.pos)
        FROM run_prompts rp LEFT JOIN tokens t USING (run_id, prompt_id)
        {busy.replace('run_id', 'rp.run_id')} GROUP BY ALL
        HAVING count(t.pos) <> rp.n_tokens OR count(DISTINCT t.pos) <> count(t.pos) LIMIT 5""").fetchall()
    report.add("tokens", [f"run {t[0]} prompt {t[1]}: {t[3]} token rows ({t[4]} distinct) for {t[2]} tokens"
                          for t in tok], "tokens match every finished prompt")
    orphans = con.execute("SELECT DISTINCT rp.prompt_id FROM run_prompts rp ANTI JOIN prompts p USING (prompt_id) "
                          "LIMIT 5").fetchall()
    report.add("prompts", [f"run_prompts name prompt(s) missing from prompts: {_first([o[0] for o in orphans])}"]
               if orphans else [], "every finished prompt has its text")


def _check_tables(con: duckdb.DuckDBPyConnection, report: Report, busy_runs: set[int]) -> None:
    busy = f" AND run_id NOT IN ({', '.join(map(str, busy_runs))})" if busy_runs else ""
    stuck = con.execute(f"SELECT run_id, kind, strftime(created, '%Y-%m-%d %H:%M') FROM runs "
                        f"WHERE status <> 'complete'{busy} ORDER BY run_id").fetchall()
    report.add("runs", [f"run {r[0]} ({r[1]}, started {r[2]}) did not finish: re-run the same command to resume it"
                        for r in stuck], "every run is complete")
    dups = con.execute("SELECT run_id, point, task, metric, count(*) FROM evals GROUP BY ALL HAVING count(*) > 1 "
                       "ORDER BY run_id LIMIT 5").fetchall()
    report.add("evals", [f"run {d[0]} point '{d[1]}' {d[2]}/{d[3]} stored {d[4]} times" for d in dups],
               "no evaluation stored twice per (run, point, task, metric)")
    repeated = []
    for table, key in NULLABLE_KEYS.items():  # keys the database cannot hold (a NULL-able column)
        cols = ", ".join(["run_id", *key])
        n = first_row(con.execute(f"SELECT count(*) FROM (SELECT {cols} FROM {table} GROUP BY ALL HAVING count(*) > 1)"
                        ))[0]
        if n:
            repeated.append(f"{table}: {n} key(s) stored more than once")
    report.add("keys", [f"{'; '.join(repeated)}: delete the extra copies with `invoke sql --write` or re-run the "
                        "study into a new store"] if repeated else [],
               "no result row stored twice under its natural key")
    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'run_id' "
        "AND table_name NOT IN ('runs', 'activations') ORDER BY table_name").fetchall()]
    orphan = []
    for t in tables:
        n = first_row(con.execute(f'SELECT count(*) FROM "{t}" WHERE run_id NOT IN (SELECT run_id FROM runs)'))[0]
        if n:
            orphan.append(f"{t}: {n} row(s)")
    report.add("provenance", [f"rows whose run_id is not in runs: {_first(orphan)}"] if orphan else [],
               f"every row of {len(tables)} table(s) traces to a run")


def _check_bytes(con: duckdb.DuckDBPyConnection, store: Store, report: Report, busy_runs: set[int]) -> None:
    """Every byte of every shard: the CRC-32 recorded at commit, or (shards written before checksums,
    or through object storage) a full decode of every page."""
    rows = con.execute("SELECT run_id, path, n_bytes, crc32 FROM shards ORDER BY run_id, path").fetchall()
    bad, unchecked = [], 0
    for run_id, rel, n_bytes, crc in rows:
        if run_id in busy_runs:
            continue
        url = store.shard_url(rel)
        try:
            if crc is not None and not store.is_remote:
                got = file_crc32(url)
                if got != crc:
                    bad.append(f"{rel} (crc32 {got:08x}, recorded {crc:08x})")
                continue
            unchecked += 1
            if store.is_remote:
                remote.read_table(url, ["prompt_id", "vec"])
            else:
                pq.read_table(url, use_threads=False)
        except FileNotFoundError:
            continue  # the manifest check reports it
        except (OSError, ValueError, remote.RemoteError) as e:
            bad.append(f"{rel} ({str(e).splitlines()[0][:100]})")
    note = f" ({unchecked} without a recorded checksum were decoded in full)" if unchecked else ""
    report.add("bytes", [f"{len(bad)} shard(s) are damaged: {_first(bad, 2)}; restore them or re-cache the run "
                         "into a new store"] if bad else [],
               f"every byte of {len(rows)} shard(s) verified{note}")


def busy_runs(store: Store, con: duckdb.DuckDBPyConnection, writer: int | None) -> set[int]:
    """Runs another process is computing right now (it holds their claim), and while the shard
    writer is live, every running run (its commit in flight may not be renamed yet). A claim this
    process holds does not count: a run that failed in a library caller is reported as unfinished."""
    running = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status <> 'complete'").fetchall()]
    return {r for r in running if writer is not None or claimed_by(store.path, r) not in (None, os.getpid())}


def check_store(store: Store, deep: bool = False) -> Report:
    """Check everything (``deep``: also every shard's bytes); raises StoreError only when the
    store cannot be opened at all."""
    report = Report(store.path, writer_pid=writer_pid(store))
    with store.connect(read_only=True) as con:
        busy = busy_runs(store, con, report.writer_pid)
        if busy and report.writer_pid is None:
            report.writer_pid = next(p for p in (claimed_by(store.path, r) for r in sorted(busy)) if p)
        try:
            _check_files(con, store, report, busy)
            if deep:
                _check_bytes(con, store, report, busy)
        except remote.RemoteError as e:
            report.add("manifest", [str(e)], "")
        _check_rows(con, report, busy)
        _check_tables(con, report, busy)
    return report


def repair(store: Store) -> dict:
    """Finish or discard interrupted shard writes and migrate an older store (never touches
    committed data, except result rows stored twice, of which the first is kept).

    Returns {"renamed": n, "deleted": n, "notes": [what a migration changed]}."""
    if not store.path.exists():
        raise StoreError(f"no store at {store.path}: nothing to repair")
    with store.write_lock():
        con = _open(store.path, False, None)
        try:
            notes = ensure_schema(con, store)
        finally:
            con.close()
        return {**recover(store), "notes": notes}
