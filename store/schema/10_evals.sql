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
    created      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- lm-evaluation-harness rows (interp.evals.lmeval): who computed a value and with which few-shot
-- settings. NULL for the suite's own tasks. The task value repeats the few-shot settings
-- (lm-eval:mmlu_anatomy:5shot:s1234), so they are part of the row's key; see interp/evals/lmeval_spec.py.
-- Added columns, so stores made before them are topped up when the schema script reruns.
ALTER TABLE evals ADD COLUMN IF NOT EXISTS harness VARCHAR;         -- 'lm-eval 0.4.13'; NULL: the suite's own
ALTER TABLE evals ADD COLUMN IF NOT EXISTS task_version VARCHAR;    -- the harness's version of the task
ALTER TABLE evals ADD COLUMN IF NOT EXISTS num_fewshot INTEGER;     -- few-shot examples per prompt
ALTER TABLE evals ADD COLUMN IF NOT EXISTS fewshot_seed BIGINT;     -- seed of the few-shot sampler
