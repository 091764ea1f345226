"""Weight-pruning tables: Wanda calibration norms, per-point and per-module sparsity, curves."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from store import tables
from store.db import transaction
from store.rows import first_row


def has_norms(con: duckdb.DuckDBPyConnection, calib_id: str) -> bool:
    return first_row(con.execute("SELECT count(*) FROM calibrations WHERE calib_id = ?", [calib_id]))[0] > 0


def write_norms(con: duckdb.DuckDBPyConnection, *, calib_id: str, run_id: int, model: str, revision: str,
                info: dict, norms: dict[tuple[int, str], np.ndarray]) -> None:
    """Store one calibration and its norms together; a calibration already stored is kept as is."""
    if has_norms(con, calib_id):
        return
    df = pd.DataFrame([{"calib_id": calib_id, "run_id": run_id, "layer": layer, "module": module,
                        "n_in": len(v), "norms": np.asarray(v, dtype=np.float32).tolist()}
                       for (layer, module), v in sorted(norms.items())],
                      columns=["calib_id", "run_id", "layer", "module", "n_in", "norms"])
    calib = pd.DataFrame([{"calib_id": calib_id, "run_id": run_id, "model": model, "revision": revision,
                           "mode": info["mode"], "spec": info.get("spec"), "dataset": info["dataset"],
                           "n_tokens": info["n_tokens"], "seconds": info.get("seconds")}])
    with transaction(con):
        tables.insert(con, "calibrations", calib)
        tables.insert(con, "input_norms", df)


def read_norms(con: duckdb.DuckDBPyConnection, calib_id: str) -> dict[tuple[int, str], np.ndarray] | None:
    """The stored norms of a calibration, or None when it is not stored."""
    if not has_norms(con, calib_id):
        return None
    df = con.execute("SELECT layer, module, norms FROM input_norms WHERE calib_id = ? ORDER BY layer, module",
                     [calib_id]).df()
    return {(int(r.layer), r.module): np.asarray(r.norms, dtype=np.float32) for r in df.itertuples()}


def done_prune_points(con: duckdb.DuckDBPyConnection, run_id: int) -> set[str]:
    return {r[0] for r in con.execute("SELECT point FROM prune_points WHERE run_id = ?", [run_id]).fetchall()}


def write_prune_point(con: duckdb.DuckDBPyConnection, point: dict, stats: pd.DataFrame) -> None:
    """Replace one point's totals and per-module rows in one transaction (idempotent on re-run)."""
    tables.replace_rows(con, {"prune_stats": stats, "prune_points": pd.DataFrame([point])},
                        run_id=point["run_id"], point=point["point"])


def read_prune_points(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    return con.execute(
        "SELECT point, method, calibration, grp, structure, modules, target_rate, sparsity, n_pruned, n_params "
        "FROM prune_points WHERE run_id = ? ORDER BY method, modules, grp, structure, target_rate", [run_id]).df()


def read_prune_stats(con: duckdb.DuckDBPyConnection, run_id: int, point: str) -> pd.DataFrame:
    return con.execute("SELECT layer, module, rate, n_params, n_pruned, n_zero, sparsity FROM prune_stats "
                       "WHERE run_id = ? AND point = ? ORDER BY layer, module", [run_id, point]).df()


def curve(con: duckdb.DuckDBPyConnection, run_id: int, task: str | None = None,
          metric: str | None = None) -> pd.DataFrame:
    """Metric against pruning rate and pruned weights (the ``prune_curve`` view), base included."""
    return con.execute(
        "SELECT point, method, calibration, grp, structure, modules, target_rate, sparsity, n_pruned, "
        "pruned_fraction, task, metric, value, stderr FROM prune_curve WHERE run_id = $run "
        "AND ($task IS NULL OR task = $task) AND ($metric IS NULL OR metric = $metric) "
        "ORDER BY task, metric, method, modules, target_rate", {"run": run_id, "task": task, "metric": metric}).df()
