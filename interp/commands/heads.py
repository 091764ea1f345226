"""`invoke heads`: head importance (ablation, gradient), head pruning and Mixture-of-Head routing,
evaluated in one run (STUDIES.md section 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from invoke import Context, task

from interp.commands import DEFAULT_STORE, helps
from interp.commands.cli import FORMATS, CliTask, lmeval_tasks, print_table, user_errors
from interp.commands.settings import HELP, flag_types, resolve

if TYPE_CHECKING:
    from store import Store


HEAD_FLAGS = ("budget", "router_steps", "text_seqs", "grad_seqs", "gradient_seq", "seed", "lm_eval", "router_keep",
              "lb_coef", "router_lr", "router_batch", "methods", "prune_fracs", "random_seeds", "eval_tasks",
              "eval_budget", "seq_len", "train_seqs", "heldout_seqs", "task_items", "ablation_layers", "batch_size",
              "corpus", "corpus_path")


@task(klass=CliTask, types=flag_types("interp.studies.heads_config:HeadsCfg", *HEAD_FLAGS, format=FORMATS),
      help=helps(
    "quick", "device_map", "revision", "lm_eval", **HELP,
    budget="smoke (CLI tests, seconds of work), quick (under 10 minutes on 2 CPU cores) or full; "
           "--quick is --budget quick; default full",
    router_steps="optimiser steps per router (one router per kept share of heads); default from the budget",
    router_keep="share of each layer's heads a router keeps active per token, comma-separated (one router each), "
                "e.g. 0.5,0.75",
    lb_coef="weight of the router's load-balancing loss (default 0.01)",
    router_lr="router learning rate (default 1e-3)",
    router_batch="text sequences per router step",
    text_seqs="text sequences for ablation importance; default from the budget",
    grad_seqs="text sequences for gradient importance and head means (at least --text-seqs); default from "
              "the budget",
    gradient_seq="also compute gradient importance with one gate per sequence (method gradient_seq) besides "
                 "the per-token one: true or false; default from the budget (full: true)",
    methods="pruning orders: gradient, zero, mean, mean_zero, random",
    prune_fracs="shares of all heads pruned, comma-separated (e.g. 0.1,0.25,0.5)",
    random_seeds="random pruning orders as baselines",
    eval_tasks="evaluation tasks of every sweep point, comma-separated",
    eval_budget="evaluation budget: smoke, quick, full or counts like ppl=2048,facts=40",
    seq_len="tokens per text sequence", train_seqs="router training sequences",
    heldout_seqs="held-out sequences for router statistics", task_items="capital-city items for ablation",
    ablation_layers="ablate only the deepest N layers' heads (0: every layer)",
    batch_size="sequences per forward pass for importance (never changes results)",
    seed="seed for text splits, random pruning orders, task items and evaluation subsets",
    corpus="perplexity corpus of the evaluation: book (default, offline), wikitext2, c4 or text (your own file "
           "in --corpus-path)",
    corpus_path="local WikiText-2 / C4 file or folder for --corpus, or your own .txt / JSONL text file",
    format="table (default), csv or json for the printed tables",
))
@user_errors
def heads(c: Context, model: str | None = None, store: str = DEFAULT_STORE, config: str | None = None,
          print_config: bool = False, quick: bool = False, budget: str | None = None,
          router_steps: int | None = None, text_seqs: int | None = None, grad_seqs: int | None = None,
          gradient_seq: bool | None = None, seed: int | None = None, lm_eval: tuple[str, ...] | None = None,
          router_keep: tuple[float, ...] | None = None, lb_coef: float | None = None,
          router_lr: float | None = None, router_batch: int | None = None, methods: tuple[str, ...] | None = None,
          prune_fracs: tuple[float, ...] | None = None, random_seeds: int | None = None,
          eval_tasks: tuple[str, ...] | None = None, eval_budget: str | dict | None = None,
          seq_len: int | None = None, train_seqs: int | None = None, heldout_seqs: int | None = None,
          task_items: int | None = None, ablation_layers: int | None = None, batch_size: int | None = None,
          corpus: str | None = None, corpus_path: str | None = None,
          dtype: str | None = None, device: str | None = None, device_map: str | None = None,
          revision: str | None = None, format: str = "table") -> None:
    """Head study: which attention heads matter (ablation and gradient importance), pruning the
    least important ones, and a trained top-k head router against static pruning."""
    from interp.model.loading import load_model
    from interp.studies.heads import run_heads
    from interp.studies.heads_config import HeadsCfg
    from store import Store

    got = resolve("heads", HeadsCfg, locals(), HEAD_FLAGS,
                  lm_eval=None if lm_eval is None else lmeval_tasks(",".join(lm_eval)))
    if got is None:
        return
    model_cfg, cfg = got
    st = Store(store)
    st.preflight()
    loaded = load_model(model_cfg)
    run_id = run_heads(loaded, st, cfg)
    show(st, run_id, format)
    print(f"run {run_id}: head study stored in {st.path}")


def show(st: Store, run_id: int, fmt: str = "table") -> None:
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
