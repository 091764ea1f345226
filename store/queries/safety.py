"""Report queries for the safety study (tables in store/schema/50_safety.sql, edits in evals)."""

from __future__ import annotations

import duckdb

from store.queries import bucket


def probe_sites(con: duckdb.DuckDBPyConnection, run_id: int) -> list[tuple[str, str]]:
    """Every (hook, position) the run probed, resid_post / last token first: one probe chart each."""
    rows = con.execute("SELECT DISTINCT hook, position FROM safety_probes WHERE run_id = ?", [run_id]).fetchall()
    return sorted(rows, key=lambda r: (r[0] != "resid_post", r[1] != "last", r[0], r[1]))


def probes_bucket(con: duckdb.DuckDBPyConnection, run_id: int, hook: str, position: str) -> int:
    """Layer bucket keeping the probe chart (problems x metrics x settings x layers) under MAX_CELLS."""
    layers, series = con.execute(
        "SELECT count(DISTINCT layer), count(DISTINCT (problem, metric, setting)) FROM safety_probes "
        "WHERE run_id = ? AND hook = ? AND position = ?", [run_id, hook, position]).fetchone()
    return bucket(layers, series)


def probes_sql(run_id: int, hook: str, position: str, k: int = 1) -> str:
    """Probe score per layer at one (hook, position) for every problem, metric and setting (cv, shuffled-label
    control, ...); layers averaged in buckets of k for deep models."""
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


SITE_ORDER = "hook <> 'resid_post', position <> 'last', hook, position"


def best_layers_sql(run_id: int) -> str:
    """The study's best layer per problem and site (chosen by CV ROC-AUC, see analyses/probes.py best_layers),
    with its margins over the shuffled-label control and the held-out / cross-source scores."""
    return f"""SELECT problem, hook, position, layer, round(cv_roc_auc, 4) AS cv_roc_auc,
       round(shuffled_roc_auc, 4) AS shuffled_roc_auc, round(margin_roc_auc, 4) AS margin_roc_auc,
       round(cv_accuracy, 4) AS cv_accuracy, round(shuffled_accuracy, 4) AS shuffled_accuracy,
       round(margin_accuracy, 4) AS margin_accuracy, round(held_out_roc_auc, 4) AS held_out_roc_auc,
       round(cross_source_roc_auc, 4) AS cross_source_roc_auc,
       round(cross_source_dm_roc_auc, 4) AS cross_source_dm_roc_auc
FROM safety_best_layers
WHERE run_id = {int(run_id)}
ORDER BY problem, {SITE_ORDER}"""


# Score columns of safety_best_layers, as the controls chart names them.
CONTROL_SCORES = {"cv": "cross-validated", "shuffled": "shuffled-label control", "held_out": "held-out prompts",
                  "cross_source": "cross-source probe", "cross_source_dm": "cross-source diff. of means"}


def controls_sql(run_id: int) -> str:
    """Every score of safety_best_layers in long form (one row per problem, site, metric and score) for the
    chart of the best layer against its controls; scores a problem lacks (cross-source) are left out."""
    labels = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in CONTROL_SCORES.items())
    cols = ", ".join(f"{k}_{m}" for k in CONTROL_SCORES for m in ("accuracy", "roc_auc"))
    return f"""SELECT problem, hook || ' / ' || position AS site, layer,
       CASE WHEN col LIKE '%roc_auc' THEN 'roc_auc' ELSE 'accuracy' END AS metric,
       CASE regexp_replace(col, '_(accuracy|roc_auc)$', '') {labels} END AS score,
       value,
       CASE WHEN col LIKE '%roc_auc' THEN margin_roc_auc ELSE margin_accuracy END AS margin_over_shuffled,
       CASE WHEN col LIKE '%roc_auc' THEN 'roc_auc' ELSE 'accuracy' END || ' · ' || hook || ' / ' || position
         AS panel
FROM (SELECT problem, hook, position, layer, margin_accuracy, margin_roc_auc, {cols}
      FROM safety_best_layers WHERE run_id = {int(run_id)})
UNPIVOT (value FOR col IN ({cols}))
ORDER BY {SITE_ORDER}, metric, problem, score"""


GROUP_SETTINGS = ("held_out", "held_out:group_kept", "held_out:group_swapped")
"""biased_vs_counterpart's held-out score on all test pairs, on the pairs whose counterpart keeps the group
and on those that swap it out (analyses/probes.py)."""


def has_group_control(con: duckdb.DuckDBPyConnection, run_id: int) -> bool:
    """Whether the run scored the stereotype probe on each kind of pair (runs before group_kept did not)."""
    return con.execute("SELECT EXISTS (SELECT 1 FROM safety_probes WHERE run_id = ? AND problem = "
                       "'biased_vs_counterpart' AND setting LIKE 'held_out:group_%')", [run_id]).fetchone()[0]


def group_control_sql(run_id: int) -> str:
    """The stereotype probe's held-out score per layer: all test pairs, group-kept pairs, group-swapped pairs."""
    settings = ", ".join(f"'{s}'" for s in GROUP_SETTINGS)
    return f"""SELECT metric || ' · ' || hook || ' / ' || position AS panel, hook, position, metric, setting, layer,
       mean, n
FROM safety_probes
WHERE run_id = {int(run_id)} AND problem = 'biased_vs_counterpart' AND setting IN ({settings})
ORDER BY {SITE_ORDER}, metric, setting, layer"""


def group_control_best_sql(run_id: int) -> str:
    """At biased_vs_counterpart's best layer per site (safety_best_layers): held-out accuracy and ROC-AUC on all
    test pairs, on the group-kept pairs and on the group-swapped ones, with the pairs' rows scored (n); the
    study's best site (CV ROC-AUC, then CV accuracy) first."""
    def val(setting: str, metric: str, col: str) -> str:
        return f"max({col}) FILTER (WHERE setting = '{setting}' AND metric = '{metric}')"

    cols = []
    for setting, name in zip(GROUP_SETTINGS, ("held_out", "group_kept", "group_swapped")):
        cols += [f"round({val(setting, m, 'mean')}, 4) AS {name}_{m}" for m in ("accuracy", "roc_auc")]
        if name != "held_out":
            cols.append(f"{val(setting, 'accuracy', 'n')} AS {name}_n")
    select = ",\n       ".join(cols)
    return f"""SELECT * FROM (
SELECT hook, position, layer, round(cv_roc_auc, 4) AS cv_roc_auc, round(cv_accuracy, 4) AS cv_accuracy,
       {select}
FROM safety_best_layers
JOIN safety_probes USING (run_id, problem, hook, position, layer)
WHERE run_id = {int(run_id)} AND problem = 'biased_vs_counterpart'
GROUP BY ALL
HAVING count(*) FILTER (WHERE setting LIKE 'held_out:group_%') > 0)
ORDER BY cv_roc_auc DESC NULLS LAST, cv_accuracy DESC NULLS LAST, {SITE_ORDER}"""


def headline_best_sql(run_id: int) -> str:
    """The one best layer a headline names: harmful vs neutral when probed, at its best site by the study's
    rule (CV ROC-AUC, then CV accuracy), resid_post / last token on ties."""
    return f"""SELECT *
FROM safety_best_layers
WHERE run_id = {int(run_id)}
ORDER BY problem <> 'harmful_vs_neutral', problem, cv_roc_auc DESC NULLS LAST, cv_accuracy DESC NULLS LAST,
         {SITE_ORDER}
LIMIT 1"""


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
