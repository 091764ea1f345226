"""The ``runs`` table: provenance of every stored number, resume by config identity, and the claim
that keeps a second process off a run being computed (store/locks.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from store import locks
from store.db import StoreError
from store.rows import first_row


@dataclass(frozen=True)
class RunInfo:
    run_id: int
    status: str
    """new (just created), running (an interrupted run to resume) or complete."""
    legacy: bool = False
    """Found by ``legacy_hash``: the caller checks its content, then ``adopt_run`` or a new run."""


def _db_path(con: duckdb.DuckDBPyConnection) -> Path:
    return Path(first_row(con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"))[0]).resolve()


def claim(con: duckdb.DuckDBPyConnection, run_id: int, kind: str) -> None:
    """Claim run ``run_id`` for this process until ``finish_run`` (or its exit); another process
    computing it right now makes this a one-line StoreError."""
    store_path = _db_path(con)
    path = locks.claim_path(store_path, run_id)
    if locks.try_lock(path, store_path) is None:
        pid = locks.holder(path)
        raise StoreError(f"run {run_id} ({kind}) of {store_path.name} is being computed by process "
                         f"{pid if pid and pid > 0 else '?'} right now: wait for it to finish, then rerun the same "
                         "command (it reuses what that run stored)")


def release(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    locks.release(locks.claim_path(_db_path(con), run_id))


def claimed_by(store_path: Path, run_id: int) -> int | None:
    """The pid computing run ``run_id`` now, or None (never writes: read-only file systems work)."""
    return locks.holder(locks.claim_path(store_path, run_id))


def _find(con: duckdb.DuckDBPyConnection, kind: str, model: dict, config_hash: str) -> tuple | None:
    return con.execute(
        "SELECT run_id, status FROM runs WHERE kind = ? AND model = ? AND revision = ? AND config_hash = ? "
        "ORDER BY run_id DESC LIMIT 1",
        [kind, model["model"], model["revision"], config_hash],
    ).fetchone()


def start_run(con: duckdb.DuckDBPyConnection, *, kind: str, model: dict, backend: str | None,
              config: str, config_hash: str, code_version: str, legacy_hash: str | None = None) -> RunInfo:
    """Create a run, or return the existing one with the same model and config identity, claimed
    for this process unless it is complete (see ``claim``).

    ``model`` holds model, revision, dtype, device, n_layers and d_model (``Loaded.describe()``).
    ``legacy_hash``: the identity this kind of run had before its identity grew (docs/DESIGN.md);
    a run found by it comes back with ``legacy=True`` for the caller to verify and adopt.
    """
    row, legacy = _find(con, kind, model, config_hash), False
    if row is None and legacy_hash is not None and legacy_hash != config_hash:
        row, legacy = _find(con, kind, model, legacy_hash), True
    if row:
        if row[1] != "complete":
            claim(con, row[0], kind)
        return RunInfo(row[0], row[1], legacy)
    run_id = first_row(con.execute(
        "INSERT INTO runs (kind, model, revision, dtype, device, backend, n_layers, d_model, config, "
        "config_hash, code_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING run_id",
        [kind, model["model"], model["revision"], model["dtype"], model["device"], backend,
         model["n_layers"], model["d_model"], config, config_hash, code_version],
    ))[0]
    claim(con, run_id, kind)
    return RunInfo(run_id, "new")


def adopt_run(con: duckdb.DuckDBPyConnection, run_id: int, config: str, config_hash: str) -> None:
    """Give a verified legacy run today's identity, so the next lookup finds it directly."""
    con.execute("UPDATE runs SET config = ?, config_hash = ? WHERE run_id = ?", [config, config_hash, run_id])


def finish_run(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    con.execute("UPDATE runs SET status = 'complete', finished = current_timestamp WHERE run_id = ?", [run_id])
    release(con, run_id)


def get_run(con: duckdb.DuckDBPyConnection, run_id: int) -> dict:
    df = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df()
    if df.empty:
        raise StoreError(f"no run {run_id} in this store: `invoke runs` lists them")
    row = df.iloc[0].to_dict()
    row["config"] = json.loads(row["config"])
    return row


def list_runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute(
        "SELECT r.run_id, r.kind, r.model, r.dtype, coalesce(r.backend, '-') AS backend, r.status, "
        "(SELECT count(*) FROM run_prompts p WHERE p.run_id = r.run_id) AS prompts, "
        "(SELECT coalesce(sum(n_rows), 0) FROM shards s WHERE s.run_id = r.run_id) AS vectors, "
        "strftime(r.created, '%Y-%m-%d %H:%M') AS created, r.code_version FROM runs r ORDER BY r.run_id"
    ).df()


def models_in_store(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute(
        "SELECT model, any_value(d_model) AS d_model, any_value(n_layers) AS n_layers, count(*) AS runs "
        "FROM runs GROUP BY model ORDER BY model"
    ).df()


def latest_run(con: duckdb.DuckDBPyConnection, *, kind: str, model: str, d_model: int | None = None,
               complete_only: bool = True) -> int:
    """The newest run of ``kind`` for ``model``, with a clear error when the store has another model."""
    status = "AND status = 'complete'" if complete_only else ""
    row = con.execute(
        f"SELECT run_id, d_model FROM runs WHERE kind = ? AND model = ? {status} ORDER BY run_id DESC LIMIT 1",
        [kind, model],
    ).fetchone()
    if row is None:
        others = models_in_store(con)
        if not others.empty and model not in set(others["model"]):
            names = ", ".join(others["model"])
            raise StoreError(
                f"this store holds runs of {names}, not {model}: pass --model {others['model'].iloc[0]} "
                "or use another --store"
            )
        raise StoreError(f"no {'complete ' if complete_only else ''}{kind} run of {model} in this store: "
                         f"run `invoke cache --model {model}` first")
    if d_model is not None and row[1] != d_model:
        raise StoreError(f"run {row[0]} has d_model {row[1]} but the model has {d_model}: "
                         "the store was made by a different model")
    return row[0]
