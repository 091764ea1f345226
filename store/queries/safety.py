"""Report queries for the safety study (tables in store/schema/50_safety.sql, edits in evals)."""

from __future__ import annotations

import duckdb

from store.queries import VERDICT, bucket
from store.rows import first_row


def probe_sites(con: duckdb.DuckDBPyConnection, run_id: int) -> list[tuple[str, str]]:
    """Every (hook, position) the run probed, resid_post / last token first: one probe chart each."""
    rows = con.execute("SELECT DISTINCT hook, position FROM safety_probes WHERE run_id = ?", [run_id]).fetchall()
    return sorted(rows, key=lambda r: (r[0] != "resid_post", r[1] != "last", r[0], r[1]))


def probes_bucket(con: duckdb.DuckDBPyConnection, run_id: int, hook: str, position: str) -> int:
    """Layer bucket keeping the probe chart (problems x metrics x settings x layers) under MAX_CELLS."""
    layers, series = first_row(con.execute(
        "SELECT count(DISTINCT layer), count(DISTINCT (problem, metric, setting)) FROM safety_probes "
        "WHERE run_id = ? AND hook = ? AND position = ?", [run_id, hook, position]))
    return bucket(layers, series)


def probes_sql(run_id: int, hook: str, position: str, k: int = 1) -> str:
    """Probe score per layer at one (hook, position) for every problem, metric and setting (cv: the ridge probe
    with its permutation null's mean and 95th percentile and p-value, repeated as null_band_lo / null_band_hi on
    cv rows for the chart's band; length-only baseline; logistic probe; held-out and cross-source scores with
    their 95% intervals); layers averaged in buckets of k for deep models."""
    band = ("{0}CASE WHEN setting = 'cv' THEN null_mean END{1} AS null_band_lo, "
            "{0}CASE WHEN setting = 'cv' THEN null_p95 END{1} AS null_band_hi")
    if k == 1:
        return f"""SELECT problem || ' / ' || metric AS panel, problem, metric, setting, layer, mean, std, n, folds, lo, hi,
       null_mean, null_p95, p, permutations, {band.format("", "")}
FROM safety_probes
WHERE run_id = {int(run_id)} AND hook = '{hook}' AND position = '{position}'
ORDER BY panel, setting, layer"""
    return f"""SELECT problem || ' / ' || metric AS panel, problem, metric, setting, layer // {k} * {k} AS layer,
       avg(mean) AS mean, avg(std) AS std, min(n) AS n, min(folds) AS folds, avg(lo) AS lo, avg(hi) AS hi,
       avg(null_mean) AS null_mean, avg(null_p95) AS null_p95, max(p) AS p, min(permutations) AS permutations,
       {band.format("avg(", ")")}
FROM safety_probes
WHERE run_id = {int(run_id)} AND hook = '{hook}' AND position = '{position}'
GROUP BY ALL ORDER BY panel, setting, layer"""


SITE_ORDER = "hook <> 'resid_post', position <> 'last', hook, position"


def best_layers_sql(run_id: int) -> str:
    """The study's best layer per problem and site (chosen on the train split by CV ROC-AUC among layers_compared
    layers, see analyses/probes.py best_layers), its permutation p-value and null (shuffled_*: the null's mean),
    the held-out score with its 95% interval, the length-only baseline and the cross-source scores."""
    return f"""SELECT problem, hook, position, layer, layers_compared, round(cv_roc_auc, 4) AS cv_roc_auc,
       round(shuffled_roc_auc, 4) AS shuffled_roc_auc, round(null_p95_roc_auc, 4) AS null_p95_roc_auc,
       round(p_roc_auc, 4) AS p_roc_auc, round(margin_roc_auc, 4) AS margin_roc_auc,
       round(cv_accuracy, 4) AS cv_accuracy, round(shuffled_accuracy, 4) AS shuffled_accuracy,
       round(margin_accuracy, 4) AS margin_accuracy, round(held_out_roc_auc, 4) AS held_out_roc_auc,
       round(held_out_roc_auc_lo, 4) AS held_out_roc_auc_lo, round(held_out_roc_auc_hi, 4) AS held_out_roc_auc_hi,
       round(held_out_accuracy, 4) AS held_out_accuracy, round(held_out_accuracy_lo, 4) AS held_out_accuracy_lo,
       round(held_out_accuracy_hi, 4) AS held_out_accuracy_hi, round(length_roc_auc, 4) AS length_roc_auc,
       round(cross_source_roc_auc, 4) AS cross_source_roc_auc,
       round(cross_source_dm_roc_auc, 4) AS cross_source_dm_roc_auc
FROM safety_best_layers
WHERE run_id = {int(run_id)}
ORDER BY problem, {SITE_ORDER}"""


