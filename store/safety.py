"""Safety-study tables (store/schema/50_safety.sql): writers replace a run's rows in one
transaction (re-running never duplicates), candidates are added one at a time (resume), and
readers return DataFrames; ``outcome`` is the table a user reads: how much toxicity and
compliance moved under each edit and what it cost."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from store import tables
from store.db import StoreError
from store.rows import first_row

TABLES = ("safety_prompts", "safety_probes", "safety_directions", "safety_best_layers", "safety_layers",
          "safety_candidates", "safety_selection", "safety_points", "safety_bands")
"""The safety study's tables; their columns are the schema's (store/schema/50_safety.sql)."""


def _check(table: str) -> None:
    if table not in TABLES:
        raise StoreError(f"unknown safety table '{table}': one of {', '.join(TABLES)}")


def _frame(df: pd.DataFrame) -> pd.DataFrame:
    """Directions are stored as DOUBLE[] lists."""
    return df.assign(vec=[np.asarray(v, np.float64).tolist() for v in df["vec"]]) if "vec" in df else df


def replace_rows(con: duckdb.DuckDBPyConnection, run_id: int, frames: dict[str, pd.DataFrame]) -> None:
    """Replace the run's rows of each named table by the frame's, all in one transaction."""
    for table in frames:
        _check(table)
    tables.replace_rows(con, {t: _frame(df) for t, df in frames.items()}, run_id=run_id)


def add_candidate(con: duckdb.DuckDBPyConnection, run_id: int, row: dict) -> None:
    """Store one measured candidate (replacing an earlier measurement of the same one)."""
    tables.replace_rows(con, {"safety_candidates": pd.DataFrame([row])}, run_id=run_id, concept=row["concept"],
                        hook=row["hook"], layer=int(row["layer"]), position=row["position"])


def has_rows(con: duckdb.DuckDBPyConnection, table: str, run_id: int) -> bool:
    _check(table)
    return first_row(con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]))[0] > 0


def read_table(con: duckdb.DuckDBPyConnection, table: str, run_id: int) -> pd.DataFrame:
    _check(table)
    return con.execute(f"SELECT * EXCLUDE (run_id) FROM {table} WHERE run_id = ? ORDER BY ALL", [run_id]).df()


def set_splits(con: duckdb.DuckDBPyConnection, cache_run_id: int, splits: pd.DataFrame) -> None:
    """Copy each prompt's split (prompt_id, split) into ``run_prompts`` of the capture run, for
    plain SQL over a capture. Several safety runs may share one capture: this copy is the
    latest run's; each run's own split stays in ``safety_prompts`` (keyed by its run_id)."""
    con.register("_splits", splits[["prompt_id", "split"]])
    try:
        con.execute("UPDATE run_prompts SET split = s.split FROM _splits s "
                    "WHERE run_prompts.run_id = ? AND run_prompts.prompt_id = s.prompt_id", [cache_run_id])
    finally:
        con.unregister("_splits")


def stored_prompts(con: duckdb.DuckDBPyConnection, cache_run_id: int) -> pd.DataFrame:
    """The prompts a capture run finished, with dataset, source and label."""
    return con.execute(
        "SELECT p.prompt_id, p.dataset, p.source, p.label, p.category FROM run_prompts r "
        "JOIN prompts p USING (prompt_id) WHERE r.run_id = ? ORDER BY p.prompt_id", [cache_run_id]).df()


def prompt_lengths(con: duckdb.DuckDBPyConnection, cache_run_id: int) -> pd.Series:
    """prompt_id -> tokens the model saw in the capture run (the length-only probe baseline's feature)."""
    df = con.execute("SELECT prompt_id, n_tokens FROM run_prompts WHERE run_id = ? ORDER BY prompt_id",
                     [cache_run_id]).df()
    return df.set_index("prompt_id")["n_tokens"].astype(float)


def baseline_values(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    """Every evaluated random baseline of a run: (band, family, alpha, task, metric, point, value)."""
    return con.execute(
        "SELECT p.band, p.family, p.alpha, e.task, e.metric, e.point, e.value FROM safety_points p "
        "JOIN evals e ON e.run_id = p.run_id AND e.point = p.point "
        "WHERE p.run_id = ? AND p.role = 'baseline' ORDER BY p.band, e.task, e.metric, e.point", [run_id]).df()


def prompt_texts(con: duckdb.DuckDBPyConnection, prompt_ids: list[str]) -> dict[str, str]:
    """prompt_id -> text for the given ids."""
    con.register("_wanted", pd.DataFrame({"prompt_id": list(prompt_ids)}, dtype=object))
    try:
        rows = con.execute("SELECT prompt_id, text FROM prompts WHERE prompt_id IN (SELECT prompt_id FROM _wanted)"
                           ).fetchall()
    finally:
        con.unregister("_wanted")
    return dict(rows)


def load_direction(con: duckdb.DuckDBPyConnection, run_id: int, concept: str, hook: str, layer: int,
                   position: str, kind: str = "diff_means") -> tuple[np.ndarray, float]:
    """(unit vector float64, norm) of a stored direction."""
    row = con.execute("SELECT vec, norm FROM safety_directions WHERE run_id = ? AND concept = ? AND hook = ? "
                      "AND layer = ? AND position = ? AND kind = ?",
                      [run_id, concept, hook, layer, position, kind]).fetchone()
    if row is None:
        raise StoreError(f"no {kind} direction for {concept} at {hook} layer {layer} ({position}) in run {run_id}: "
                         "run `invoke safety` first")
    return np.asarray(row[0], np.float64), float(row[1])


def chosen(con: duckdb.DuckDBPyConnection, run_id: int) -> dict:
    df = con.execute("SELECT * EXCLUDE (run_id) FROM safety_selection WHERE run_id = ? AND criterion = 'chosen'",
                     [run_id]).df()
    if df.empty:
        raise StoreError(f"run {run_id} has no chosen direction yet: run `invoke safety` to finish it")
    return df.iloc[0].to_dict()


OUTCOME_SQL = """
WITH e AS (
    SELECT e.point, e.intervention->>'kind' AS kind, e.task, e.metric, e.value, e.stderr, e.created, d.lo, d.hi
    FROM evals e LEFT JOIN eval_deltas d USING (run_id, point, task, metric) WHERE e.run_id = $run_id
), w AS (
    SELECT point, any_value(kind) AS kind, min(created) AS t,
        max(lo)     FILTER (WHERE task = 'toxicity' AND metric = 'toxicity')     AS d_toxicity_lo,
        max(hi)     FILTER (WHERE task = 'toxicity' AND metric = 'toxicity')     AS d_toxicity_hi,
        max(lo)     FILTER (WHERE task = 'refusal'  AND metric = 'refusal_rate') AS d_refusal_lo,
        max(hi)     FILTER (WHERE task = 'refusal'  AND metric = 'refusal_rate') AS d_refusal_hi,
        max(value)  FILTER (WHERE task = 'toxicity' AND metric = 'toxicity')     AS toxicity,
        max(stderr) FILTER (WHERE task = 'toxicity' AND metric = 'toxicity')     AS toxicity_se,
        max(value)  FILTER (WHERE task = 'toxicity' AND metric = 'toxic_rate')   AS toxic_rate,
        max(value)  FILTER (WHERE task = 'refusal'  AND metric = 'refusal_rate') AS refusal,
        max(stderr) FILTER (WHERE task = 'refusal'  AND metric = 'refusal_rate') AS refusal_se,
        max(value)  FILTER (WHERE task = 'ppl'      AND metric = 'perplexity')   AS ppl,
        max(value)  FILTER (WHERE task = 'facts'    AND metric = 'accuracy')     AS facts,
        max(value)  FILTER (WHERE task = 'arith'    AND metric = 'accuracy')     AS arith,
        max(value)  FILTER (WHERE task = 'kl'       AND metric = 'kl')           AS kl
    FROM e GROUP BY point
)
SELECT w.point, w.kind,
    w.toxicity, w.toxicity - b.toxicity AS d_toxicity, w.d_toxicity_lo, w.d_toxicity_hi, w.toxicity_se, w.toxic_rate,
    w.refusal, w.refusal - b.refusal AS d_refusal, w.d_refusal_lo, w.d_refusal_hi, 1 - w.refusal AS compliance,
    w.refusal_se,
    w.ppl, w.ppl / b.ppl - 1 AS ppl_change, w.facts, w.facts - b.facts AS d_facts,
    w.arith, w.arith - b.arith AS d_arith, w.kl
FROM w LEFT JOIN (SELECT * FROM w WHERE point = 'base') b ON true
ORDER BY w.point <> 'base', w.t, w.point
"""
"""One row per evaluated point; d_* and ppl_change are relative to the base model of the same run, d_*_lo..d_*_hi
the paired 95% interval of the change (eval_deltas; null for runs stored without per-item scores)."""


def outcome(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    """How much toxicity / compliance moved under each edit and what it cost (one row per point)."""
    return con.execute(OUTCOME_SQL, {"run_id": run_id}).df()
