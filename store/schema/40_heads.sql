-- Head study (interp.studies.heads): head importance, pruning points and the Mixture-of-Head
-- router. Every row carries run_id: runs(kind = 'heads') holds model, revision, config and code.

-- Importance of every (layer, head), long form. method: gradient | gradient_seq | zero | mean.
-- gradient: one gate xi per head and token position, L the total token loss, value = mean over
-- real tokens of |dL/dxi| (Michel et al.'s I_h); gradient_seq: one gate per head and sequence,
-- L the sequence's mean token loss, value = mean over sequences of |dL/dxi|.
-- metric: abs_grad (that mean of |dL/dxi|), abs_grad_layer_l2 (divided by the layer's
-- L2 norm), abs_grad_global (layer-normalised then min-max over all heads);
-- delta_loss (text NLL with the head ablated minus clean, nats/token), delta_token_acc (text
-- next-token accuracy change), delta_task_nll (answer NLL change on the task items),
-- delta_task_exact (change of the share of answers the model gets right token by token).
CREATE TABLE IF NOT EXISTS heads_importance (
    run_id  INTEGER NOT NULL,
    method  VARCHAR NOT NULL,
    metric  VARCHAR NOT NULL,
    layer   INTEGER NOT NULL,
    head    INTEGER NOT NULL,
    value   DOUBLE,
    stderr  DOUBLE,          -- over sequences / items (sequences as clusters of tokens for gradient)
    n       BIGINT,          -- sequences or items behind the value
    dataset VARCHAR NOT NULL, -- text | task
    n_tokens BIGINT,         -- real (unpadded) tokens of the sample behind the value
    PRIMARY KEY (run_id, method, metric, layer, head)
);
-- Added after the table first shipped: top up stores created before.
ALTER TABLE heads_importance ADD COLUMN IF NOT EXISTS n_tokens BIGINT;

-- Mean of each head's z over the real tokens of the gradient-importance sample (the fill of mean ablation).
CREATE TABLE IF NOT EXISTS heads_means (
    run_id   INTEGER NOT NULL,
    layer    INTEGER NOT NULL,
    head     INTEGER NOT NULL,
    n_tokens BIGINT NOT NULL,
    vec      FLOAT[] NOT NULL,
    PRIMARY KEY (run_id, layer, head)
);

-- How well two importance scores agree over all heads (score = method:metric).
CREATE TABLE IF NOT EXISTS heads_agreement (
    run_id      INTEGER NOT NULL,
    score_a     VARCHAR NOT NULL,
    score_b     VARCHAR NOT NULL,
    spearman    DOUBLE,
    kendall     DOUBLE,
    top_n       INTEGER NOT NULL, -- size of the "most important" set compared
    top_overlap DOUBLE,           -- |top_a & top_b| / top_n
    PRIMARY KEY (run_id, score_a, score_b)
);

-- What each sweep point of the run is (its scores are in evals under the same run_id and point).
CREATE TABLE IF NOT EXISTS heads_points (
    run_id       INTEGER NOT NULL,
    point        VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,  -- prune | router
    method       VARCHAR NOT NULL,  -- gradient | zero | mean | random<seed> | gradient_layer | router
    scope        VARCHAR NOT NULL,  -- global (least important anywhere) | layer (same count per layer)
    heads_off    INTEGER NOT NULL,  -- heads pruned, or inactive per token summed over layers (router)
    frac_off     DOUBLE NOT NULL,   -- heads_off / (layers * heads)
    PRIMARY KEY (run_id, point)
);

-- Router training curve, one row per step.
CREATE TABLE IF NOT EXISTS heads_router_steps (
    run_id  INTEGER NOT NULL,
    top_k   INTEGER NOT NULL,
    step    INTEGER NOT NULL,
    lm_loss DOUBLE NOT NULL,
    lb_loss DOUBLE NOT NULL,   -- mean over layers of the Switch load-balancing loss (1 = balanced)
    loss    DOUBLE NOT NULL,   -- lm_loss + lb_coef * lb_loss
    seconds DOUBLE NOT NULL,
    PRIMARY KEY (run_id, top_k, step)
);

-- Latest training checkpoint of each router (router + optimiser state), for exact resume.
CREATE TABLE IF NOT EXISTS heads_router_ckpt (
    run_id INTEGER NOT NULL,
    top_k  INTEGER NOT NULL,
    step   INTEGER NOT NULL,   -- steps done
    state  BLOB NOT NULL,      -- torch.save of {router, optimizer}
    PRIMARY KEY (run_id, top_k)
);

-- Trained router parameters (readable without interp): scores = weight . x + bias.
CREATE TABLE IF NOT EXISTS heads_router_params (
    run_id INTEGER NOT NULL,
    top_k  INTEGER NOT NULL,
    digest VARCHAR NOT NULL,   -- HeadRouting.router in evals.intervention
    layer  INTEGER NOT NULL,
    head   INTEGER NOT NULL,
    bias   DOUBLE NOT NULL,
    weight FLOAT[] NOT NULL,
    PRIMARY KEY (run_id, top_k, layer, head)
);

-- How often each head is active under the trained router, on held-out text.
CREATE TABLE IF NOT EXISTS heads_router_usage (
    run_id    INTEGER NOT NULL,
    top_k     INTEGER NOT NULL,
    layer     INTEGER NOT NULL,
    head      INTEGER NOT NULL,
    frequency DOUBLE NOT NULL,  -- share of tokens for which the head is among the top k
    mean_gate DOUBLE NOT NULL,  -- mean gate over tokens (0 when inactive)
    mean_prob DOUBLE NOT NULL,  -- mean router probability
    n_tokens  BIGINT NOT NULL,
    PRIMARY KEY (run_id, top_k, layer, head)
);

-- Held-out text loss of each router against the base model and static pruning at the same budget.
CREATE TABLE IF NOT EXISTS heads_router_summary (
    run_id          INTEGER NOT NULL,
    top_k           INTEGER NOT NULL,
    digest          VARCHAR NOT NULL,
    steps           INTEGER NOT NULL,
    heldout_tokens  BIGINT NOT NULL,
    base_nll        DOUBLE NOT NULL,  -- unedited model
    router_nll      DOUBLE NOT NULL,  -- trained router, top_k heads per token and layer
    uniform_nll     DOUBLE NOT NULL,  -- untrained (uniform) router, same k: a fixed arbitrary head subset
    static_nll      DOUBLE NOT NULL,  -- static pruning, the top_k most gradient-important heads kept per layer
    router_lb       DOUBLE NOT NULL,  -- load-balancing loss on the held-out text
    PRIMARY KEY (run_id, top_k)
);