# Score columns of safety_best_layers, as the controls chart names them.
CONTROL_SCORES = {"cv": "cross-validated", "shuffled": "permutation null (mean)",
                  "null_p95": "permutation null (95th percentile)", "held_out": "held-out prompts",
                  "length": "length only", "cross_source": "cross-source probe",
                  "cross_source_dm": "cross-source diff. of means"}


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
    return first_row(con.execute("SELECT EXISTS (SELECT 1 FROM safety_probes WHERE run_id = ? AND problem = "
                       "'biased_vs_counterpart' AND setting LIKE 'held_out:group_%')", [run_id]))[0]


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
    rule (CV ROC-AUC, then CV accuracy: train split only), resid_post / last token on ties; the headline quotes
    its held-out score."""
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
    return f"""SELECT v.point AS edit, json_extract_string(v.intervention, '$.kind') AS kind,
       TRY_CAST(json_extract_string(v.intervention, '$.alpha') AS DOUBLE) AS alpha,
       v.task || ' / ' || v.metric AS panel, v.value, v.stderr, v.n, v.base_value, v.delta,
       v.base_value + v.lo AS lo, v.base_value + v.hi AS hi, v.p, {VERDICT.format(v="v")} AS verdict
FROM eval_vs_base v LEFT JOIN safety_points s ON s.run_id = v.run_id AND s.point = v.point
WHERE v.run_id = {int(run_id)} AND coalesce(s.role, 'edit') = 'edit' AND {where}
ORDER BY panel, v.point = 'base' DESC, kind, alpha, v.point"""


def edits_sql(run_id: int) -> str:
    """Every edit (not the random baselines) and the unedited model: toxicity, refusal and capability side by side."""
    return _edits(run_id, "true")


def alpha_sql(run_id: int) -> str:
    """Activation addition/subtraction: every metric against alpha, with each point's paired 95% interval."""
    return _edits(run_id, "json_extract_string(v.intervention, '$.kind') = 'activation_addition'")


def band_match(edit: str, band: str) -> str:
    """SQL condition: band row ``band`` is the random control of edit row ``edit`` (safety_points / safety_bands):
    ablation and orthogonalised weights against the ablation bands, activation addition against the band at its
    |alpha|."""
    return (f"(({edit}.family IN ('ablate', 'orth') AND {band}.family = 'ablate') OR ({edit}.family = 'actadd' "
            f"AND {band}.family = 'actadd' AND {band}.alpha = abs({edit}.alpha)))")


