"""Head study (STUDIES.md section 4): head importance by ablation and gradient, static head
pruning, and Mixture-of-Head routing, evaluated in one run.

Steps (each resumes: a stage whose rows are stored is not recomputed):
1. text: book-corpus sequences held out from the evaluation's perplexity windows, split into
   importance / router-training / held-out parts; capital-city cloze items for a task metric;
2. head means of z and gradient importance (per token, optionally per sequence) on the larger
   gradient sample; zero and mean ablation importance on its first text_seqs sequences; their
   agreement;
3. one router per kept share of heads, trained with checkpoints; usage and held-out loss
   against the base model, an untrained router and static per-layer pruning;
4. sweep: base, pruning the k least important heads by each score (and random orders) at
   every budget (heads chosen by mean ablation are replaced by their mean, as they were scored),
   static per-layer pruning and the routers at the routers' budgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
import torch

from analyses import head_agreement, head_pruning
from interp.data.prompts import book_corpus
from interp.evals import ppl
from interp.evals.choice import capitals, subset
from interp.interventions.gating import save_means
from interp.interventions.heads import HeadMask, HeadRouting, router_dir
from interp.interventions.router import HeadRouter, RouterError, routed, save_router
from interp.model.loading import Loaded
from interp.studies import heads_importance as imp
from interp.studies.heads_config import HeadsCfg
from interp.studies.heads_text import (
    Scored,
    answer_batch,
    batches,
    corpus_ids,
    held_out_chunks,
    lm_batch,
    split,
)
from interp.studies.heads_train import RouterCfg, mean_nll, train_router, usage
from interp.studies.sweep import Phase, no_phase, run_sweep, start_study_run
from store import Store
from store import heads as db

if TYPE_CHECKING:
    import duckdb
    from transformers import PreTrainedTokenizerBase


@dataclass
class Data:
    text: list[Scored]
    """The ablation sample (text_seqs sequences)."""
    grad: list[Scored]
    """The gradient-importance and head-means sample: the ablation sample and more (grad_seqs)."""
    task: list[Scored]
    train: list[list[int]]
    heldout: list[Scored]
    excluded_windows: int


def prepare(loaded: Loaded, cfg: HeadsCfg) -> Data:
    tok = cast("PreTrainedTokenizerBase", loaded.tokenizer)
    pad_id = tok.pad_token_id
    assert cfg.seq_len is not None and cfg.text_seqs is not None and cfg.grad_seqs is not None  # the budget
    assert cfg.router.train_seqs is not None and cfg.router.heldout_seqs is not None  # filled them (HeadsCfg)
    ecfg = cfg.eval_cfg()
    exclude: set[tuple[int, ...]] = set()
    window = cfg.seq_len
    if ecfg.corpus == "book" and "ppl" in ecfg.tasks:  # never train or select on the evaluation's windows
        window = ppl.window_length(loaded, ecfg)
        docs, source = ppl.corpus_texts(ecfg)
        exclude = set(ppl.make_windows(tok, docs, window, ecfg.count("ppl"), ecfg.seed, "book", source).windows)
    chunks = held_out_chunks(corpus_ids(tok, book_corpus()), cfg.seq_len, exclude, window)
    parts = split(chunks, {"text": cfg.text_seqs, "grad": cfg.grad_seqs - cfg.text_seqs, "train": cfg.router.train_seqs,
                           "heldout": cfg.router.heldout_seqs}, cfg.seed)
    items = subset(capitals(), cfg.task_items, cfg.seed)
    contexts = [tok(it.question)["input_ids"] for it in items]
    answers = [tok(" " + it.choices[it.answer], add_special_tokens=False)["input_ids"] for it in items]
    pairs = list(zip(contexts, answers))

    def lm(seqs: list[list[int]]) -> Scored:
        return lm_batch(seqs, pad_id)

    def task(chunk: list[tuple[list[int], list[int]]]) -> Scored:
        return answer_batch([c for c, _ in chunk], [a for _, a in chunk], pad_id)

    return Data(batches(lm, parts["text"], cfg.batch_size), batches(lm, parts["text"] + parts["grad"], cfg.batch_size),
                batches(task, pairs, 4 * cfg.batch_size),
                parts["train"], batches(lm, parts["heldout"], cfg.batch_size), len(exclude))


def _grid(values: np.ndarray, stderr: np.ndarray, metric: str, n: int, dataset: str, layers: range,
          n_tokens: int | None = None) -> pd.DataFrame:
    H = values.shape[1]
    rows = [{"metric": metric, "layer": l, "head": h, "value": float(values[l, h]),
             "stderr": None if not np.isfinite(stderr[l, h]) else float(stderr[l, h]), "n": n,
             "n_tokens": n_tokens, "dataset": dataset}
            for l in layers for h in range(H)]
    return pd.DataFrame(rows)


def gradient_rows(g: dict) -> pd.DataFrame:
    """Rows of one gradient importance result: the raw mean |dL/dxi| with its standard error, the
    per-layer L2-normalised score and the globally min-max normalised one."""
    L = g["mean"].shape[0]
    layer_l2 = imp.normalise_layers(g["mean"])
    nan = np.full_like(g["mean"], np.nan)
    n, tokens = g["n"], g["n_tokens"]
    return pd.concat([_grid(g["mean"], g["stderr"], "abs_grad", n, "text", range(L), tokens),
                      _grid(layer_l2, nan, "abs_grad_layer_l2", n, "text", range(L), tokens),
                      _grid(imp.normalise_global(layer_l2), nan, "abs_grad_global", n, "text", range(L), tokens)])


def compute_importance(loaded: Loaded, store: Store, run_id: int, cfg: HeadsCfg, data: Data, progress: bool) -> None:
    with store.connect() as con:
        done = db.importance_methods(con, run_id)
        means = db.read_means(con, run_id)
    if means is None:
        means = imp.head_means(loaded, data.grad).numpy()
        with store.connect() as con:
            db.write_means(con, run_id, means, sum(b.tokens for b in data.grad))
    L = loaded.n_layers
    for per in ("token", "sequence") if cfg.gradient_seq else ("token",):
        method = imp.GRADIENT_METHODS[per]
        if method not in done:
            df = gradient_rows(imp.gradient_importance(loaded, data.grad, per, progress))
            with store.connect() as con:
                db.write_importance(con, run_id, method, df)
    if not {"zero", "mean"} <= done:
        layers = cfg.ablated_layers(L)
        parts: dict[str, list[pd.DataFrame]] = {m: [] for m in imp.MODES}
        for name, sample, metrics in (("text", data.text, (("nll", "delta_loss"), ("acc", "delta_token_acc"))),
                                      ("task", data.task, (("nll", "delta_task_nll"),
                                                           ("exact", "delta_task_exact")))):
            ab = imp.ablation_importance(loaded, sample, torch.from_numpy(means), layers=layers, progress=progress)
            n, tokens = len(ab.clean["nll"]), sum(b.tokens for b in sample)
            for key, metric in metrics:
                mean, se = ab.delta(key)
                for i, mode in enumerate(imp.MODES):
                    parts[mode].append(_grid(mean[i], se[i], metric, n, name, layers, tokens))
        with store.connect() as con:
            for mode in imp.MODES:
                db.write_importance(con, run_id, mode, pd.concat(parts[mode]))
    with store.connect() as con:
        db.write_agreement(con, run_id, head_agreement.agreement(db.read_importance(con, run_id)))


def _restore_file(con: duckdb.DuckDBPyConnection, run_id: int, k: int, digest: str) -> None:
    """Write a finished router's file from the store when the router directory lacks it."""
    if (router_dir() / f"{digest}.safetensors").exists():
        return
    weight, bias = db.read_router_params(con, run_id, k)
    L, H, d = weight.shape
    router = HeadRouter(L, d, H)
    with torch.no_grad():
        router.weight.copy_(torch.from_numpy(weight))
        router.bias.copy_(torch.from_numpy(bias))
    if save_router(router, router_dir())[0] != digest:
        raise RouterError(f"router {digest} of run {run_id} could not be restored from the store")


