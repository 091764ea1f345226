"""The ``runs`` table: provenance of every stored number, and resume by config identity."""

from __future__ import annotations

import json
from dataclasses import dataclass

import duckdb
import pandas as pd

from store.db import StoreError


@dataclass(frozen=True)
class RunInfo:
    run_id: int
    status: str
    """new (just created), running (an interrupted run to resume) or complete."""


def start_run(con: duckdb.DuckDBPyConnection, *, kind: str, model: dict, backend: str | None,
              config: str, config_hash: str, code_version: str) -> RunInfo:
    """Create a run, or return the existing one with the same model and config identity.

    ``model`` holds model, revision, dtype, device, n_layers and d_model (``Loaded.describe()``).
    """
    row = con.execute(
        "SELECT run_id, status FROM runs WHERE kind = ? AND model = ? AND revision = ? AND config_hash = ? "
        "ORDER BY run_id DESC LIMIT 1",
        [kind, model["model"], model["revision"], config_hash],
    ).fetchone()
    if row:
        return RunInfo(row[0], row[1])
    run_id = con.execute(
        "INSERT INTO runs (kind, model, revision, dtype, device, backend, n_layers, d_model, config, "
        "config_hash, code_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING run_id",
        [kind, model["model"], model["revision"], model["dtype"], model["device"], backend,
         model["n_layers"], model["d_model"], config, config_hash, code_version],
    ).fetchone()[0]
    return RunInfo(run_id, "new")


def finish_run(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    con.execute("UPDATE runs SET status = 'complete', finished = current_timestamp WHERE run_id = ?", [run_id])


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
