"""`invoke layers`: layer similarity, angular distance, Block Influence and layer dropping with
evaluation, optional LoRA healing, and proxy agreement, in one run (STUDIES.md section 2)."""

from __future__ import annotations

from invoke import task

from interp.commands.cli import FORMATS, CliTask, print_table, user_errors
from interp.validate import ListOf, Optional, Whole
from interp.commands import DEFAULT_MODEL, DEFAULT_STORE, helps


def _names(value) -> tuple[str, ...] | None:
    return None if value in (None, "") else tuple(x.strip() for x in str(value).split(",") if x.strip())


@task(klass=CliTask, types={
    "heal_steps": Whole(min=0), "heal_sizes": Optional(ListOf(Whole(min=1))), "sizes": Optional(ListOf(Whole(min=1))),
    "seeds": Optional(ListOf(Whole())), "limit": Optional(Whole(min=1)), "format": FORMATS,
}, help=helps(
    "quick", "dtype", "device", "device_map", "revision",
    budget="smoke (CLI tests, seconds of work), quick (meant to finish under 10 minutes on 2 CPU cores) or full; "
           "--quick is --budget quick; default full",
    heal_steps="LoRA-heal the angular-rule blocks for N steps after dropping them (default 0: off)",
    heal_sizes="block sizes that get a healed point, comma-separated (default: every swept size)",
    sizes="block sizes to sweep, comma-separated (default: quick 1,2,4,8,12,16; full 1..L-1)",
    strategies="block strategies: angular, deepest, shallowest, random, influence (default all)",
    seeds="seeds of the random-block control, comma-separated",
    prompts="prompt sets or files for the similarity statistics (default book: plain prose)",
    limit="prompts per set for the similarity statistics (default 64 quick, 256 full)",
    tasks="evaluation tasks, comma-separated (default ppl,facts,arith; smoke: ppl)",
    eval_budget="evaluation budget: smoke, quick, full or counts like ppl=2048,facts=60",
    mmlu_path="local MMLU data (adds the mmlu task)",
    boolq_path="local BoolQ data (adds the boolq task)",
    chat="wrap the similarity prompts in the chat template (default false)",
    seed="seed for prompt and evaluation subsets and healing",
    format="table (default), csv or json for the printed tables",
))
@user_errors
def layers(c, model=DEFAULT_MODEL, store=DEFAULT_STORE, quick=False, budget=None, heal_steps=0, heal_sizes=None,
           sizes=None,
           strategies=None, seeds=None, prompts="book", limit=None, tasks=None, eval_budget=None, mmlu_path=None,
           boolq_path=None, chat=False, seed=0, dtype="float32", device="cpu", device_map=None, revision=None,
           format="table"):
    """Layer study: which layers the residual stream barely changes (cosine, angular distance,
    Block Influence), what dropping single layers and blocks really costs, and whether the
    cheap proxies predict it."""
    from interp.commands.cli import load
    from interp.studies.layers import run_layers
    from interp.studies.layers_config import STRATEGIES, LayersCfg
    from store import Store

    if quick and budget not in (None, "quick"):
        raise ValueError(f"--quick and --budget {budget} disagree: pass one of them")
    cfg = LayersCfg(budget="quick" if quick else (budget or "full"), prompts=prompts, limit=limit,
                    chat=bool(chat), sizes=sizes, strategies=_names(strategies) or STRATEGIES,
                    seeds=seeds, heal_steps=heal_steps, heal_sizes=heal_sizes, tasks=_names(tasks),
                    eval_budget=eval_budget, mmlu_path=mmlu_path, boolq_path=boolq_path, seed=seed)
    st = Store(store)
    st.preflight()
    loaded = load(model, revision=revision, dtype=dtype, device=device, device_map=device_map)
    result = run_layers(loaded, st, cfg)
    show(st, result.run_id, format)
    print(f"run {result.run_id}: layer study ({result.n_points} points incl. base, vectors from cache run "
          f"{result.cache_run_id}) stored in {st.path}")


def show(st, run_id: int, fmt: str = "table") -> None:
    """Print the best blocks by angular distance, the sweep's perplexity by strategy, and the agreement."""
    from store import layers as db

    with st.connect(read_only=True) as con:
        angular = db.read_table(con, "layer_angular", run_id)
        drops = db.drops(con, run_id, metric="perplexity")
        agreement = db.read_table(con, "layer_agreement", run_id)
    best = angular[angular["best"] & (angular["position"] == "last")]
    print_table(best[["n", "start_layer", "end_layer", "distance"]],
                title="l*(n): block with the smallest angular distance (last token, un-normalised residual)", fmt=fmt)
    if not drops.empty:
        base = drops["base_value"].iloc[0]
        table = (drops.groupby(["n", "strategy", "heal_steps"], as_index=False)
                 .agg(perplexity=("value", "mean"), spread=("value", "std"), points=("point", "nunique"),
                      example=("point", "first")))
        print_table(table, title=f"perplexity after dropping (base {base:.4g}; random: mean and std over seeds)",
                    fmt=fmt)
    main = agreement[agreement["metric"] == "nll"]
    print_table(main[["scope", "n", "proxy", "position", "spearman", "p_value", "n_points", "agreement"]],
                title="do the proxies predict the loss increase? (Spearman; agreement > 0: right way round)",
                fmt=fmt)
