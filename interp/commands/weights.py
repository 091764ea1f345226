"""`invoke weights`: magnitude and Wanda pruning sweeps (STUDIES.md section 3)."""

from __future__ import annotations

from invoke import Context, task

from interp.commands import DEFAULT_STORE, helps
from interp.commands.cli import FORMATS, CliTask, print_table, user_errors
from interp.commands.settings import HELP, flag_types, resolve

WEIGHT_FLAGS = ("budget", "methods", "calibration", "tasks", "eval_budget", "calib_windows", "seed", "rates", "modules",
                "module_rates", "group_rates", "nm", "mixed", "mmlu_path", "gsm8k_path", "boolq_path", "corpus",
                "corpus_path", "calib_corpus", "calib_path")


@task(klass=CliTask, types=flag_types("interp.studies.weights_config:WeightsCfg", *WEIGHT_FLAGS, format=FORMATS),
      help=helps(
    "quick", "device_map", "revision", **HELP,
    budget="smoke (CLI tests, seconds of work), quick (under 10 minutes on 2 CPU cores) or full; "
           "--quick is --budget quick; default full",
    methods="pruning scores to sweep, comma-separated: magnitude, wanda (default both)",
    calibration="Wanda input norms: sequential (block by block on the pruned model, as the paper; default) "
                "or oneshot (from the dense model)",
    tasks="evaluation tasks, comma-separated (default from the budget: quick ppl,facts; full ppl,facts,arith)",
    eval_budget="evaluation budget: smoke, quick, full or counts like ppl=2048,facts=40 (default from the budget)",
    calib_windows="calibration windows for Wanda (default from the budget: quick 16 x 128 tokens, full 64 x 256)",
    seed="seed of the evaluation subsets and the calibration windows",
    rates="your own sweep: uniform rates for every projection, e.g. 0.05,0.1,0.2,0.3,0.4,0.5 (any of --rates, "
          "--modules, --group-rates, --nm, --mixed replaces the budget's plan by exactly what you give)",
    modules="your own sweep: projections pruned alone, e.g. q,k,v,o,gate,up,down (with --module-rates)",
    module_rates="rates for each projection in --modules, e.g. 0.5",
    group_rates="your own sweep: rates for the attention-only and MLP-only points",
    nm="your own sweep: N:M patterns, e.g. 2:4,4:8",
    mixed="your own sweep: per-module recipes, e.g. attn=0.2:mlp=0.6,attn=0.6:mlp=0.2",
    mmlu_path="local MMLU data (adds the mmlu task)",
    gsm8k_path="local GSM8K data (adds the gsm8k task)",
    boolq_path="local BoolQ data (adds the boolq task)",
    corpus="perplexity corpus: book (default, offline), wikitext2, c4 or text (your own file in --corpus-path)",
    corpus_path="local WikiText-2 / C4 file or folder for --corpus, or your own .txt / JSONL text file",
    calib_corpus="Wanda calibration corpus: book (default, offline), wikitext2, c4 or text (your own file in "
                 "--calib-path); windows the perplexity evaluation scores are left out when both read one corpus",
    calib_path="local file or folder for --calib-corpus: WikiText-2 / C4 in the hub's formats, or a .txt file "
               "(one document per line) or JSONL/CSV with a 'text' column",
    format="table (default), csv or json for the printed table",
))
@user_errors
def weights(c: Context, model: str | None = None, store: str = DEFAULT_STORE, config: str | None = None,
            print_config: bool = False, quick: bool = False, budget: str | None = None,
            methods: tuple[str, ...] | None = None, calibration: str | None = None,
            tasks: tuple[str, ...] | None = None, eval_budget: str | None = None, calib_windows: int | None = None,
            seed: int | None = None, rates: tuple[float, ...] | None = None, modules: tuple[str, ...] | None = None,
            module_rates: tuple[float, ...] | None = None, group_rates: tuple[float, ...] | None = None,
            nm: tuple[str, ...] | None = None, mixed: tuple[tuple[tuple[str, float], ...], ...] | None = None,
            mmlu_path: str | None = None, gsm8k_path: str | None = None, boolq_path: str | None = None,
            corpus: str | None = None, corpus_path: str | None = None, calib_corpus: str | None = None,
            calib_path: str | None = None, dtype: str | None = None,
            device: str | None = None, device_map: str | None = None, revision: str | None = None,
            format: str = "table") -> None:
    """Weight-pruning study: magnitude and Wanda at uniform rates, per module group and per projection,
    N:M; sparsity reached per module and every evaluation into the store (resumes when re-run)."""
    from interp.model.loading import load_model
    from interp.studies.weights import WeightsCfg, run_weights, summary
    from store import Store

    got = resolve("weights", WeightsCfg, locals(), WEIGHT_FLAGS)
    if got is None:
        return
    model_cfg, cfg = got
    st = Store(store)
    st.preflight()
    loaded = load_model(model_cfg)
    run_id = run_weights(loaded, st, cfg)
    print_table(summary(st, run_id), title=f"pruning sweep (run {run_id}): sparsity reached and headline metric",
                fmt=format)
    print(f"run {run_id}: weight-pruning study stored in {st.path} "
          "(per module: prune_stats; metric vs rate / pruned weights: the prune_curve view)")