def edits_vs_band_sql(run_id: int) -> str:
    """Per task and metric: each edit's value with its paired 95% interval, each random band (95% prediction
    interval over its k random edits) and the random edits' own values, and the base value."""
    r = int(run_id)
    return f"""WITH v AS (SELECT * FROM eval_vs_base WHERE run_id = {r}),
base AS (SELECT task, metric, value AS base_value FROM v WHERE point = 'base')
SELECT * FROM (
SELECT v.point AS row, 'edit' AS kind, v.task || ' / ' || v.metric AS panel, v.value, v.base_value + v.lo AS lo,
       v.base_value + v.hi AS hi, v.base_value, v.delta, v.p, {VERDICT.format(v="v")} AS verdict
FROM v JOIN safety_points s ON s.run_id = {r} AND s.point = v.point AND s.role = 'edit'
UNION ALL
SELECT 'random ' || b.band || ' (' || b.k || ')', 'band', b.task || ' / ' || b.metric, b.mean, b.lo, b.hi,
       base.base_value, b.mean - base.base_value, NULL, 'random edits: 95% prediction band'
FROM safety_bands b JOIN base USING (task, metric) WHERE b.run_id = {r}
UNION ALL
SELECT 'random ' || s.band || ' (' || b.k || ')', 'random', v.task || ' / ' || v.metric, v.value, NULL, NULL,
       v.base_value, v.delta, v.p, 'random edits: 95% prediction band'
FROM v JOIN safety_points s ON s.run_id = {r} AND s.point = v.point AND s.role = 'baseline'
JOIN safety_bands b ON b.run_id = {r} AND b.band = s.band AND b.task = v.task AND b.metric = v.metric)
ORDER BY panel, kind <> 'edit', row, value"""


def edit_effects_sql(run_id: int) -> str:
    """Before/after of each edit on every metric with the paired 95% interval and p-value of the change, and
    where random edits of its kind land (band_lo..band_hi); beyond_random says the edit is outside that band."""
    r = int(run_id)
    return f"""SELECT v.point AS edit, v.task, v.metric, round(v.base_value, 4) AS before, round(v.value, 4) AS after,
       round(v.delta, 4) AS change, round(v.lo, 4) AS change_lo, round(v.hi, 4) AS change_hi, round(v.p, 4) AS p,
       CASE WHEN v.noise IS NULL THEN NULL WHEN v.noise THEN 'no detectable change at this budget'
            ELSE 'changed' END AS verdict,
       b.band AS random_band, round(b.lo, 4) AS band_lo, round(b.hi, 4) AS band_hi,
       CASE WHEN b.band IS NULL THEN NULL ELSE v.value < b.lo OR v.value > b.hi END AS beyond_random
FROM eval_vs_base v
LEFT JOIN safety_points s ON s.run_id = v.run_id AND s.point = v.point
LEFT JOIN safety_bands b ON b.run_id = v.run_id AND b.task = v.task AND b.metric = v.metric AND {band_match("s", "b")}
WHERE v.run_id = {r} AND v.point <> 'base' AND coalesce(s.role, 'edit') = 'edit'
ORDER BY v.point, v.task, v.metric, b.band"""


def ablation_effects_sql(run_id: int, metrics: tuple[tuple[str, str], ...]) -> str:
    """The change the directional ablation makes on each (task, metric) of ``metrics``, in that order: the
    harmful direction's ablation, else the first ablation by name. before, after, the paired 95% interval
    of the change, and against the random-edit bands: n_bands (bands it is compared with) and inside (the
    bands it lands inside)."""
    keys = ", ".join(f"'{t}/{m}'" for t, m in metrics)
    order = " ".join(f"WHEN task = '{t}' AND metric = '{m}' THEN {i}" for i, (t, m) in enumerate(metrics))
    return f"""WITH eff AS ({edit_effects_sql(run_id)}),
abl AS (SELECT * FROM eff WHERE starts_with(edit, 'ablate[') AND task || '/' || metric IN ({keys})),
pick AS (SELECT edit FROM abl ORDER BY NOT starts_with(edit, 'ablate[harmful@'), edit LIMIT 1)
SELECT edit, task, metric, any_value(before) AS before, any_value(after) AS after,
       any_value(change_lo) AS change_lo, any_value(change_hi) AS change_hi, count(beyond_random) AS n_bands,
       coalesce(list(random_band ORDER BY random_band) FILTER (WHERE NOT beyond_random), []) AS inside
FROM abl JOIN pick USING (edit)
GROUP BY edit, task, metric
ORDER BY CASE {order} END, task"""
