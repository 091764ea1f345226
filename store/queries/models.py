"""Report queries for the model-comparison page: several models of one store overlaid where the
literature compares them (Gromov et al.'s loss against the fraction of layers dropped, perplexity
against the fraction of weights pruned, probe accuracy against relative depth).

Each model contributes its newest complete run of each study (else its newest run), so a store
holding a quick and a full run of one model does not mix them.
"""

from __future__ import annotations

import duckdb


def _newest(kind: str) -> str:
    """The run of ``kind`` each model contributes: newest complete, else newest."""
    return f"""SELECT run_id, model, n_layers FROM runs WHERE kind = '{kind}'
QUALIFY row_number() OVER (PARTITION BY model ORDER BY status = 'complete' DESC, run_id DESC) = 1"""


def study_models(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Models with at least one study run (layers, weights, heads or safety), sorted."""
    return [r[0] for r in con.execute(
        "SELECT DISTINCT model FROM runs WHERE kind IN ('layers', 'weights', 'heads', 'safety') ORDER BY model"
    ).fetchall()]


def models_sql() -> str:
    """Each model with its size and the runs this page reads."""
    return """SELECT model, max(n_layers) AS n_layers, max(d_model) AS d_model,
       string_agg(kind || ' ' || run_id, ', ' ORDER BY kind) AS runs_shown
FROM (SELECT run_id, kind, model, n_layers, d_model FROM runs WHERE kind IN ('layers', 'weights', 'heads', 'safety')
      QUALIFY row_number() OVER (PARTITION BY model, kind ORDER BY status = 'complete' DESC, run_id DESC) = 1)
GROUP BY model ORDER BY model"""


def layer_drop_sql() -> str:
    """Perplexity and normalised loss (NLL / log V) against the fraction of layers dropped, per model and
    strategy (random blocks averaged over seeds); each strategy's curve starts at the unpruned model."""
    return f"""WITH chosen AS ({_newest('layers')}),
drops AS (
  SELECT c.model, d.strategy, d.n, d.metric, avg(d.value) AS value, any_value(d.base_value) AS base_value,
         round(d.n / c.n_layers, 4) AS fraction_dropped
  FROM layer_drops d JOIN chosen c USING (run_id)
  WHERE d.task = 'ppl' AND d.metric IN ('perplexity', 'norm_loss') AND d.heal_steps = 0 AND d.strategy <> 'single'
  GROUP BY ALL)
SELECT model, metric || ' · ' || strategy AS panel, strategy, metric, n, fraction_dropped, value FROM drops
UNION ALL
SELECT DISTINCT model, metric || ' · ' || strategy, strategy, metric, 0, 0.0, base_value FROM drops
ORDER BY panel, model, fraction_dropped"""


def pruning_sql() -> str:
    """Perplexity against the fraction of weights pruned (every module, unstructured), per model and recipe."""
    return f"""WITH chosen AS ({_newest('weights')}),
pts AS (
  SELECT c.model, p.method || coalesce(' ' || p.calibration, '') || ' / ' || p.grp AS recipe,
         round(p.n_pruned / p.total_params, 4) AS fraction_pruned, e.value, b.value AS base_value
  FROM prune_points p JOIN chosen c USING (run_id)
  JOIN evals e ON e.run_id = p.run_id AND e.point = p.point
  JOIN evals b ON b.run_id = p.run_id AND b.point = 'base' AND b.task = e.task AND b.metric = e.metric
  WHERE p.method <> 'base' AND p.modules = 'all' AND p.structure = 'unstructured'
    AND e.task = 'ppl' AND e.metric = 'perplexity')
SELECT model, recipe, fraction_pruned, value FROM pts
UNION ALL
SELECT DISTINCT model, recipe, 0.0, base_value FROM pts
ORDER BY recipe, model, fraction_pruned"""


def probe_depth_sql() -> str:
    """Cross-validated probe accuracy against relative depth (layer / (layers - 1)), per model and problem."""
    return f"""WITH chosen AS ({_newest('safety')})
SELECT c.model, s.problem || ' · ' || s.hook AS panel, s.layer,
       round(s.layer / greatest(c.n_layers - 1, 1), 4) AS depth, s.mean AS accuracy, s.std
FROM safety_probes s JOIN chosen c USING (run_id)
WHERE s.setting = 'cv' AND s.metric = 'accuracy' AND s.position = 'last'
ORDER BY panel, c.model, s.layer"""
