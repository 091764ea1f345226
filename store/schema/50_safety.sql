-- Safety study (issue 7): probes, concept directions, direction selection. Every row carries
-- the safety run's run_id (runs.kind = 'safety'); the vectors behind it are in cache_run_id.
-- Evaluations of the edits are rows of the shared `evals` table with the same run_id.

-- The labelled dataset of a run: class, source and fixed split of every prompt it uses.
CREATE TABLE IF NOT EXISTS safety_prompts (
    run_id       INTEGER NOT NULL,
    cache_run_id INTEGER NOT NULL,
    prompt_id    VARCHAR NOT NULL,
    cls          VARCHAR NOT NULL,    -- harmful | toxic | biased | counterpart | neutral
    source       VARCHAR NOT NULL,    -- harmbench | donotanswer | realtoxicityprompts | interp
    dataset      VARCHAR NOT NULL,    -- prompt set: harmful | toxic | stereotypes | neutral
    grp          VARCHAR,             -- stereotype pair id (pairs share a split)
    split        VARCHAR NOT NULL,    -- train | test | heldout (used by an evaluation task: never fitted)
    group_kept   BOOLEAN,             -- stereotype pairs: the counterpart still names the biased prompt's group
                                      -- (false: the group is swapped out); null for other prompts and older runs
    PRIMARY KEY (run_id, prompt_id)
);
-- Added after the table first shipped: top up stores created before.
ALTER TABLE safety_prompts ADD COLUMN IF NOT EXISTS group_kept BOOLEAN;

-- Cross-validated probe scores per layer, with controls (long form).
CREATE TABLE IF NOT EXISTS safety_probes (
    run_id   INTEGER NOT NULL,
    problem  VARCHAR NOT NULL,        -- harmful_vs_neutral | toxic_vs_neutral | biased_vs_counterpart | multiclass
    hook     VARCHAR NOT NULL,
    layer    INTEGER NOT NULL,
    position VARCHAR NOT NULL,        -- last | mean
    setting  VARCHAR NOT NULL,        -- cv | shuffled | held_out | within[_dm]:SRC | cross[_dm]:SRC->DST
                                      -- | held_out:group_kept | held_out:group_swapped (biased_vs_counterpart:
                                      -- the held_out probe scored on the test pairs of each kind)
    metric   VARCHAR NOT NULL,        -- accuracy | roc_auc
    mean     DOUBLE,
    std      DOUBLE,                  -- over folds (null for a single train/test split)
    n        INTEGER NOT NULL,        -- examples scored (cv: in all folds)
    folds    INTEGER NOT NULL,
    PRIMARY KEY (run_id, problem, hook, layer, position, setting, metric)
);

-- Unit directions per layer, stored as values (float64). diff_means: mean(pos) - mean(neg);
-- probe: logistic-probe weights in activation coordinates. norm: length before normalising.
CREATE TABLE IF NOT EXISTS safety_directions (
    run_id   INTEGER NOT NULL,
    concept  VARCHAR NOT NULL,        -- harmful (vs neutral) | toxic (vs neutral)
    hook     VARCHAR NOT NULL,
    layer    INTEGER NOT NULL,
    position VARCHAR NOT NULL,
    kind     VARCHAR NOT NULL,        -- diff_means | probe
    norm     DOUBLE NOT NULL,
    n_pos    INTEGER NOT NULL,
    n_neg    INTEGER NOT NULL,
    vec      DOUBLE[] NOT NULL,
    PRIMARY KEY (run_id, concept, hook, layer, position, kind)
);

-- Per-layer direction metrics: cosine_dm_probe, diff_norm, projection_d, projection_auc (held-out).
CREATE TABLE IF NOT EXISTS safety_layers (
    run_id   INTEGER NOT NULL,
    concept  VARCHAR NOT NULL,
    hook     VARCHAR NOT NULL,
    layer    INTEGER NOT NULL,
    position VARCHAR NOT NULL,
    metric   VARCHAR NOT NULL,
    value    DOUBLE,
    PRIMARY KEY (run_id, concept, hook, layer, position, metric)
);

-- Selection criteria measured per candidate direction (ablated everywhere) on held-out prompts.
CREATE TABLE IF NOT EXISTS safety_candidates (
    run_id               INTEGER NOT NULL,
    concept              VARCHAR NOT NULL,
    hook                 VARCHAR NOT NULL,
    layer                INTEGER NOT NULL,
    position             VARCHAR NOT NULL,
    separability         DOUBLE,      -- probe CV ROC-AUC at this site
    projection_d         DOUBLE,      -- held-out Cohen's d along the direction
    base_refusal_rate    DOUBLE,
    refusal_rate         DOUBLE,      -- with the direction ablated
    refusal_drop         DOUBLE,      -- base - ablated
    base_refusal_logprob DOUBLE,      -- mean log-prob per token of a refusal reply
    refusal_logprob      DOUBLE,
    refusal_logprob_drop DOUBLE,
    kl                   DOUBLE,      -- mean KL(base || ablated), next token after neutral test prompts
    kl_stderr            DOUBLE,
    n_refusal            INTEGER,     -- held-out (test split) harmful prompts
    n_kl                 INTEGER,     -- test split neutral prompts
    seconds              DOUBLE,
    PRIMARY KEY (run_id, concept, hook, layer, position)
);

