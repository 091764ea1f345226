"""Report queries: every chart's data, aggregated in SQL so no chart needs more than a few
thousand rows. Each function returns the literal SQL (run ids are inlined integers), so the
report can show it and a user can rerun it unchanged with `invoke sql`. Report SQL never
contains double quotes (it is shown inside a double-quoted shell argument).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb
import pandas as pd

from store.db import Store, StoreError
from store.rows import first_row

STUDIES = ("layers", "weights", "heads", "safety")
"""The studies that get a report page, in page order."""

MAX_CELLS = 4900
"""Most rows a heat-map query returns (Altair refuses more than 5000 inline rows)."""


@contextlib.contextmanager
def open_report_store(store: Store) -> Iterator[duckdb.DuckDBPyConnection]:
    """Read-only connection to an interp store that holds at least one run."""
    with store.connect(read_only=True) as con:
        if not first_row(con.execute("SELECT count(*) FROM runs"))[0]:
            raise StoreError(f"store {store.path} holds no runs yet: run `invoke demo` (or any study) first")
        yield con


def fetch(con: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame:
    return con.execute(sql).df()


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(first_row(con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]))[0])


def has_rows(con: duckdb.DuckDBPyConnection, table: str, run_id: int | None = None) -> bool:
    if not table_exists(con, table):
        return False
    where = f" WHERE run_id = {int(run_id)}" if run_id is not None else ""
    return first_row(con.execute(f"SELECT EXISTS (SELECT 1 FROM {table}{where})"))[0]


def bucket(n: int, other: int | None = None) -> int:
    """Smallest bucket width k so an n x n grid (or n x ``other``) of ceil(n/k) buckets fits in MAX_CELLS."""
    k = 1
    while (-(-n // k)) * (other if other else -(-n // k)) > MAX_CELLS and k < n:
        k += 1
    return k


def stored_rows(con: duckdb.DuckDBPyConnection, run_id: int) -> list[tuple[str, int]]:
    """(table, rows) of every base table holding rows of ``run_id``, by table name; cached activations count
    as the vectors their Parquet shards hold (table ``activations``)."""
    tables = [r[0] for r in con.execute(
        "SELECT DISTINCT c.table_name FROM information_schema.columns c JOIN information_schema.tables t "
        "ON t.table_name = c.table_name AND t.table_schema = c.table_schema "
        "WHERE c.column_name = 'run_id' AND t.table_type = 'BASE TABLE' AND c.table_name <> 'runs' "
        "ORDER BY c.table_name").fetchall()]
    out = []
    for t in tables:
        n = first_row(con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id]))[0]
        if n and t == "shards":
            out.append(("activations", int(first_row(con.execute(
                "SELECT coalesce(sum(n_rows), 0) FROM shards WHERE run_id = ?", [run_id]))[0])))
        elif n:
            out.append((t, int(n)))
    return out


def cache_run_of(con: duckdb.DuckDBPyConnection, run_id: int) -> int | None:
    """The cache run a study run read its activations from (runs.config cache_run_id), if any."""
    row = con.execute("SELECT TRY_CAST(json_extract_string(config, '$.cache_run_id') AS INTEGER) FROM runs "
                      "WHERE run_id = ?", [run_id]).fetchone()
    return row[0] if row and row[0] is not None else None


# --- provenance ---------------------------------------------------------------------------

def runs_sql() -> str:
    return """SELECT run_id, kind, model, left(revision, 12) AS revision, dtype, device, status,
       strftime(created, '%Y-%m-%d %H:%M') AS created, code_version
FROM runs ORDER BY run_id"""


def run_configs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return fetch(con, "SELECT run_id, kind, config FROM runs ORDER BY run_id")


def study_run(con: duckdb.DuckDBPyConnection, study: str) -> int | None:
    """The run a study page shows: the newest complete run of that kind, else the newest one."""
    row = con.execute(
        "SELECT run_id FROM runs WHERE kind = ? ORDER BY status = 'complete' DESC, run_id DESC LIMIT 1",
        [study]).fetchone()
    return row[0] if row else None


def other_runs(con: duckdb.DuckDBPyConnection, study: str, shown: int) -> list[int]:
    return [r[0] for r in con.execute(
        "SELECT run_id FROM runs WHERE kind = ? AND run_id <> ? ORDER BY run_id", [study, shown]).fetchall()]


def run_model(con: duckdb.DuckDBPyConnection, run_id: int) -> dict:
    row = con.execute("SELECT model, n_layers, d_model, status FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if row is None:
        raise StoreError(f"the store has no run {run_id}")
    return {"model": row[0], "n_layers": row[1], "d_model": row[2], "status": row[3]}


# --- evaluations (every study's sweep) ----------------------------------------------------

VERDICT = """CASE WHEN {v}.point = 'base' THEN 'base model' WHEN {v}.noise IS NULL THEN 'no per-item scores'
            WHEN {v}.noise THEN 'within noise (95% CI of the change includes 0)'
            ELSE 'detectable change (95% CI excludes 0)' END"""
"""The verdict label of a row of eval_vs_base (alias {v}): the report marks differences inside the noise."""


def eval_points_sql(run_id: int) -> str:
    """Every point of a sweep with the base model's value of the same task and metric, the paired 95%
    interval of the point's value (base + the interval of the change) and the p-value of the change (of an
    lm-eval group, only the group's own rows: its subgroups and tasks, e.g. MMLU's 57 subjects, are on the
    lm-eval page)."""
    return f"""SELECT v.point, v.task, v.metric, v.task || ' / ' || v.metric AS panel, v.value, v.stderr, v.n,
       v.base_value, v.delta, v.base_value + v.lo AS lo, v.base_value + v.hi AS hi, v.p,
       {VERDICT.format(v="v")} AS verdict
FROM eval_vs_base v
WHERE v.run_id = {int(run_id)}
  AND ((v.dataset->>'requested') IS NULL OR (v.dataset->>'name') = (v.dataset->>'requested'))
ORDER BY v.task, v.metric, v.point = 'base' DESC, v.point"""


SKIP_MDE = ("nll", "norm_loss", "accuracy_norm")
"""Metrics left out of the detectable-effect summary (perplexity, accuracy say the same)."""


def mde_sql(run_id: int) -> str:
    """What the run's budget can detect: per task and metric, the median over the sweep's points of the
    smallest change detectable at alpha 0.05 with power 0.8 (eval_deltas.mde: from each point's spread of
    per-item differences), relative to the base value too; points whose items never moved have no estimate."""
    skip = ", ".join(f"'{m}'" for m in SKIP_MDE)
    return f"""SELECT d.task, d.metric, min(d.n) AS items, count(*) FILTER (WHERE isfinite(d.mde)) AS points,
       median(d.mde) FILTER (WHERE isfinite(d.mde)) AS mde,
       median(d.mde / nullif(abs(d.base_value), 0)) FILTER (WHERE isfinite(d.mde)) AS mde_relative,
       any_value(d.base_value) AS base_value
FROM eval_deltas d
WHERE d.run_id = {int(run_id)} AND d.metric NOT IN ({skip})
GROUP BY d.task, d.metric
ORDER BY d.task, d.metric"""


def eval_summary_sql() -> str:
    """The base model's scores in every run that evaluated it (one row per run, task, metric)."""
    return """SELECT r.run_id, r.kind AS study, r.model, e.task, e.metric, e.value, e.stderr, e.n, e.chance
FROM evals e JOIN runs r USING (run_id)
WHERE e.point = 'base'
ORDER BY r.run_id, e.task, e.metric"""
