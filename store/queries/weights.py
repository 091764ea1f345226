"""Report queries for the weight-pruning study (tables in store/schema/30_weights.sql)."""

from __future__ import annotations

import duckdb

from store.rows import first_row

# A readable name for one pruning recipe: method (+ calibration), group, structure.
RECIPE = ("p.method || coalesce(' ' || p.calibration, '') || ' / ' || p.grp "
          "|| CASE WHEN p.structure <> 'unstructured' THEN ' ' || p.structure ELSE '' END")


def _curve(run_id: int, where: str) -> str:
    return f"""WITH base AS (
  SELECT task, metric, value AS base_value FROM evals WHERE run_id = {int(run_id)} AND point = 'base')
SELECT {RECIPE} AS recipe, p.modules, p.modules || ' · ' || {RECIPE} AS series, p.target_rate, round(p.sparsity, 4) AS sparsity, p.n_pruned,
       p.n_params, round(p.n_pruned / p.total_params, 4) AS pruned_fraction, e.point,
       e.task || ' / ' || e.metric AS panel, e.value, e.stderr, b.base_value
FROM evals e JOIN prune_points p ON p.run_id = e.run_id AND p.point = e.point
JOIN base b USING (task, metric)
WHERE e.run_id = {int(run_id)} AND p.method <> 'base' AND {where}
ORDER BY panel, recipe, p.modules, p.target_rate"""


def rate_curve_sql(run_id: int) -> str:
    """Metric against pruning rate when every module is pruned, per recipe."""
    return _curve(run_id, "p.modules = 'all'")


def module_curve_sql(run_id: int) -> str:
    """Metric against rate and against pruned weights, per module group (q, k, ..., attn, mlp, all)."""
    return _curve(run_id, "p.structure = 'unstructured'")


def has_module_groups(con: duckdb.DuckDBPyConnection, run_id: int) -> bool:
    """Whether the run pruned some module groups on their own (not only every module at once)."""
    return first_row(con.execute("SELECT count(*) > 0 FROM prune_points WHERE run_id = ? AND method <> 'base' "
                       "AND modules <> 'all'", [run_id]))[0]


def sparsity_sql(run_id: int) -> str:
    """Sparsity reached per module (summed over layers) at every point, against the rate asked."""
    return f"""SELECT s.point, s.module, round(avg(s.rate), 4) AS rate_asked,
       round(sum(s.n_zero) / sum(s.n_params), 4) AS sparsity, sum(s.n_pruned) AS n_pruned,
       sum(s.n_params) AS n_params
FROM prune_stats s JOIN prune_points p USING (run_id, point)
WHERE s.run_id = {int(run_id)} AND p.method <> 'base'
GROUP BY ALL ORDER BY s.point, s.module"""


def module_sizes_sql(run_id: int) -> str:
    """Weights per module type (all layers): why an MLP rate removes 3-4x more weights than attention."""
    return f"""SELECT module, sum(n_params) AS n_params
FROM prune_stats
WHERE run_id = {int(run_id)} AND point = (SELECT min(point) FROM prune_points
                                          WHERE run_id = {int(run_id)} AND modules = 'all' AND method <> 'base')
GROUP BY module ORDER BY n_params DESC, module"""


def methods_at_sql(run_id: int, rate: float = 0.5) -> str:
    """The best unstructured point of each method at one rate of every module: perplexity against base."""
    return f"""WITH base AS (
  SELECT value FROM evals WHERE run_id = {int(run_id)} AND point = 'base' AND metric = 'perplexity' LIMIT 1)
SELECT p.method, {RECIPE} AS recipe, p.target_rate, round(p.sparsity, 4) AS sparsity,
       round(e.value, 3) AS perplexity, round((SELECT value FROM base), 3) AS base_perplexity
FROM evals e JOIN prune_points p ON p.run_id = e.run_id AND p.point = e.point
WHERE e.run_id = {int(run_id)} AND e.metric = 'perplexity' AND p.modules = 'all'
  AND p.structure = 'unstructured' AND abs(p.target_rate - {float(rate)}) < 1e-9 AND p.method <> 'base'
QUALIFY row_number() OVER (PARTITION BY p.method ORDER BY e.value, p.point) = 1
ORDER BY perplexity, p.method"""


def methods_by_group_at_sql(run_id: int, rate: float = 0.5) -> str:
    """The best unstructured point of each method at one rate, per module group ('all', 'attn', 'k', ...)."""
    return f"""WITH base AS (
  SELECT value FROM evals WHERE run_id = {int(run_id)} AND point = 'base' AND metric = 'perplexity' LIMIT 1)
SELECT p.modules, p.method, {RECIPE} AS recipe, p.target_rate, p.n_params, round(p.sparsity, 4) AS sparsity,
       round(e.value, 3) AS perplexity, round((SELECT value FROM base), 3) AS base_perplexity
FROM evals e JOIN prune_points p ON p.run_id = e.run_id AND p.point = e.point
WHERE e.run_id = {int(run_id)} AND e.metric = 'perplexity' AND p.structure = 'unstructured'
  AND abs(p.target_rate - {float(rate)}) < 1e-9 AND p.method <> 'base'
QUALIFY row_number() OVER (PARTITION BY p.modules, p.method ORDER BY e.value, p.point) = 1
ORDER BY p.modules, perplexity"""


def headline_group_sql(run_id: int, rate: float = 0.5) -> str:
    """``methods_by_group_at_sql`` for the one module group a headline names: every module when the run
    pruned them all at once, else the group most methods pruned (then the largest, then by name)."""
    return f"""WITH m AS ({methods_by_group_at_sql(run_id, rate)}),
g AS (SELECT modules FROM m GROUP BY modules
      ORDER BY modules = 'all' DESC, count(DISTINCT method) DESC, max(n_params) DESC, modules LIMIT 1)
SELECT m.* FROM m JOIN g USING (modules) ORDER BY perplexity, recipe"""
