"""`invoke safety`: probes, harmful directions, directional ablation, weight orthogonalisation
and activation addition, evaluated in one run (STUDIES.md section 5)."""

from __future__ import annotations

from invoke import task

from interp.commands.cli import FORMATS, CliTask, lmeval_tasks, print_table, user_errors
from interp.validate import ListOf, Number, Optional, Whole
from interp.commands import DEFAULT_MODEL, DEFAULT_STORE, helps


@task(klass=CliTask, types={"per_set": Optional(Whole(min=1)), "alphas": Optional(ListOf(Number())), "format": FORMATS},
      help=helps(
    "quick", "dtype", "device", "device_map", "revision", "lm_eval",
    budget="smoke (CLI tests, seconds of work), quick (under 10 minutes on 2 CPU cores) or full; "
           "--quick is --budget quick; default full",
    per_set="prompts captured per prompt set (harmful, toxic, neutral, stereotypes); default from the budget",
    alphas="activation-addition coefficients, comma-separated, in units of the class-mean difference "
           "(e.g. -2,-1,1,2); default from the budget",
    seed="seed for splits, folds, label permutations, random baselines and evaluation subsets",
    format="table (default), csv or json for the outcome table",
))
@user_errors
def safety(c, model=DEFAULT_MODEL, store=DEFAULT_STORE, quick=False, budget=None, per_set=None, alphas=None,
           seed=0, lm_eval=None, dtype="float32", device="cpu", device_map=None, revision=None, format="table"):
    """Safety study: probes per layer, harmful direction, ablation / orthogonalisation / activation
    addition, and how much toxicity and compliance moved under each edit and what it cost."""
    from interp.commands.cli import load
    from interp.studies.safety import SafetyCfg, run_safety
    from store import Store
    from store.safety import outcome, read_table

    if quick and budget not in (None, "quick"):
        raise ValueError(f"--quick and --budget {budget} disagree: pass one of them")
    name = "quick" if quick else (budget or "full")
    cfg = SafetyCfg(budget=name, per_set=per_set, alphas=alphas, seed=seed, lm_eval=lmeval_tasks(lm_eval))
    st = Store(store)
    st.preflight()
    loaded = load(model, revision=revision, dtype=dtype, device=device, device_map=device_map)
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
