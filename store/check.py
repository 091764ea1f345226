"""Integrity check of a store: the manifest against the shard files, row counts, duplicates,
interrupted writes and runs, evaluation duplicates.

``check_store(store)`` never writes. ``repair(store)`` does only what is provably safe
(finish the rename of committed ``.tmp`` shards, delete uncommitted ones) under the
write lock; anything else is reported with what to do, never "fixed" by deleting data.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from store import remote
from store.activations import recover
from store.db import Store, StoreError


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
    if not store.lock_path.exists():
        return None
    with open(store.lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            text = fh.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


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
        root = store.shards.rstrip("/") + "/"
        names = [u[len(root):] for u in remote.list_objects(store.shards, "**/*.parquet*")]
    else:
        if not store.shard_dir.exists():
            return set(), []
        names = [str(p.relative_to(store.shard_dir)) for p in store.shard_dir.rglob("*.parquet*")]
    parquet = {n for n in names if n.endswith(".parquet") and not n.startswith("run_id=0/")}
    tmps = sorted(n for n in names if n.endswith(".parquet.tmp"))
    return parquet, tmps


def _check_files(con, store: Store, report: Report, busy_runs: set[int]) -> None:
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


def _check_rows(con, report: Report, busy_runs: set[int]) -> None:
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


def _check_tables(con, report: Report, busy_runs: set[int]) -> None:
    busy = f" AND run_id NOT IN ({', '.join(map(str, busy_runs))})" if busy_runs else ""
    stuck = con.execute(f"SELECT run_id, kind, strftime(created, '%Y-%m-%d %H:%M') FROM runs "
                        f"WHERE status <> 'complete'{busy} ORDER BY run_id").fetchall()
    report.add("runs", [f"run {r[0]} ({r[1]}, started {r[2]}) did not finish: re-run the same command to resume it"
                        for r in stuck], "every run is complete")
    dups = con.execute("SELECT run_id, point, task, metric, count(*) FROM evals GROUP BY ALL HAVING count(*) > 1 "
                       "ORDER BY run_id LIMIT 5").fetchall()
    report.add("evals", [f"run {d[0]} point '{d[1]}' {d[2]}/{d[3]} stored {d[4]} times" for d in dups],
               "no evaluation stored twice per (run, point, task, metric)")
    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'run_id' "
        "AND table_name NOT IN ('runs', 'activations') ORDER BY table_name").fetchall()]
    orphan = []
    for t in tables:
        n = con.execute(f'SELECT count(*) FROM "{t}" WHERE run_id NOT IN (SELECT run_id FROM runs)').fetchone()[0]
        if n:
            orphan.append(f"{t}: {n} row(s)")
    report.add("provenance", [f"rows whose run_id is not in runs: {_first(orphan)}"] if orphan else [],
               f"every row of {len(tables)} table(s) traces to a run")


def check_store(store: Store) -> Report:
    """Check everything; raises StoreError only when the store cannot be opened at all."""
    report = Report(store.path, writer_pid=writer_pid(store))
    with store.connect(read_only=True) as con:
        busy_runs: set[int] = set()
        if report.writer_pid is not None:
            busy_runs = {r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'running'").fetchall()}
        try:
            _check_files(con, store, report, busy_runs)
        except remote.RemoteError as e:
            report.add("manifest", [str(e)], "")
        _check_rows(con, report, busy_runs)
        _check_tables(con, report, busy_runs)
    return report


def repair(store: Store) -> dict[str, int]:
    """Finish or discard interrupted shard writes (never touches committed data)."""
    if not store.path.exists():
        raise StoreError(f"no store at {store.path}: nothing to repair")
    with store.write_lock():
        return recover(store)
