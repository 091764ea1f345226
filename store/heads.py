"""Head-study tables (store/schema/40_heads.sql): importance, means, agreement, sweep points and
the router (training curve, checkpoint, parameters, usage, held-out summary).

Writers replace a run's rows for what they write in one transaction, so re-running a step
never duplicates rows.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from store import tables
from store.db import transaction


def write_importance(con: duckdb.DuckDBPyConnection, run_id: int, method: str, df: pd.DataFrame) -> None:
    """All rows of one importance method (every metric, layer and head) at once; ``n_tokens`` may be
    left out (stored as NULL)."""
    tokens = df["n_tokens"].tolist() if "n_tokens" in df else [None] * len(df)
    df = df.assign(n_tokens=pd.array(tokens, dtype="Int64"))
    tables.replace_rows(con, {"heads_importance": df}, run_id=run_id, method=method)


def importance_methods(con: duckdb.DuckDBPyConnection, run_id: int) -> set[str]:
    rows = con.execute("SELECT DISTINCT method FROM heads_importance WHERE run_id = ?", [run_id]).fetchall()
    return {r[0] for r in rows}


def read_importance(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    return con.execute(
        "SELECT method, metric, layer, head, value, stderr, n, n_tokens, dataset FROM heads_importance WHERE run_id = ? "
        "ORDER BY method, metric, layer, head", [run_id]).df()


def write_means(con: duckdb.DuckDBPyConnection, run_id: int, means: np.ndarray, n_tokens: int) -> None:
    """means: (layer, head, d_head)."""
    L, H, _ = means.shape
    df = pd.DataFrame({
        "run_id": run_id, "layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
        "n_tokens": n_tokens, "vec": list(means.reshape(L * H, -1).astype(np.float32)),
    })
    tables.replace_rows(con, {"heads_means": df}, run_id=run_id)


def read_means(con: duckdb.DuckDBPyConnection, run_id: int) -> np.ndarray | None:
    df = con.execute("SELECT layer, head, vec FROM heads_means WHERE run_id = ? ORDER BY layer, head",
                     [run_id]).df()
    if df.empty:
        return None
    L, H = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    return np.stack([np.asarray(v, dtype=np.float32) for v in df["vec"]]).reshape(L, H, -1)


def write_agreement(con: duckdb.DuckDBPyConnection, run_id: int, df: pd.DataFrame) -> None:
    tables.replace_rows(con, {"heads_agreement": df}, run_id=run_id)


def read_agreement(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    return con.execute("SELECT score_a, score_b, spearman, kendall, top_n, top_overlap FROM heads_agreement "
                       "WHERE run_id = ? ORDER BY score_a, score_b", [run_id]).df()


def write_points(con: duckdb.DuckDBPyConnection, run_id: int, df: pd.DataFrame) -> None:
    tables.replace_rows(con, {"heads_points": df}, run_id=run_id)


def read_pruning(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    """Every evaluated point of the run with what it is: one row per (point, task, metric)."""
    return con.execute(
        "SELECT coalesce(p.kind, 'base') AS kind, coalesce(p.method, 'base') AS method, "
        "coalesce(p.scope, 'global') AS scope, coalesce(p.heads_off, 0) AS heads_off, "
        "coalesce(p.frac_off, 0.0) AS frac_off, e.point, e.task, e.metric, e.value, e.stderr "
        "FROM evals e LEFT JOIN heads_points p ON p.run_id = e.run_id AND p.point = e.point "
        "WHERE e.run_id = ? ORDER BY e.task, e.metric, method, heads_off", [run_id]).df()


# --- router -----------------------------------------------------------------------------------

def save_checkpoint(con: duckdb.DuckDBPyConnection, run_id: int, top_k: int, step: int, state: bytes,
                    steps: pd.DataFrame) -> None:
    """The training curve up to ``step`` and the state after it, in one transaction."""
    with transaction(con):
        if not steps.empty:
            con.execute("DELETE FROM heads_router_steps WHERE run_id = ? AND top_k = ? AND step >= ?",
                        [run_id, top_k, int(steps["step"].min())])
            tables.insert(con, "heads_router_steps", steps.assign(run_id=run_id, top_k=top_k))
        con.execute("INSERT OR REPLACE INTO heads_router_ckpt VALUES (?, ?, ?, ?)", [run_id, top_k, step, state])


def load_checkpoint(con: duckdb.DuckDBPyConnection, run_id: int, top_k: int) -> tuple[int, bytes] | None:
    row = con.execute("SELECT step, state FROM heads_router_ckpt WHERE run_id = ? AND top_k = ?",
                      [run_id, top_k]).fetchone()
    return None if row is None else (int(row[0]), bytes(row[1]))


def read_steps(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    return con.execute("SELECT top_k, step, lm_loss, lb_loss, loss, seconds FROM heads_router_steps "
                       "WHERE run_id = ? ORDER BY top_k, step", [run_id]).df()


def write_router(con: duckdb.DuckDBPyConnection, run_id: int, top_k: int, digest: str, weight: np.ndarray,
                 bias: np.ndarray, usage: pd.DataFrame, summary: dict) -> None:
    """A finished router: parameters (layer, head, d_model), usage and summary, in one transaction."""
    L, H, _ = weight.shape
    params = pd.DataFrame({
        "run_id": run_id, "top_k": top_k, "digest": digest, "layer": np.repeat(np.arange(L), H),
        "head": np.tile(np.arange(H), L), "bias": bias.reshape(-1).astype(float),
        "weight": list(weight.reshape(L * H, -1).astype(np.float32)),
    })
    summ = pd.DataFrame([{**summary, "digest": digest}])
    tables.replace_rows(con, {"heads_router_params": params, "heads_router_usage": usage,
                              "heads_router_summary": summ}, run_id=run_id, top_k=top_k)


def router_digest(con: duckdb.DuckDBPyConnection, run_id: int, top_k: int) -> str | None:
    row = con.execute("SELECT digest FROM heads_router_summary WHERE run_id = ? AND top_k = ?",
                      [run_id, top_k]).fetchone()
    return None if row is None else row[0]


def read_router_params(con: duckdb.DuckDBPyConnection, run_id: int, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight (layer, head, d_model), bias (layer, head)) of a finished router."""
    df = con.execute("SELECT layer, head, bias, weight FROM heads_router_params WHERE run_id = ? AND top_k = ? "
                     "ORDER BY layer, head", [run_id, top_k]).df()
    L, H = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    weight = np.stack([np.asarray(v, dtype=np.float32) for v in df["weight"]]).reshape(L, H, -1)
    return weight, df["bias"].to_numpy(np.float32).reshape(L, H)


def read_usage(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    return con.execute("SELECT top_k, layer, head, frequency, mean_gate, mean_prob, n_tokens FROM "
                       "heads_router_usage WHERE run_id = ? ORDER BY top_k, layer, head", [run_id]).df()


def read_router_summary(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    return con.execute("SELECT * EXCLUDE (run_id) FROM heads_router_summary WHERE run_id = ? ORDER BY top_k",
                       [run_id]).df()