def train_routers(loaded: Loaded, store: Store, run_id: int, cfg: HeadsCfg, data: Data, ks: list[int],
                  importance: pd.DataFrame, progress: bool) -> dict[int, str]:
    out: dict[int, str] = {}
    base_nll = None
    for k in ks:
        with store.connect() as con:
            digest = db.router_digest(con, run_id, k)
            if digest is not None:
                _restore_file(con, run_id, k, digest)
                out[k] = digest
                continue
            ckpt = db.load_checkpoint(con, run_id, k)
        assert cfg.router.steps is not None and cfg.router.batch is not None  # the budget filled them (HeadsCfg)
        rcfg = RouterCfg(top_k=k, steps=cfg.router.steps, batch_size=cfg.router.batch, lr=cfg.router.lr,
                         lb_coef=cfg.router.lb_coef, ckpt_every=max(1, min(25, cfg.router.steps)), seed=cfg.seed)

        def save(step: int, state: bytes, rows: pd.DataFrame, k: int = k) -> None:
            with store.connect() as con:
                db.save_checkpoint(con, run_id, k, step, state, rows)

        router = train_router(loaded, rcfg, data.train, resume=ckpt, checkpoint=save, progress=progress)
        use, router_nll, router_lb = usage(loaded, router, k, data.heldout)
        if base_nll is None:
            base_nll = mean_nll(loaded, data.heldout)
        with routed(loaded, HeadRouter(loaded.n_layers, loaded.d_model, loaded.n_heads), k):  # uniform
            uniform_nll = mean_nll(loaded, data.heldout)
        static = HeadMask(head_pruning.per_layer(importance, "gradient", loaded.n_heads - k))
        with static.apply(loaded):
            static_nll = mean_nll(loaded, data.heldout)
        digest, _ = save_router(router, router_dir())
        summary = {"steps": cfg.router.steps, "heldout_tokens": sum(b.tokens for b in data.heldout),
                   "base_nll": base_nll, "router_nll": router_nll, "uniform_nll": uniform_nll,
                   "static_nll": static_nll, "router_lb": router_lb}
        with store.connect() as con:
            db.write_router(con, run_id, k, digest, router.weight.detach().numpy(), router.bias.detach().numpy(),
                            use, summary)
        out[k] = digest
    return out


