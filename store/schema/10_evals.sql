-- Evaluations of a model, with or without an intervention, written by every study's sweep.
-- One row per (run, point, task, metric). The base model is the point 'base' of the same run.
CREATE TABLE IF NOT EXISTS evals (
    run_id       INTEGER NOT NULL,
    study        VARCHAR NOT NULL,    -- eval | layers | weights | heads | safety
    point        VARCHAR NOT NULL,    -- readable label of the intervention, 'base' for none
    intervention JSON NOT NULL,       -- the intervention spec ({"kind": "base"} for none)
    task         VARCHAR NOT NULL,    -- ppl | facts | arith | mmlu | boolq | gsm8k | toxicity | refusal | kl
    metric       VARCHAR NOT NULL,    -- perplexity | nll | norm_loss | accuracy | toxicity | refusal_rate | kl ...
    value        DOUBLE,
    stderr       DOUBLE,              -- standard error of value (what the budget costs in precision)
    n            BIGINT,              -- tokens, items or generations behind the value
    chance       DOUBLE,              -- chance level for accuracies, else null
    dataset      JSON NOT NULL,       -- dataset spec: name, source, budget, seed, truncated count
    seconds      DOUBLE,              -- wall time of this task at this point
    created      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, point, task, metric)   -- writers replace a point's rows (INSERT OR REPLACE)
);

-- lm-evaluation-harness rows (interp.evals.lmeval): who computed a value and with which few-shot
-- settings. NULL for the suite's own tasks. The task value repeats the few-shot settings
-- (lm-eval:mmlu_anatomy:5shot:s1234), so they are part of the row's key; see interp/evals/lmeval_spec.py.
-- Added columns, so stores made before them are topped up when the schema script reruns.
ALTER TABLE evals ADD COLUMN IF NOT EXISTS harness VARCHAR;         -- 'lm-eval 0.4.13'; NULL: the suite's own
ALTER TABLE evals ADD COLUMN IF NOT EXISTS task_version VARCHAR;    -- the harness's version of the task
ALTER TABLE evals ADD COLUMN IF NOT EXISTS num_fewshot INTEGER;     -- few-shot examples per prompt
ALTER TABLE evals ADD COLUMN IF NOT EXISTS fewshot_seed BIGINT;     -- seed of the few-shot sampler

-- Per-item scores behind the evals rows whose value is a mean over items (issue 18): one row per
-- window (ppl: nll, norm_loss), item (accuracy, accuracy_norm), generation (toxicity, toxic_rate,
-- refusal_rate) or prompt (kl). Written in the same transaction as the point's evals rows; the
-- key makes a resumed or repeated sweep unable to duplicate them.
CREATE TABLE IF NOT EXISTS eval_items (
    run_id  INTEGER NOT NULL,
    point   VARCHAR NOT NULL,
    task    VARCHAR NOT NULL,
    metric  VARCHAR NOT NULL,
    item    VARCHAR NOT NULL,         -- window-0007, capitals-012, toxic prompt id, ...
    value   DOUBLE NOT NULL,
    PRIMARY KEY (run_id, point, task, metric, item)
);

-- Every point against the base model of the same run on the same items (analyses/stats.py paired):
-- delta = value - base, its 95% interval lo..hi and two-sided p; binary scores: exact McNemar test
-- and Agresti-Min interval; others: sign-flip permutation test and BCa bootstrap interval (t below
-- 16 items). perplexity is compared through nll (same windows): its interval is base * (exp(lo) - 1)
-- .. base * (exp(hi) - 1). mde: the smallest |delta| these items detect at alpha 0.05 with power
-- 0.8, given the spread (sd) of this point's per-item differences. Written with the point's evals rows.
CREATE TABLE IF NOT EXISTS eval_deltas (
    run_id      INTEGER NOT NULL,
    point       VARCHAR NOT NULL,
    task        VARCHAR NOT NULL,
    metric      VARCHAR NOT NULL,
    n           INTEGER NOT NULL,     -- items in both the point and the base
    base_value  DOUBLE,
    value       DOUBLE,
    delta       DOUBLE,
    lo          DOUBLE,
    hi          DOUBLE,
    p           DOUBLE,
    sd          DOUBLE,               -- standard deviation of the per-item differences
    mde         DOUBLE,
    method      VARCHAR NOT NULL,
    PRIMARY KEY (run_id, point, task, metric)
);

-- evals with the base model's value and the paired comparison beside every row; noise = the 95%
-- interval includes 0 (no detectable change at this budget). Rows without per-item scores (older
-- runs, tasks that keep none) have delta from the two values and no interval.
CREATE OR REPLACE VIEW eval_vs_base AS
SELECT e.run_id, e.study, e.point, e.intervention, e.task, e.metric, e.value, e.stderr, e.n, e.dataset,
       b.value AS base_value, coalesce(d.delta, e.value - b.value) AS delta, d.lo, d.hi, d.p, d.mde, d.method,
       CASE WHEN d.lo IS NULL THEN NULL ELSE d.lo <= 0 AND 0 <= d.hi END AS noise
FROM evals e
LEFT JOIN evals b ON b.run_id = e.run_id AND b.point = 'base' AND b.task = e.task AND b.metric = e.metric
LEFT JOIN eval_deltas d ON d.run_id = e.run_id AND d.point = e.point AND d.task = e.task AND d.metric = e.metric;
