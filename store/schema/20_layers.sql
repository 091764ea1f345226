-- Layer study (analyses/layer_*.py, interp/studies/layers.py). Every row belongs to one
-- `layers` run (runs.kind = 'layers'); runs.config names the cache run the vectors came from.
-- "Layer" a/b in the similarity tables indexes residual-stream states: state l (0..L-1) is the
-- input of layer l (blocks.l.hook_resid_pre), state L the output of the last layer before the
-- final norm; stream = 'resid_unnormalised' says so. position: last (last token), mean (cosine
-- of token-mean vectors: each state averaged over the prompt's tokens, then compared) or tokens
-- (cosine, and arccos(cos)/pi, of the two states at the same token, averaged over the prompt's
-- tokens). Means are over prompts (each prompt weighs the same), *_se their standard errors.
-- layer_angular (Gromov's rule) has last and mean only; layer_influence has all three (tokens is
-- ShortGPT's token-averaged Block Influence).

-- Cosine and Gromov angular distance arccos(cos)/pi between every pair of states.
CREATE TABLE IF NOT EXISTS layer_similarity (
    run_id      INTEGER NOT NULL,
    position    VARCHAR NOT NULL,
    stream      VARCHAR NOT NULL,
    layer_a     INTEGER NOT NULL,
    layer_b     INTEGER NOT NULL,
    cosine      DOUBLE NOT NULL,
    cosine_se   DOUBLE,
    angular     DOUBLE NOT NULL,
    angular_se  DOUBLE,
    n_prompts   INTEGER NOT NULL,
    PRIMARY KEY (run_id, position, layer_a, layer_b)
);

-- d(l, n) for every block of n layers starting at l (layers l..l+n-1); best marks l*(n).
CREATE TABLE IF NOT EXISTS layer_angular (
    run_id       INTEGER NOT NULL,
    position     VARCHAR NOT NULL,
    stream       VARCHAR NOT NULL,
    n            INTEGER NOT NULL,
    start_layer  INTEGER NOT NULL,
    end_layer    INTEGER NOT NULL,
    distance     DOUBLE NOT NULL,
    distance_se  DOUBLE,
    best         BOOLEAN NOT NULL,
    n_prompts    INTEGER NOT NULL,
    PRIMARY KEY (run_id, position, n, start_layer)
);

-- ShortGPT Block Influence of each layer: 1 - cos(input, output).
CREATE TABLE IF NOT EXISTS layer_influence (
    run_id              INTEGER NOT NULL,
    position            VARCHAR NOT NULL,
    stream              VARCHAR NOT NULL,
    layer               INTEGER NOT NULL,
    block_influence     DOUBLE NOT NULL,
    block_influence_se  DOUBLE,
    n_prompts           INTEGER NOT NULL,
    PRIMARY KEY (run_id, position, layer)
);

-- The sweep plan: which layers each strategy drops at each block size; `point` joins evals.point
-- (one point can serve several strategies, e.g. angular and deepest picking the same block).
CREATE TABLE IF NOT EXISTS layer_points (
    run_id       INTEGER NOT NULL,
    strategy     VARCHAR NOT NULL,   -- single | angular | deepest | shallowest | random | influence
    n            INTEGER NOT NULL,   -- layers dropped
    seed         INTEGER,            -- random blocks only
    heal_steps   INTEGER NOT NULL,   -- 0: dropped only; >0: LoRA-healed for that many steps
    layers       INTEGER[] NOT NULL,
    point        VARCHAR NOT NULL
);
-- Natural key (run_id, strategy, n, seed, heal_steps, point) with seed NULL but for random blocks:
-- not a database key (a NULL key column is refused by PRIMARY KEY, and DuckDB 1.5.5 has no
-- NULLS NOT DISTINCT; its unique indexes refuse a delete-then-insert of the same key once the
-- store was reopened). store.layers.replace_rows refuses a repeated key and replaces a run's
-- rows in one transaction; `invoke check` reports repeated keys (NULL counted as a value).

-- LoRA healing: training loss of each healed point, every few steps.
CREATE TABLE IF NOT EXISTS layer_heal (
    run_id   INTEGER NOT NULL,
    point    VARCHAR NOT NULL,
    step     INTEGER NOT NULL,
    loss     DOUBLE NOT NULL,
    seconds  DOUBLE NOT NULL,
    PRIMARY KEY (run_id, point, step)
);

-- Spearman rank correlation of each cheap proxy with the real harm of dropping (see
-- analyses/layer_agreement.py); agreement > 0: the proxy ranks the harm the right way round.
CREATE TABLE IF NOT EXISTS layer_agreement (
    run_id         INTEGER NOT NULL,
    scope          VARCHAR NOT NULL,   -- single | blocks | blocks_n
    n              INTEGER,            -- block size for single/blocks_n, null for pooled blocks
    proxy          VARCHAR NOT NULL,   -- angular | cosine | influence
    position       VARCHAR NOT NULL,
    task           VARCHAR NOT NULL,
    metric         VARCHAR NOT NULL,
    spearman       DOUBLE,
    p_value        DOUBLE,
    n_points       INTEGER NOT NULL,
    expected_sign  DOUBLE NOT NULL,
    agreement      DOUBLE
);
-- Natural key (run_id, scope, n, proxy, position, task, metric), n NULL for the pooled 'blocks'
-- scope: kept by the writer and `invoke check` as for layer_points.

-- Every evaluated drop with its strategy and the base model's value from the same run.
-- e.g. the block of 8 layers that costs least perplexity:
--   SELECT strategy, layers, value, delta FROM layer_drops
--   WHERE n = 8 AND metric = 'perplexity' AND heal_steps = 0 ORDER BY value LIMIT 1
CREATE OR REPLACE VIEW layer_drops AS
SELECT p.run_id, p.strategy, p.n, p.seed, p.heal_steps, p.layers, p.point, e.task, e.metric,
       e.value, e.stderr, b.value AS base_value, e.value - b.value AS delta
FROM layer_points p
JOIN evals e ON e.run_id = p.run_id AND e.point = p.point
LEFT JOIN evals b ON b.run_id = p.run_id AND b.point = 'base' AND b.task = e.task AND b.metric = e.metric;

-- LoRA healing: the adapters each healed point trained (peft parameter names; weights row-major, shape
-- [rank, in] for lora_A and [out, rank] for lora_B), so a healed model can be rebuilt without training.
CREATE TABLE IF NOT EXISTS layer_heal_adapters (
    run_id   INTEGER NOT NULL,
    point    VARCHAR NOT NULL,
    name     VARCHAR NOT NULL,
    shape    INTEGER[] NOT NULL,
    weights  FLOAT[] NOT NULL,
    PRIMARY KEY (run_id, point, name)
);
-- Content digest of the point's whole adapter set (store.layers.adapters_digest: names, shapes and float32
-- bytes), the same on each of its rows: export-model merges the adapters it finds under it instead of healing
-- again, after checking the weights still hash to it. NULL on rows stored before it existed.
ALTER TABLE layer_heal_adapters ADD COLUMN IF NOT EXISTS digest VARCHAR;
