-- interp store, core tables (schema version 2, SCHEMA_VERSION in store/db.py and
-- meta.schema_version in every store). This file, then the per-study files in store/schema/
-- in name order, run on a write-open whenever a store's meta.schema_digest differs from
-- theirs; each uses CREATE ... IF NOT EXISTS, so a study's new tables appear in older
-- stores automatically. Changing an existing table needs a migration in store/db.py.
-- Scalars live in this DuckDB file; activation vectors live in Parquet shards beside it
-- (<store>.shards/run_id=R/hook=H/layer=L/part-N.parquet), listed in `shards` and read
-- through the `activations` view. See BENCHMARKS.md for why.

CREATE TABLE IF NOT EXISTS meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

CREATE SEQUENCE IF NOT EXISTS run_id_seq START 1;

-- One row per run of anything (cache, eval, sweep): how every stored number was made.
CREATE TABLE IF NOT EXISTS runs (
    run_id       INTEGER PRIMARY KEY DEFAULT nextval('run_id_seq'),
    kind         VARCHAR NOT NULL,            -- cache | eval | layers | weights | heads | safety
    model        VARCHAR NOT NULL,            -- hub id or local path
    revision     VARCHAR NOT NULL,            -- commit hash, file hash or local fingerprint
    dtype        VARCHAR NOT NULL,
    device       VARCHAR NOT NULL,
    backend      VARCHAR,                     -- tl | nnsight | torch (capture runs)
    n_layers     INTEGER NOT NULL,
    d_model      INTEGER NOT NULL,
    config       JSON NOT NULL,               -- the run's full config, as given
    config_hash  VARCHAR NOT NULL,            -- identity used to resume the same run
    code_version VARCHAR NOT NULL,            -- interp version + git commit (+dirty)
    status       VARCHAR NOT NULL DEFAULT 'running',  -- running | complete
    created      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished     TIMESTAMP
);

-- Prompts are shared by runs; ids are stable (derived from source file and line).
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id VARCHAR PRIMARY KEY,
    dataset   VARCHAR NOT NULL,               -- prompt-set name: harmful, toxic, neutral, ...
    source    VARCHAR NOT NULL,               -- harmbench, donotanswer, realtoxicityprompts, interp, file
    label     VARCHAR NOT NULL,
    category  VARCHAR,
    text      VARCHAR NOT NULL
);

-- Which prompts a run has finished; written in the same transaction as their vectors,
-- so a prompt is either wholly stored or not at all.
CREATE TABLE IF NOT EXISTS run_prompts (
    run_id    INTEGER NOT NULL,
    prompt_id VARCHAR NOT NULL,
    n_tokens  INTEGER NOT NULL,               -- tokens the model saw (after any truncation)
    truncated INTEGER NOT NULL,               -- tokens cut from the front to fit the context
    split     VARCHAR,                        -- train | test | heldout of the latest safety run on this capture (each run keeps its own in safety_prompts)
    PRIMARY KEY (run_id, prompt_id)
);

-- The exact tokens of each prompt in a run (chat template applied as recorded in runs.config).
-- No key on purpose: a prompt's tokens are inserted in the transaction that inserts it into
-- run_prompts, whose key refuses a second copy; an index here would slow every cache commit.
CREATE TABLE IF NOT EXISTS tokens (
    run_id    INTEGER NOT NULL,
    prompt_id VARCHAR NOT NULL,
    pos       INTEGER NOT NULL,
    token_id  INTEGER NOT NULL,
    token     VARCHAR NOT NULL
);

-- Manifest of activation shards. Only shards listed here are part of the store.
CREATE TABLE IF NOT EXISTS shards (
    run_id  INTEGER NOT NULL,
    hook    VARCHAR NOT NULL,
    layer   INTEGER NOT NULL,
    part    INTEGER NOT NULL,
    path    VARCHAR NOT NULL,                 -- relative to the shard directory
    n_rows  BIGINT NOT NULL,
    n_bytes BIGINT NOT NULL,
    PRIMARY KEY (run_id, hook, layer, part)
);
-- CRC-32 of the file's bytes, computed while writing them (`invoke check --deep` verifies it);
-- null for shards written before checksums or through object storage.
ALTER TABLE shards ADD COLUMN IF NOT EXISTS crc32 BIGINT;
