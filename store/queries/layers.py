"""Report queries for the layer study (tables in store/schema/20_layers.sql)."""

from __future__ import annotations

import duckdb

from store.queries import bucket
from store.rows import first_row


def position(con: duckdb.DuckDBPyConnection, run_id: int, table: str) -> str | None:
    """The token position a chart shows: 'last' (Gromov's choice) when the run has it."""
    rows = [r[0] for r in con.execute(f"SELECT DISTINCT position FROM {table} WHERE run_id = ?", [run_id]).fetchall()]
    return "last" if "last" in rows else (min(rows) if rows else None)


def positions(con: duckdb.DuckDBPyConnection, run_id: int, table: str) -> list[str]:
    """Every position label a table holds for the run, 'last' first (one chart each)."""
    rows = [r[0] for r in con.execute(f"SELECT DISTINCT position FROM {table} WHERE run_id = ?", [run_id]).fetchall()]
    return sorted(rows, key=lambda p: (p != "last", p != "mean", p))


def n_states(con: duckdb.DuckDBPyConnection, run_id: int) -> int:
    return first_row(con.execute("SELECT coalesce(max(layer_a) + 1, 0) FROM layer_similarity WHERE run_id = ?",
                       [run_id]))[0]


def run_n_layers(con: duckdb.DuckDBPyConnection, run_id: int) -> int:
    """How many layers the model of this run has (from its provenance row)."""
    return int(first_row(con.execute("SELECT n_layers FROM runs WHERE run_id = ?", [int(run_id)]))[0])


def similarity_sql(run_id: int, position: str, k: int = 1) -> str:
    """Cosine between residual states a and b (state l = input of layer l), bucketed by k for deep models."""
    a = "layer_a" if k == 1 else f"layer_a // {k} * {k}"
    b = "layer_b" if k == 1 else f"layer_b // {k} * {k}"
    return f"""SELECT {a} AS layer_a, {b} AS layer_b, avg(cosine) AS cosine, avg(angular) AS angular,
       avg(cosine_se) AS cosine_se, min(n_prompts) AS n_prompts
FROM layer_similarity
WHERE run_id = {int(run_id)} AND position = '{position}'
GROUP BY ALL ORDER BY layer_a, layer_b"""


def similarity_bucket(con: duckdb.DuckDBPyConnection, run_id: int) -> int:
    return bucket(n_states(con, run_id))


def angular_sql(run_id: int, position: str) -> str:
    """Gromov distance d(l, n) of every block; best marks the start l*(n) that minimises it."""
    return f"""SELECT n, start_layer, end_layer, distance, distance_se, best, n_prompts
FROM layer_angular
WHERE run_id = {int(run_id)} AND position = '{position}'
ORDER BY n, start_layer"""


def influence_sql(run_id: int, position: str) -> str:
    return f"""SELECT layer, block_influence, block_influence_se, n_prompts
FROM layer_influence
WHERE run_id = {int(run_id)} AND position = '{position}'
ORDER BY layer"""


def _drops_where(run_id: int, perplexity: bool | None) -> str:
    cond = f"run_id = {int(run_id)}"
    if perplexity is True:
        cond += " AND metric = 'perplexity'"
    elif perplexity is False:
        cond += " AND metric NOT IN ('perplexity', 'nll')"
    return cond


def single_drop_sql(run_id: int, perplexity: bool | None = None) -> str:
    """Dropping one layer at a time: value per dropped layer (the layer_drops view joins evals)."""
    return f"""SELECT layers[1] AS layer, task || ' / ' || metric AS panel, value, stderr, base_value, delta, point
FROM layer_drops
WHERE {_drops_where(run_id, perplexity)} AND strategy = 'single' AND heal_steps = 0
ORDER BY panel, layer"""


def block_drop_sql(run_id: int, perplexity: bool | None = None) -> str:
    """Dropping blocks of n layers per strategy (random blocks averaged over seeds; healed points apart)."""
    return f"""SELECT strategy || CASE WHEN heal_steps > 0 THEN ' + LoRA heal' ELSE '' END AS strategy, n,
       task || ' / ' || metric AS panel, avg(value) AS value,
       CASE WHEN count(*) > 1 THEN stddev_samp(value) / sqrt(count(*)) ELSE any_value(stderr) END AS stderr,
       any_value(base_value) AS base_value, count(*) AS seeds, string_agg(point, ' ') AS points
FROM layer_drops
WHERE {_drops_where(run_id, perplexity)} AND strategy <> 'single'
GROUP BY ALL ORDER BY panel, strategy, n"""


def heal_sql(run_id: int) -> str:
    return f"""SELECT point, step, loss, seconds FROM layer_heal WHERE run_id = {int(run_id)} ORDER BY point, step"""


def agreement_sql(run_id: int) -> str:
    return f"""SELECT scope, n, proxy, position, task, metric, round(spearman, 3) AS spearman,
       round(p_value, 4) AS p_value, n_points, round(agreement, 3) AS agreement
FROM layer_agreement
WHERE run_id = {int(run_id)} AND scope IN ('single', 'blocks')
ORDER BY scope, task, metric, proxy, position"""


def best_blocks_sql(run_id: int, position: str) -> str:
    """For each block size n, the block Gromov's rule drops (smallest angular distance)."""
    return f"""SELECT n, start_layer, end_layer, round(distance, 4) AS distance
FROM layer_angular
WHERE run_id = {int(run_id)} AND position = '{position}' AND best
ORDER BY n"""


def cheapest_blocks_sql(run_id: int) -> str:
    """Per block size, the evaluated drop that cost least perplexity (any strategy, unhealed)."""
    return f"""SELECT n, strategy, layers::VARCHAR AS layers, round(value, 3) AS perplexity,
       round(base_value, 3) AS base_perplexity, round(value / base_value - 1, 4) AS rel_increase
FROM layer_drops
WHERE run_id = {int(run_id)} AND metric = 'perplexity' AND heal_steps = 0 AND strategy <> 'single'
QUALIFY row_number() OVER (PARTITION BY n ORDER BY value, strategy, point) = 1
ORDER BY n"""


def block_cost_sql(run_id: int, start: int, end: int) -> str:
    """What dropping layers start..end (unhealed) did to perplexity, whichever strategy evaluated that block
    (the angular strategy's point first), with the paired 95% interval of the change (eval_deltas)."""
    layers = ", ".join(str(l) for l in range(int(start), int(end) + 1))
    return f"""SELECT l.n, l.strategy, l.layers::VARCHAR AS layers, round(l.value, 3) AS perplexity,
       round(l.base_value, 3) AS base_perplexity, round(l.value / l.base_value - 1, 4) AS rel_increase,
       d.lo AS change_lo, d.hi AS change_hi
FROM layer_drops l
LEFT JOIN eval_deltas d ON d.run_id = l.run_id AND d.point = l.point AND d.task = l.task AND d.metric = l.metric
WHERE l.run_id = {int(run_id)} AND list_sort(l.layers) = [{layers}] AND l.heal_steps = 0 AND l.metric = 'perplexity'
ORDER BY l.strategy <> 'angular', l.strategy, l.point LIMIT 1"""
