"""Report queries for the head study (tables in store/schema/40_heads.sql)."""

from __future__ import annotations

import duckdb

from store.queries import bucket
from store.rows import first_row

# Importance scores shown as heat maps, in page order: (method, metric, what it means).
IMPORTANCE_SCORES = (
    ("gradient", "abs_grad_layer_l2", "gradient importance E|dL/dxi|, normalised per layer (Michel et al.)"),
    ("zero", "delta_loss", "zero ablation: text loss change (nats/token)"),
    ("mean", "delta_loss", "mean ablation: text loss change (nats/token)"),
    ("zero", "delta_task_nll", "zero ablation: answer NLL change on task items"),
    ("mean", "delta_task_nll", "mean ablation: answer NLL change on task items"),
)


def n_layers_heads(con: duckdb.DuckDBPyConnection, run_id: int) -> tuple[int, int]:
    row = first_row(con.execute("SELECT max(layer) + 1, max(head) + 1 FROM heads_importance WHERE run_id = ?",
                                [run_id]))
    return (row[0] or 0), (row[1] or 0)


def importance_scores(con: duckdb.DuckDBPyConnection, run_id: int) -> list[tuple[str, str, str]]:
    """The IMPORTANCE_SCORES this run holds."""
    have = set(con.execute("SELECT DISTINCT method, metric FROM heads_importance WHERE run_id = ?",
                           [run_id]).fetchall())
    return [s for s in IMPORTANCE_SCORES if (s[0], s[1]) in have]


def importance_sql(run_id: int, method: str, metric: str, layer_bucket: int = 1) -> str:
    """(layer, head) grid of one importance score; layers averaged in buckets for very deep models."""
    layer = "layer" if layer_bucket == 1 else f"layer // {layer_bucket} * {layer_bucket}"
    return f"""SELECT {layer} AS layer, head, avg(value) AS importance, avg(stderr) AS stderr, max(n) AS n
FROM heads_importance
WHERE run_id = {int(run_id)} AND method = '{method}' AND metric = '{metric}'
GROUP BY ALL ORDER BY layer, head"""


def importance_bucket(con: duckdb.DuckDBPyConnection, run_id: int) -> int:
    layers, heads = n_layers_heads(con, run_id)
    return bucket(layers, heads)


def agreement_sql(run_id: int) -> str:
    return f"""SELECT score_a, score_b, round(spearman, 3) AS spearman, round(kendall, 3) AS kendall,
       top_n, round(top_overlap, 3) AS top_overlap
FROM heads_agreement WHERE run_id = {int(run_id)} ORDER BY spearman DESC, score_a, score_b, top_n"""


def pruning_sql(run_id: int) -> str:
    """Every head-budget point (share of heads off) with the base model's value: static pruning per method and
    scope, and the Mixture-of-Head routers (kind = 'router', heads_off = heads inactive per token) as their own
    series at the same budgets as per-layer static pruning."""
    return f"""WITH base AS (
  SELECT task, metric, value AS base_value FROM evals WHERE run_id = {int(run_id)} AND point = 'base')
SELECT CASE WHEN p.kind = 'router' THEN 'router (top-k per token)'
            ELSE p.method || ' (' || p.scope || ')' END AS strategy,
       p.kind, p.heads_off, round(p.frac_off, 4) AS frac_off,
       e.point, e.task || ' / ' || e.metric AS panel, e.value, e.stderr, b.base_value
FROM evals e JOIN heads_points p ON p.run_id = e.run_id AND p.point = e.point
JOIN base b USING (task, metric)
WHERE e.run_id = {int(run_id)} AND p.kind IN ('prune', 'router')
ORDER BY panel, strategy, p.heads_off"""


def usage_bucket(con: duckdb.DuckDBPyConnection, run_id: int) -> int:
    """Layer bucket so every router's (layer, head) grid together stays under MAX_CELLS."""
    layers, heads, routers = first_row(con.execute(
        "SELECT max(layer) + 1, max(head) + 1, count(DISTINCT top_k) FROM heads_router_usage WHERE run_id = ?",
        [run_id]))
    return bucket(layers or 0, (heads or 0) * (routers or 1))


def router_usage_sql(run_id: int, layer_bucket: int = 1) -> str:
    layer = "layer" if layer_bucket == 1 else f"layer // {layer_bucket} * {layer_bucket}"
    return f"""SELECT 'top-' || top_k AS router, {layer} AS layer, head, avg(frequency) AS frequency,
       avg(mean_gate) AS mean_gate, avg(mean_prob) AS mean_prob, sum(n_tokens) AS n_tokens
FROM heads_router_usage WHERE run_id = {int(run_id)}
GROUP BY ALL ORDER BY router, layer, head"""


def router_steps_sql(run_id: int) -> str:
    """Training curves in long form (one row per step and loss term)."""
    return f"""SELECT 'top-' || top_k AS router, step, term, value
FROM (SELECT top_k, step, lm_loss, lb_loss FROM heads_router_steps WHERE run_id = {int(run_id)})
UNPIVOT (value FOR term IN (lm_loss, lb_loss))
ORDER BY router, term, step"""


def router_summary_sql(run_id: int) -> str:
    """Held-out NLL of the trained router against the base model, a uniform router and static pruning."""
    return f"""SELECT 'top-' || top_k AS router, top_k, model, nll, base_nll, steps, heldout_tokens
FROM (SELECT top_k, steps, heldout_tokens, base_nll, base_nll AS base, router_nll AS router,
             uniform_nll AS uniform, static_nll AS static
      FROM heads_router_summary WHERE run_id = {int(run_id)})
UNPIVOT (nll FOR model IN (base, router, uniform, static))
ORDER BY top_k, model"""


def top_heads_sql(run_id: int, limit: int = 10) -> str:
    """The heads whose zero ablation raises text loss most."""
    return f"""SELECT layer, head, round(value, 4) AS delta_loss, round(stderr, 4) AS stderr
FROM heads_importance
WHERE run_id = {int(run_id)} AND method = 'zero' AND metric = 'delta_loss'
ORDER BY value DESC, layer, head LIMIT {int(limit)}"""


def router_headline_sql(run_id: int) -> str:
    """The smallest k's held-out NLL of the trained router, static pruning and the base model (one row)."""
    return f"""SELECT top_k, router_nll AS router, static_nll AS static, base_nll AS base
FROM heads_router_summary
WHERE run_id = {int(run_id)} AND router_nll IS NOT NULL AND static_nll IS NOT NULL AND base_nll IS NOT NULL
ORDER BY top_k LIMIT 1"""