def build_points(cfg: HeadsCfg, n_layers: int, n_heads: int, importance: pd.DataFrame,
                 routers: dict[int, str], means: str) -> tuple[list, pd.DataFrame]:
    """Sweep points and what each one is (kind, method, scope, heads off).

    Heads chosen by mean ablation are pruned the way they were scored: replaced by their mean
    (digest ``means``); 'mean_zero' zeroes the same heads, the control showing why that matters.
    """
    assert cfg.prune_fracs is not None and cfg.methods is not None and cfg.random_seeds is not None  # the budget
    total = n_layers * n_heads
    budgets = sorted({round(f * total) for f in cfg.prune_fracs} | {n_layers * (n_heads - k) for k in routers} - {0})
    orders = {}
    for m in cfg.methods:
        if m == "random":
            for s in range(cfg.random_seeds):
                orders[f"random{s}"] = head_pruning.random_order(n_layers, n_heads, seed=1000 * cfg.seed + s)
        else:
            orders[m] = head_pruning.order(importance, "mean" if m == "mean_zero" else m)
    points, rows = [], []

    def add(spec: HeadMask | HeadRouting, kind: str, method: str, scope: str, off: int) -> None:
        points.append(spec)
        rows.append({"point": spec.label(), "kind": kind, "method": method, "scope": scope,
                     "heads_off": off, "frac_off": off / total})

    for name, ordered in orders.items():
        for n in budgets:
            fill = means if name == "mean" else ""
            add(HeadMask(head_pruning.least_important(ordered, n), name=name, means=fill), "prune", name, "global", n)
    for k in sorted(routers):
        if k < n_heads:
            spec = HeadMask(head_pruning.per_layer(importance, "gradient", n_heads - k), name="gradient_layer")
            add(spec, "prune", "gradient_layer", "layer", n_layers * (n_heads - k))
        add(HeadRouting(router=routers[k], top_k=k), "router", "router", "layer", n_layers * (n_heads - k))
    return points, pd.DataFrame(rows)


def run_heads(loaded: Loaded, store: Store, cfg: HeadsCfg, progress: bool = True,
              on_phase: Phase = no_phase) -> int:
    """Run (or resume) the head study; returns its run id."""
    config = cfg.describe()
    run_id, status = start_study_run(loaded, store, "heads", config)
    if status == "complete":
        return run_id
    cfg.ablated_layers(loaded.n_layers)  # fail before any work when the methods need every layer
    on_phase("prepare")
    data = prepare(loaded, cfg)
    on_phase("importance")
    compute_importance(loaded, store, run_id, cfg, data, progress)
    with store.connect() as con:
        importance = db.read_importance(con, run_id)
        means = save_means(torch.from_numpy(db.read_means(con, run_id)), router_dir())  # (re)writes the file
    assert cfg.router.keep is not None  # the budget filled it (HeadsCfg)
    ks = sorted({head_pruning.keep_count(f, loaded.n_heads) for f in cfg.router.keep})
    on_phase("routers")
    routers = train_routers(loaded, store, run_id, cfg, data, ks, importance, progress)
    points, rows = build_points(cfg, loaded.n_layers, loaded.n_heads, importance, routers, means)
    with store.connect() as con:
        db.write_points(con, run_id, rows)
    on_phase("sweep")
    run_sweep(loaded, store, study="heads", config=config, points=points, eval_cfg=cfg.eval_cfg(),
              progress=progress, run_id=run_id)
    return run_id
