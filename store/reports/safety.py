"""Report queries for the safety study (tables in store/schema/50_safety.sql, edits in evals)."""

from __future__ import annotations

import duckdb

from store.reports import bucket


def probe_site(con: duckdb.DuckDBPyConnection, run_id: int) -> tuple[str, str] | None:
    """(hook, position) the probe charts show: resid_post / last token when probed."""
    rows = con.execute("SELECT hook, position, count(*) AS n FROM safety_probes WHERE run_id = ? GROUP BY ALL",
                       [run_id]).fetchall()
    if not rows:
        return None
    rank = sorted(rows, key=lambda r: (r[0] != "resid_post", r[1] != "last", -r[2], r[0], r[1]))
    return rank[0][0], rank[0][1]


def probes_bucket(con: duckdb.DuckDBPyConnection, run_id: int, hook: str, position: str) -> int:
    """Layer bucket keeping the probe chart (problems x metrics x settings x layers) under MAX_CELLS."""
    layers, series = con.execute(
        "SELECT count(DISTINCT layer), count(DISTINCT (problem, metric, setting)) FROM safety_probes "
        "WHERE run_id = ? AND hook = ? AND position = ?", [run_id, hook, position]).fetchone()
    return bucket(layers, series)


def probes_sql(run_id: int, hook: str, position: str, k: int = 1) -> str:
    """Probe score per layer for every problem, metric and setting (cv, shuffled-label control, ...)."""
    if k == 1:
        return f"""SELECT problem || ' / ' || metric AS panel, problem, metric, setting, layer, mean, std, n, folds
FROM safety_probes
WHERE run_id = {int(run_id)} AND hook = '{hook}' AND position = '{position}'
ORDER BY panel, setting, layer"""
    return f"""SELECT problem || ' / ' || metric AS panel, problem, metric, setting, layer // {k} * {k} AS layer,
       avg(mean) AS mean, avg(std) AS std, min(n) AS n, min(folds) AS folds
FROM safety_probes
WHERE run_id = {int(run_id)} AND hook = '{hook}' AND position = '{position}'
GROUP BY ALL ORDER BY panel, setting, layer"""


def best_probe_sql(run_id: int, hook: str, position: str) -> str:
    """The layer that separates each problem best (cross-validated accuracy), with its controls."""
    return f"""WITH cv AS (
  SELECT problem, layer, mean AS accuracy FROM safety_probes
  WHERE run_id = {int(run_id)} AND hook = '{hook}' AND position = '{position}'
    AND setting = 'cv' AND metric = 'accuracy'
  QUALIFY row_number() OVER (PARTITION BY problem ORDER BY mean DESC, layer) = 1)
SELECT cv.problem, cv.layer, round(cv.accuracy, 4) AS accuracy,
       round(max(CASE WHEN p.setting = 'cv' AND p.metric = 'roc_auc' THEN p.mean END), 4) AS roc_auc,
       round(max(CASE WHEN p.setting = 'shuffled' AND p.metric = 'accuracy' THEN p.mean END), 4) AS shuffled_accuracy
FROM cv LEFT JOIN safety_probes p
  ON p.run_id = {int(run_id)} AND p.problem = cv.problem AND p.layer = cv.layer AND p.hook = '{hook}'
  AND p.position = '{position}'
GROUP BY ALL ORDER BY cv.problem"""


def direction_layers_sql(run_id: int) -> str:
    """Per-layer direction metrics (cosine of the mean-difference and probe directions, separation)."""
    return f"""SELECT concept || ' @ ' || hook || ' / ' || position AS direction, metric, layer, value
FROM safety_layers
WHERE run_id = {int(run_id)}
ORDER BY metric, direction, layer"""


def candidates_sql(run_id: int) -> str:
    """Selection criteria of each candidate direction (ablated everywhere), long form."""
    return f"""SELECT concept || ' @ ' || hook || ' / ' || position AS direction, layer, criterion, value
FROM (SELECT concept, hook, position, layer, separability, refusal_drop, refusal_logprob_drop, kl
      FROM safety_candidates WHERE run_id = {int(run_id)})
UNPIVOT (value FOR criterion IN (separability, refusal_drop, refusal_logprob_drop, kl))
ORDER BY criterion, direction, layer"""


def selection_sql(run_id: int) -> str:
    return f"""SELECT criterion, concept, hook, layer, position, metric, round(value, 4) AS value, reason, rule
FROM safety_selection WHERE run_id = {int(run_id)}
ORDER BY criterion = 'chosen' DESC, criterion"""


def _edits(run_id: int, where: str) -> str:
    return f"""WITH base AS (
  SELECT task, metric, value AS base_value FROM evals WHERE run_id = {int(run_id)} AND point = 'base')
SELECT e.point AS edit, json_extract_string(e.intervention, '$.kind') AS kind,
       TRY_CAST(json_extract_string(e.intervention, '$.alpha') AS DOUBLE) AS alpha, e.task || ' / ' || e.metric AS panel,
       e.value, e.stderr, e.n, b.base_value, e.value - b.base_value AS delta
FROM evals e JOIN base b USING (task, metric)
WHERE e.run_id = {int(run_id)} AND {where}
ORDER BY panel, e.point = 'base' DESC, kind, alpha, e.point"""


def edits_sql(run_id: int) -> str:
    """Every edit and the unedited model: toxicity, refusal and capability side by side."""
    return _edits(run_id, "true")


def alpha_sql(run_id: int) -> str:
    """Activation addition/subtraction: every metric against alpha."""
    return _edits(run_id, "json_extract_string(e.intervention, '$.kind') = 'activation_addition'")


def edit_effects_sql(run_id: int) -> str:
    """Before/after of each edit on the safety and capability metrics, one row per edit."""
    return f"""WITH base AS (
  SELECT task, metric, value AS base_value FROM evals WHERE run_id = {int(run_id)} AND point = 'base')
SELECT e.point AS edit, e.task, e.metric, round(b.base_value, 4) AS before, round(e.value, 4) AS after,
       round(e.value - b.base_value, 4) AS change
FROM evals e JOIN base b USING (task, metric)
WHERE e.run_id = {int(run_id)} AND e.point <> 'base'
ORDER BY e.point, e.task, e.metric"""
