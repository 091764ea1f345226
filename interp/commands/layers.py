"""`invoke layers`: layer similarity, angular distance, Block Influence and layer dropping with
evaluation, optional LoRA healing, and proxy agreement, in one run (STUDIES.md section 2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from invoke import Context, task

from interp.commands import DEFAULT_STORE, helps
from interp.commands.cli import FORMATS, CliTask, print_table, user_errors
from interp.commands.settings import HELP, flag_types, resolve

if TYPE_CHECKING:
    from store import Store


LAYER_FLAGS = ("budget", "heal_steps", "heal_sizes", "heal_strategies", "heal_rank", "heal_alpha", "heal_dropout",
               "heal_lr", "heal_schedule", "heal_warmup", "heal_batch", "sizes", "strategies", "seeds", "prompts",
               "limit", "max_tokens", "tasks", "eval_budget", "mmlu_path", "boolq_path", "gsm8k_path", "corpus",
               "corpus_path", "chat", "seed", "batch_size")


@task(klass=CliTask, types=flag_types("interp.studies.layers_config:LayersCfg", *LAYER_FLAGS, format=FORMATS), help=helps(
    "quick", "device_map", "revision", **HELP,
    budget="smoke (CLI tests, seconds of work), quick (meant to finish under 10 minutes on 2 CPU cores) or full; "
           "--quick is --budget quick; default full",
    heal_steps="LoRA-heal the chosen strategies' blocks for N steps after dropping them (default 0: off)",
    heal_sizes="block sizes that get a healed point, comma-separated (default: every swept size)",
    heal_strategies="strategies whose blocks are also healed (default angular)",
    heal_rank="LoRA rank (default 8)", heal_alpha="LoRA alpha (default 16)", heal_dropout="LoRA dropout (default 0)",
    heal_lr="healing learning rate (default 2e-4)",
    heal_schedule="learning-rate schedule after the warm-up: constant (default), cosine or linear",
    heal_warmup="warm-up steps (default 0)", heal_batch="training windows per healing step (default 4)",
    sizes="block sizes to sweep, comma-separated (default: quick 1,2,4,8,12,16; full 1..L-1)",
    strategies="block strategies: angular, deepest, shallowest, random, influence (default all)",
    seeds="seeds of the random-block control, comma-separated",
    prompts="prompt sets or files for the similarity statistics (default book: plain prose)",
    limit="prompts per set for the similarity statistics (default 64 quick, 256 full)",
    max_tokens="truncate similarity prompts to their last N tokens (default 64 smoke, 256 quick, 512 full)",
    tasks="evaluation tasks, comma-separated (default ppl,facts,arith; smoke: ppl)",
    eval_budget="evaluation budget: smoke, quick, full or counts like ppl=2048,facts=60",
    mmlu_path="local MMLU data (adds the mmlu task)",
    boolq_path="local BoolQ data (adds the boolq task)",
    gsm8k_path="local GSM8K data (adds the gsm8k task)",
    corpus="perplexity and healing corpus: book (default, offline), wikitext2 or c4",
    corpus_path="local WikiText-2 / C4 file or folder for --corpus",
    chat="wrap the similarity prompts in the chat template (default false)",
    seed="seed for prompt and evaluation subsets and healing",
    batch_size="prompts per forward pass when caching (default 8; never changes results)",
    format="table (default), csv or json for the printed tables",
))
@user_errors
def layers(c: Context, model: str | None = None, store: str = DEFAULT_STORE, config: str | None = None,
           print_config: bool = False, quick: bool = False, budget: str | None = None,
           heal_steps: int | None = None, heal_sizes: tuple[int, ...] | None = None,
           heal_strategies: tuple[str, ...] | None = None, heal_rank: int | None = None,
           heal_alpha: float | None = None, heal_dropout: float | None = None, heal_lr: float | None = None,
           heal_schedule: str | None = None, heal_warmup: int | None = None, heal_batch: int | None = None,
           sizes: tuple[int, ...] | None = None, strategies: tuple[str, ...] | None = None,
           seeds: tuple[int, ...] | None = None, prompts: str | None = None, limit: int | None = None,
           max_tokens: int | None = None, tasks: tuple[str, ...] | None = None, eval_budget: str | None = None,
           mmlu_path: str | None = None, boolq_path: str | None = None, gsm8k_path: str | None = None,
           corpus: str | None = None, corpus_path: str | None = None, chat: bool | None = None,
           seed: int | None = None, batch_size: int | None = None, dtype: str | None = None,
           device: str | None = None, device_map: str | None = None, revision: str | None = None,
           format: str = "table") -> None:
    """Layer study: which layers the residual stream barely changes (cosine, angular distance,
    Block Influence), what dropping single layers and blocks really costs, and whether the
    cheap proxies predict it."""
    from interp.model.loading import load_model
    from interp.studies.layers import run_layers
    from interp.studies.layers_config import LayersCfg
    from store import Store

    got = resolve("layers", LayersCfg, locals(), LAYER_FLAGS)
    if got is None:
        return
    model_cfg, cfg = got
    st = Store(store)
    st.preflight()
    loaded = load_model(model_cfg)
    result = run_layers(loaded, st, cfg)
    show(st, result.run_id, format)
    print(f"run {result.run_id}: layer study ({result.n_points} points incl. base, vectors from cache run "
          f"{result.cache_run_id}) stored in {st.path}")


def show(st: Store, run_id: int, fmt: str = "table") -> None:
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