-- What each criterion picks and the final choice (criterion = chosen), with the rule used.
CREATE TABLE IF NOT EXISTS safety_selection (
    run_id       INTEGER NOT NULL,
    criterion    VARCHAR NOT NULL,    -- separability | ablation | kl | chosen
    concept      VARCHAR NOT NULL,
    hook         VARCHAR NOT NULL,
    layer        INTEGER NOT NULL,
    position     VARCHAR NOT NULL,
    metric       VARCHAR NOT NULL,
    value        DOUBLE,
    separability DOUBLE,
    refusal_drop DOUBLE,
    kl           DOUBLE,
    reason       VARCHAR NOT NULL,
    rule         VARCHAR NOT NULL,
    PRIMARY KEY (run_id, criterion)
);

-- The best-separating ("most harmful") layer per problem, hook and position, with its margins
-- over the shuffled-label control and (harmful_vs_neutral) the cross-source scores.
CREATE TABLE IF NOT EXISTS safety_best_layers (
    run_id                INTEGER NOT NULL,
    problem               VARCHAR NOT NULL,
    hook                  VARCHAR NOT NULL,
    position              VARCHAR NOT NULL,
    layer                 INTEGER NOT NULL,
    cv_accuracy           DOUBLE,
    cv_roc_auc            DOUBLE,
    shuffled_accuracy     DOUBLE,
    shuffled_roc_auc      DOUBLE,
    margin_accuracy       DOUBLE,
    margin_roc_auc        DOUBLE,
    held_out_accuracy     DOUBLE,
    held_out_roc_auc      DOUBLE,
    cross_source_accuracy DOUBLE,
    cross_source_roc_auc  DOUBLE,
    cross_source_dm_accuracy DOUBLE,       -- difference-of-means classifier, source A -> B
    cross_source_dm_roc_auc  DOUBLE,
    PRIMARY KEY (run_id, problem, hook, position)
);
-- Added after the table first shipped: top up stores created before.
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS cross_source_dm_accuracy DOUBLE;
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS cross_source_dm_roc_auc DOUBLE;

-- Issue 18: intervals, permutation nulls and shortcut baselines of the probes. setting cv is the
-- closed-form ridge probe (pooled out-of-fold scores) with its permutation null; length is the same
-- probe on prompt length alone; cv_logistic the logistic regression (mean and std over folds);
-- held_out / held_out:group_* / within / cross carry their 95% interval (lo, hi).
ALTER TABLE safety_probes ADD COLUMN IF NOT EXISTS lo DOUBLE;            -- 95% interval of a held-out score
ALTER TABLE safety_probes ADD COLUMN IF NOT EXISTS hi DOUBLE;
ALTER TABLE safety_probes ADD COLUMN IF NOT EXISTS null_mean DOUBLE;     -- permutation null: mean
ALTER TABLE safety_probes ADD COLUMN IF NOT EXISTS null_p95 DOUBLE;      -- its 95th percentile
ALTER TABLE safety_probes ADD COLUMN IF NOT EXISTS p DOUBLE;             -- (1 + k) / (1 + permutations)
ALTER TABLE safety_probes ADD COLUMN IF NOT EXISTS permutations INTEGER; -- label permutations drawn for this cell
-- The best layer is chosen on cross-validated (train split) scores among layers_compared layers;
-- shuffled_* is the permutation null's mean at that cell, p_* its p-value (not corrected for the
-- choice), held_out_* the test-split score with its 95% interval, length_* the length-only baseline.
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS layers_compared INTEGER;
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS null_p95_accuracy DOUBLE;
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS null_p95_roc_auc DOUBLE;
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS p_accuracy DOUBLE;
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS p_roc_auc DOUBLE;
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS held_out_accuracy_lo DOUBLE;
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS held_out_accuracy_hi DOUBLE;
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS held_out_roc_auc_lo DOUBLE;
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS held_out_roc_auc_hi DOUBLE;
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS length_accuracy DOUBLE;
ALTER TABLE safety_best_layers ADD COLUMN IF NOT EXISTS length_roc_auc DOUBLE;

-- Every point of the sweep but the base: an edit or a random baseline (point joins evals.point).
CREATE TABLE IF NOT EXISTS safety_points (
    run_id        INTEGER NOT NULL,
    point         VARCHAR NOT NULL,
    role          VARCHAR NOT NULL,   -- edit | baseline
    family        VARCHAR NOT NULL,   -- ablate | orth | actadd
    band          VARCHAR,            -- baselines: ablate:random-unit | ablate:random-matched | actadd:random@<|alpha|>
    alpha         DOUBLE,             -- activation addition's coefficient
    removed       DOUBLE,             -- ablation: mean squared component along the direction at the chosen site
    removed_ratio DOUBLE,             -- removed / the harmful direction's (1 for the variance-matched baselines)
    PRIMARY KEY (run_id, point)
);

-- Where a random edit of each kind lands: the 95% prediction band mean +/- t * sd * sqrt(1 + 1/k) over
-- the k baselines' values (and their min / max). An edit of the same family (ablate and orth: the
-- ablate bands; actadd: the band at its |alpha|) outside the band does more than a random edit would.
CREATE TABLE IF NOT EXISTS safety_bands (
    run_id  INTEGER NOT NULL,
    band    VARCHAR NOT NULL,
    family  VARCHAR NOT NULL,         -- ablate | actadd
    alpha   DOUBLE,                   -- actadd: |alpha|
    task    VARCHAR NOT NULL,
    metric  VARCHAR NOT NULL,
    k       INTEGER NOT NULL,
    mean    DOUBLE,
    sd      DOUBLE,
    lo      DOUBLE,
    hi      DOUBLE,
    min     DOUBLE,
    max     DOUBLE,
    PRIMARY KEY (run_id, band, task, metric)
);
