-- Weight pruning (study "weights"): Wanda calibration statistics and what each pruning point did.
-- Evaluations of the points are in `evals` (study = 'weights'); `prune_curve` joins the two.

-- One set of Wanda input norms. calib_id is a content hash of the model (name, revision, dtype,
-- shape), the calibration data and the mode, plus for mode 'sequential' the pruning spec that was
-- applied block by block while measuring; any later run with the same identity reuses it.
CREATE TABLE IF NOT EXISTS calibrations (
    calib_id  VARCHAR PRIMARY KEY,
    run_id    INTEGER NOT NULL,           -- the run that computed it
    model     VARCHAR NOT NULL,
    revision  VARCHAR NOT NULL,
    mode      VARCHAR NOT NULL,           -- oneshot (dense model) | sequential (progressively pruned)
    spec      JSON,                       -- the PruneSpec measured under (sequential), null for oneshot
    dataset   JSON NOT NULL,              -- calibration windows: source, count, length, seed, excluded eval windows
    n_tokens  BIGINT NOT NULL,
    seconds   DOUBLE,
    created   TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- L2 norm of every input feature of a linear module over the calibration tokens: ||X_j||_2.
CREATE TABLE IF NOT EXISTS input_norms (
    calib_id  VARCHAR NOT NULL,
    run_id    INTEGER NOT NULL,
    layer     INTEGER NOT NULL,
    module    VARCHAR NOT NULL,           -- q | k | v | o | gate | up | down (qkv in stores written before fused slices)
    n_in      INTEGER NOT NULL,
    norms     FLOAT[] NOT NULL,           -- (n_in,), feature j at index j + 1
    PRIMARY KEY (calib_id, layer, module)
);

-- One row per sweep point (the base model included, with nothing pruned): totals over the
-- selected modules.
CREATE TABLE IF NOT EXISTS prune_points (
    run_id       INTEGER NOT NULL,
    point        VARCHAR NOT NULL,        -- evals.point
    intervention JSON NOT NULL,           -- the PruneSpec
    method       VARCHAR NOT NULL,        -- magnitude | wanda | base
    calibration  VARCHAR,                 -- sequential | oneshot (wanda)
    grp          VARCHAR NOT NULL,        -- row | matrix | global
    structure    VARCHAR NOT NULL,        -- unstructured | N:M
    modules      VARCHAR NOT NULL,        -- selectors, comma-separated (all, attn, mlp, q, ...)
    target_rate  DOUBLE NOT NULL,         -- fraction asked for, weighted by module size
    n_params     BIGINT NOT NULL,         -- weights in the selected modules
    n_pruned     BIGINT NOT NULL,         -- weights the masks removed
    n_zero       BIGINT NOT NULL,         -- zero weights in the selected modules afterwards
    sparsity     DOUBLE NOT NULL,         -- n_zero / n_params
    total_params BIGINT NOT NULL,         -- weights of every prunable projection of the model
    calib_id     VARCHAR,                 -- calibrations.calib_id (wanda)
    seconds      DOUBLE,                  -- time to compute and apply the masks (and calibrate)
    PRIMARY KEY (run_id, point)
);

-- Per (point, layer, module): the sparsity actually reached.
CREATE TABLE IF NOT EXISTS prune_stats (
    run_id    INTEGER NOT NULL,
    point     VARCHAR NOT NULL,
    layer     INTEGER NOT NULL,
    module    VARCHAR NOT NULL,
    rate      DOUBLE NOT NULL,            -- asked for (implied 1 - N/M for N:M)
    n_params  BIGINT NOT NULL,
    n_pruned  BIGINT NOT NULL,
    n_zero    BIGINT NOT NULL,
    sparsity  DOUBLE NOT NULL,
    PRIMARY KEY (run_id, point, layer, module)
);

-- Metric against pruning rate and against pruned weights: one row per (run, point, task, metric).
CREATE OR REPLACE VIEW prune_curve AS
SELECT e.run_id, e.point, p.method, p.calibration, p.grp, p.structure, p.modules, p.target_rate,
       p.sparsity, p.n_pruned, p.n_params, p.total_params, p.n_pruned / p.total_params AS pruned_fraction,
       e.task, e.metric, e.value, e.stderr, e.n
FROM evals e JOIN prune_points p ON p.run_id = e.run_id AND p.point = e.point
WHERE e.study = 'weights';
