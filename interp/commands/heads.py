"""`invoke heads`: head importance (ablation, gradient), head pruning and Mixture-of-Head routing,
evaluated in one run (STUDIES.md section 4)."""

from __future__ import annotations

from invoke import task

from interp.commands.cli import FORMATS, CliTask, lmeval_tasks, print_table, user_errors
from interp.validate import Boolean, Optional, Whole
from interp.commands import DEFAULT_MODEL, DEFAULT_STORE, helps


@task(klass=CliTask, types={
    "router_steps": Optional(Whole(min=1)), "text_seqs": Optional(Whole(min=1)), "grad_seqs": Optional(Whole(min=1)),
    "gradient_seq": Optional(Boolean()), "format": FORMATS,
}, help=helps(
    "quick", "dtype", "device", "device_map", "revision", "lm_eval",
    budget="smoke (CLI tests, seconds of work), quick (under 10 minutes on 2 CPU cores) or full; "
           "--quick is --budget quick; default full",
    router_steps="optimiser steps per router (one router per kept share of heads); default from the budget",
    text_seqs="text sequences for ablation importance; default from the budget",
    grad_seqs="text sequences for gradient importance and head means (at least --text-seqs); default from "
              "the budget",
    gradient_seq="also compute gradient importance with one gate per sequence (method gradient_seq) besides "
                 "the per-token one: true or false; default from the budget (full: true)",
    seed="seed for text splits, random pruning orders, task items and evaluation subsets",
    format="table (default), csv or json for the printed tables",
))
@user_errors
def heads(c, model=DEFAULT_MODEL, store=DEFAULT_STORE, quick=False, budget=None, router_steps=None, text_seqs=None,
          grad_seqs=None, gradient_seq=None, seed=0, lm_eval=None, dtype="float32", device="cpu", device_map=None,
          revision=None, format="table"):
    """Head study: which attention heads matter (ablation and gradient importance), pruning the
    least important ones, and a trained top-k head router against static pruning."""
    from interp.studies.heads_config import HeadsCfg
    from interp.commands.cli import load
    from interp.studies.heads import run_heads
    from store import Store

    if quick and budget not in (None, "quick"):
        raise ValueError(f"--quick and --budget {budget} disagree: pass one of them")
    cfg = HeadsCfg(budget="quick" if quick else (budget or "full"), router_steps=router_steps,
                   text_seqs=text_seqs, grad_seqs=grad_seqs, gradient_seq=gradient_seq, seed=seed,
                   lm_eval=lmeval_tasks(lm_eval))
    st = Store(store)
    st.preflight()
    loaded = load(model, revision=revision, dtype=dtype, device=device, device_map=device_map)
    run_id = run_heads(loaded, st, cfg)
    show(st, run_id, format)
    print(f"run {run_id}: head study stored in {st.path}")


def show(st, run_id: int, fmt: str = "table") -> None:
    """Print what the run found: top heads, agreement, routers and the pruning sweep."""
    from analyses.head_agreement import top_heads
    from store import heads as db

    with st.connect(read_only=True) as con:
        importance = db.read_importance(con, run_id)
        agreement = db.read_agreement(con, run_id)
        routers = db.read_router_summary(con, run_id)
        sweep = db.read_pruning(con, run_id)
    print_table(top_heads(importance, 5), title=f"most important heads by each score (run {run_id})", fmt=fmt)
    print_table(agreement, title="agreement between importance scores (rank correlation over heads)", fmt=fmt)
    print_table(routers, title="routers on held-out text: mean NLL vs base, untrained router, static pruning",
                fmt=fmt)
    main = sweep[sweep["metric"].isin(["perplexity", "accuracy"])]
    table = main.pivot_table(index=["kind", "method", "scope", "heads_off", "point"], columns=["task", "metric"],
                             values="value").reset_index()
    table.columns = [c if isinstance(c, str) else "_".join(x for x in c if x) for c in table.columns]
    print_table(table.sort_values(["heads_off", "kind", "method"]), title="pruning sweep (evals)", fmt=fmt)
