"""Report queries for lm-evaluation-harness scores (``evals`` rows whose ``harness`` is set).

Rows of one run: every task and group lm-eval reported (the task name carries the shots and the
few-shot seed, e.g. lm-eval:mmlu:5shot:s1234), MMLU per subject with the two averages labelled
(micro: lm-eval's group score, weighted by subject size; macro: the mean over subjects), and
GSM8K per answer filter. The suite's own zero-shot cloze versions of MMLU, BoolQ and GSM8K are
listed apart, labelled as such.
"""

from __future__ import annotations

import duckdb

LEVEL = "(e.dataset->>'level')"
NAME = "(e.dataset->>'name')"


def lmeval_run(con: duckdb.DuckDBPyConnection) -> int | None:
    """The newest run holding lm-eval scores (a complete one first)."""
    row = con.execute("SELECT r.run_id FROM runs r WHERE EXISTS (SELECT 1 FROM evals e WHERE e.run_id = r.run_id "
                      "AND e.harness IS NOT NULL) ORDER BY r.status = 'complete' DESC, r.run_id DESC LIMIT 1"
                      ).fetchone()
    return row[0] if row else None


def other_lmeval_runs(con: duckdb.DuckDBPyConnection, shown: int) -> list[int]:
    return [r[0] for r in con.execute("SELECT DISTINCT run_id FROM evals WHERE harness IS NOT NULL AND run_id <> ? "
                                      "ORDER BY run_id", [shown]).fetchall()]


def scores_sql(run_id: int) -> str:
    """Every requested lm-eval task and group (not a group's subgroups and tasks) at every point, beside the base."""
    return f"""WITH e AS (
  SELECT * FROM evals WHERE run_id = {int(run_id)} AND harness IS NOT NULL
    AND (dataset->>'name') = (dataset->>'requested')),
base AS (SELECT task, metric, value AS base_value FROM e WHERE point = 'base')
SELECT e.point, e.task, e.metric, e.task || ' / ' || e.metric AS panel, e.value, e.stderr, e.n, e.chance,
       b.base_value, e.value - b.base_value AS delta, e.num_fewshot, e.fewshot_seed, e.task_version,
       coalesce(e.dataset->>'average', '') AS average, e.harness
FROM e LEFT JOIN base b USING (task, metric)
ORDER BY e.task, e.metric, e.point = 'base' DESC, e.point"""


def mmlu_subjects_sql(run_id: int) -> str:
    """MMLU accuracy per subject and point (every mmlu_* task lm-eval scored on its own or in a group)."""
    return f"""SELECT e.point, {NAME} AS task_name, e.dataset->>'alias' AS subject, e.dataset->>'parent' AS category,
       e.task, e.value AS accuracy, e.stderr, e.n, e.num_fewshot, e.fewshot_seed
FROM evals e
WHERE e.run_id = {int(run_id)} AND e.harness IS NOT NULL AND {LEVEL} = 'task' AND e.metric = 'acc'
  AND starts_with({NAME}, 'mmlu_')
ORDER BY subject, e.point = 'base' DESC, e.point"""


def mmlu_averages_sql(run_id: int) -> str:
    """MMLU group averages per point: micro (lm-eval's, weighted by subject size) and macro (mean over subjects)."""
    return f"""SELECT e.point, e.task,
       CASE e.metric WHEN 'acc' THEN 'micro: lm-eval group acc (weighted by subject size)'
                     ELSE 'macro: mean over subjects' END AS average,
       e.value AS accuracy, e.stderr, e.n, (e.dataset->>'tasks')::INTEGER AS subjects, e.num_fewshot, e.fewshot_seed
FROM evals e
WHERE e.run_id = {int(run_id)} AND e.harness IS NOT NULL AND {LEVEL} = 'group' AND {NAME} = 'mmlu'
  AND e.metric IN ('acc', 'acc_macro')
ORDER BY e.point = 'base' DESC, e.point, e.metric"""


def gsm8k_sql(run_id: int) -> str:
    """GSM8K exact match per point and answer filter (strict-match: 'The answer is N'; flexible-extract:
    the last number in the generation)."""
    return f"""SELECT e.point, e.task, split_part(e.metric, ',', 2) AS filter, e.value AS exact_match, e.stderr, e.n,
       e.num_fewshot, e.fewshot_seed
FROM evals e
WHERE e.run_id = {int(run_id)} AND e.harness IS NOT NULL AND starts_with({NAME}, 'gsm8k')
  AND starts_with(e.metric, 'exact_match,')
ORDER BY e.task, e.point = 'base' DESC, e.point, filter"""


def cloze_sql(run_id: int) -> str:
    """The suite's own zero-shot cloze scores of MMLU, BoolQ and GSM8K in the same run, labelled as such."""
    return f"""SELECT e.point, e.task, e.task || ' (suite, zero-shot cloze)' AS protocol, e.metric, e.value, e.stderr,
       e.n, e.chance
FROM evals e
WHERE e.run_id = {int(run_id)} AND e.harness IS NULL AND e.task IN ('mmlu', 'boolq', 'gsm8k')
ORDER BY e.task, e.metric, e.point = 'base' DESC, e.point"""
