"""`invoke weights`: magnitude and Wanda pruning sweeps (STUDIES.md section 3)."""

from __future__ import annotations

from invoke import task

from interp.commands.cli import FORMATS, CliTask, print_table, user_errors
from interp.validate import Optional, Whole
from interp.commands import DEFAULT_MODEL, DEFAULT_STORE, helps


@task(klass=CliTask, types={"calib_windows": Optional(Whole(min=1)), "format": FORMATS}, help=helps(
    "quick", "dtype", "device", "device_map", "revision",
    budget="smoke (CLI tests, seconds of work), quick (under 10 minutes on 2 CPU cores) or full; "
           "--quick is --budget quick; default full",
    methods="pruning scores to sweep, comma-separated: magnitude, wanda (default both)",
    calibration="Wanda input norms: sequential (block by block on the pruned model, as the paper; default) "
                "or oneshot (from the dense model)",
    tasks="evaluation tasks, comma-separated (default from the budget: quick ppl,facts; full ppl,facts,arith)",
    eval_budget="evaluation budget: smoke, quick, full or counts like ppl=2048,facts=40 (default from the budget)",
    calib_windows="calibration windows for Wanda (default from the budget: quick 16 x 128 tokens, full 64 x 256)",
    seed="seed of the evaluation subsets and the calibration windows",
    format="table (default), csv or json for the printed table",
))
@user_errors
def weights(c, model=DEFAULT_MODEL, store=DEFAULT_STORE, quick=False, budget=None, methods="magnitude,wanda",
            calibration="sequential", tasks=None, eval_budget=None, calib_windows=None, seed=0, dtype="float32",
            device="cpu", device_map=None, revision=None, format="table"):
    """Weight-pruning study: magnitude and Wanda at uniform rates, per module group and per projection,
    N:M; sparsity reached per module and every evaluation into the store (resumes when re-run)."""
    from interp.commands.cli import load
    from interp.studies.weights import WeightsCfg, run_weights, summary
    from store import Store

    if quick and budget not in (None, "quick"):
        raise ValueError(f"--quick and --budget {budget} disagree: pass one of them")
    cfg = WeightsCfg(budget="quick" if quick else (budget or "full"), seed=seed, methods=methods,
                     calibration=calibration, tasks=tasks or None, eval_budget=eval_budget or None,
                     calib_windows=calib_windows)
    st = Store(store)
    st.preflight()
    loaded = load(model, revision=revision, dtype=dtype, device=device, device_map=device_map)
    run_id = run_weights(loaded, st, cfg)
    print_table(summary(st, run_id), title=f"pruning sweep (run {run_id}): sparsity reached and headline metric",
                fmt=format)
    print(f"run {run_id}: weight-pruning study stored in {st.path} "
          "(per module: prune_stats; metric vs rate / pruned weights: the prune_curve view)")
