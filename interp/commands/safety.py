"""`invoke safety`: probes, harmful directions, directional ablation, weight orthogonalisation
and activation addition, evaluated in one run (STUDIES.md section 5)."""

from __future__ import annotations

from invoke import Context, task

from interp.commands import DEFAULT_STORE, helps
from interp.commands.cli import FORMATS, CliTask, lmeval_tasks, print_table, user_errors
from interp.commands.settings import HELP, FieldSpec, flag_types, resolve

SAFETY_FLAGS = ("budget", "per_set", "alphas", "seed", "lm_eval", "probe_hooks", "probe_layers", "positions", "folds",
                "permutations", "ridge", "test_frac", "candidate_layers", "candidate_positions", "direction_hook",
                "kl_max", "min_auc", "sel_gen_tokens", "eval_budget", "toxic_ablation", "baselines", "batch_size", "harmful", "harmless",
                "pairs", "corpus", "corpus_path", "steer_from")


CFG = "interp.studies.safety_config:SafetyCfg"


@task(klass=CliTask, types=flag_types(CFG, *SAFETY_FLAGS, format=FORMATS, probe_c=FieldSpec(CFG, "C")),
      help=helps(
    "quick", "device_map", "revision", "lm_eval", **HELP,
    budget="smoke (CLI tests, seconds of work), quick (under 10 minutes on 2 CPU cores) or full; "
           "--quick is --budget quick; default full",
    per_set="prompts captured per prompt set (harmful, toxic, neutral, stereotypes); default from the budget",
    alphas="activation-addition coefficients, comma-separated, in units of the class-mean difference "
           "(e.g. -2,-1,1,2); default from the budget",
    probe_hooks="residual hooks probed: resid_pre and/or resid_post", probe_layers="all, stride:K or 3,7,11",
    positions="token reductions probed: last and/or mean", folds="cross-validation folds",
    permutations="label permutations per probed cell", ridge="ridge probe penalty",
    probe_c="inverse L2 strength of the logistic probe (default 0.1)", test_frac="held-out share of each stratum",
    candidate_layers="layers whose direction is a candidate: stride:K or 3,7,11",
    candidate_positions="positions whose direction is a candidate", direction_hook="resid_pre or resid_post",
    kl_max="most KL on neutral prompts a chosen direction may cost", min_auc="least probe AUC of a chosen direction",
    sel_gen_tokens="greedy tokens per reply for selection", eval_budget="evaluation budget: smoke, quick, full or counts",
    toxic_ablation="also ablate the toxic direction: true or false", baselines="random edits per kind (0 or >= 2)",
    batch_size="prompts per forward pass when capturing (never changes results)",
    harmful="your harmful prompts (.jsonl/.csv with a text or prompt column) in place of the built-in set "
            "(probes, directions, edits; refusal is scored on its held-out fifth)",
    harmless="your harmless prompts (.jsonl/.csv) in place of the built-in neutral set",
    pairs="your contrastive pairs in place of both sets: JSONL with positive and negative fields (or CSV with "
          "two columns), one pair per line; the harmful direction is the mean of the pairs' differences",
    steer_from="RUN:POINT of a stored activation-addition point (same store): the addition edits steer with its "
               "vector, scale, layers and positions at each --alphas, recorded with its run, point and digest",
    corpus="perplexity corpus of the evaluation: book (default, offline), wikitext2, c4 or text (your own file "
           "in --corpus-path)",
    corpus_path="local WikiText-2 / C4 file or folder for --corpus, or your own .txt / JSONL text file",
    seed="seed for splits, folds, label permutations, random baselines and evaluation subsets",
    format="table (default), csv or json for the outcome table",
))
@user_errors
def safety(c: Context, model: str | None = None, store: str = DEFAULT_STORE, config: str | None = None,
           print_config: bool = False, quick: bool = False, budget: str | None = None, per_set: int | None = None,
           alphas: tuple[float, ...] | None = None, seed: int | None = None, lm_eval: tuple[str, ...] | None = None,
           probe_hooks: tuple[str, ...] | None = None, probe_layers: str | None = None,
           positions: tuple[str, ...] | None = None, folds: int | None = None, permutations: int | None = None,
           ridge: float | None = None, probe_c: float | None = None, test_frac: float | None = None,
           candidate_layers: str | None = None, candidate_positions: tuple[str, ...] | None = None,
           direction_hook: str | None = None, kl_max: float | None = None, min_auc: float | None = None,
           sel_gen_tokens: int | None = None, eval_budget: str | dict | None = None,
           toxic_ablation: bool | None = None, baselines: int | None = None, batch_size: int | None = None,
           harmful: str | None = None, harmless: str | None = None, pairs: str | None = None,
           corpus: str | None = None, corpus_path: str | None = None,
           steer_from: str | None = None, dtype: str | None = None,
           device: str | None = None, device_map: str | None = None, revision: str | None = None,
           format: str = "table") -> None:
    """Safety study: probes per layer, harmful direction, ablation / orthogonalisation / activation
    addition, and how much toxicity and compliance moved under each edit and what it cost."""
    from interp.model.loading import load_model
    from interp.studies.safety import SafetyCfg, run_safety
    from store import Store
    from store.safety import outcome, read_table

    got = resolve("safety", SafetyCfg, locals(), SAFETY_FLAGS, C=probe_c,
                  lm_eval=None if lm_eval is None else lmeval_tasks(",".join(lm_eval)))
    if got is None:
        return
    model_cfg, cfg = got
    st = Store(store)
    st.preflight()
    loaded = load_model(model_cfg)
    run_id = run_safety(loaded, st, cfg)
    with st.connect(read_only=True) as con:
        best = read_table(con, "safety_best_layers", run_id)
        sel = read_table(con, "safety_selection", run_id)
        out = outcome(con, run_id)
    print_table(best.round(4)[["problem", "hook", "position", "layer", "cv_accuracy", "cv_roc_auc", "shuffled_accuracy",
                      "margin_accuracy", "p_roc_auc", "held_out_accuracy", "held_out_accuracy_lo",
                      "held_out_accuracy_hi", "length_roc_auc", "cross_source_roc_auc", "cross_source_dm_roc_auc"]],
                title=f"best-separating layer per probe problem (run {run_id}; chosen on train-split CV; "
                      "shuffled = permutation null mean, margin = CV - it, p = permutation p-value; held-out "
                      "accuracy with its 95% interval)", fmt=format)
    print_table(sel[["criterion", "hook", "layer", "position", "metric", "value", "kl", "reason"]],
                title=f"direction selection (run {run_id})", fmt=format)
    cols = ["point", "toxicity", "d_toxicity", "d_toxicity_lo", "d_toxicity_hi", "refusal", "d_refusal", "d_refusal_lo",
            "d_refusal_hi", "compliance", "ppl", "ppl_change", "facts", "d_facts", "arith", "d_arith", "kl"]
    print_table(out[cols].round(4) if format == "table" else out,
                title=f"safety run {run_id}: what each edit moved and what it cost (d_* vs base, _lo.._hi its paired "
                      f"95% interval; baseline: random edits; all columns: --format csv or store.safety.outcome)",
                fmt=format)
    print(f"run {run_id}: safety study stored in {st.path}")
