"""What prefix reuse and batched ablations save on the two sweeps that repeat most forwards (issue 20).

1. The single-drop sweep: the base model and every ``LayerDrop((l,))`` for l = 1..L-1 evaluated on
   the layer study's fixed inputs (perplexity windows and multiple-choice items), each point as a full
   forward (``run_sweep(prefix=None)``) and with prefix reuse (each point starts at block l).
2. Head ablation: zero and mean ablation of every head alone on the head study's text sample, once
   as one full forward per (mode, layer, head) with that head gated (what the study did before it
   batched), once as the study runs it (``ablation_importance``: all edits of a layer in wide forward
   passes that start at that layer).

For each it prints wall and CPU seconds, the speed-up, its upper bound and the share of the bound reached, and
the largest relative difference between the two variants' numbers (must be below 1e-5). The bound
is what skipping the cached blocks can save given the FLOPs each forward spends in every block and in
the unembedding, measured with ``torch.utils.flop_counter`` on the base point: the unembedding (and
for ablations the blocks at and above the edited layer) cannot be skipped. For head ablation the bound
is reuse's alone; batching adds what wider matrix products gain on the cores. So head ablation also
prints ``floor_s``: the seconds that the matrix products and the vocabulary loss of every exact edit
take alone on this machine (``product_floor``), and ``floor_speedup`` = ``full_s / floor_s``, more than
any exact float32 implementation of the sweep can reach here.

    python bench/sweep_reuse.py [--model smollm2-135m-instruct] [--threads 2]
        [--eval ppl=1024,facts=24] [--layers all] [--text-seqs 4 --seq-len 48] [--skip drop|heads]

``--skip drop`` times the head-ablation sweep alone.

Figures come from an idle machine; on a busy one, or on a tiny model (``--model <dir>``), it only
checks that it runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REUSABLE = ("ppl", "facts", "mmlu", "boolq", "kl")
"""Tasks whose inputs are fixed (generation tasks run in full in both variants and only dilute the ratio)."""


def block_flops(loaded, run) -> tuple[list[float], float]:
    """FLOPs of every block, and of everything, in ``run()`` (on the unedited model)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    counts = counter.get_flop_counts()
    total = float(sum(counts.get("Global", {}).values()))
    prefix = loaded.arch.layers
    per = []
    for i in range(loaded.n_layers):
        names = [k for k in counts if k.endswith(f"{prefix}.{i}")]
        per.append(float(sum(sum(counts[k].values()) for k in names)))
    return per, total


def rel_diff(a: list[float], b: list[float]) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) if len(a) else 0.0


def drop_sweep(loaded, eval_spec: str, layers: list[int]) -> dict:
    from interp.evals import EvalCfg, evaluate, make_reference
    from interp.evals.prefix import PrefixCache, PrefixCfg, reuse
    from interp.interventions import Base, first_layer
    from interp.interventions.layers import LayerDrop

    counts = dict(part.split("=") for part in eval_spec.split(","))
    bad = [t for t in counts if t not in REUSABLE]
    if bad:
        raise SystemExit(f"--eval task '{bad[0]}' has no fixed inputs: use some of {', '.join(REUSABLE)}")
    cfg = EvalCfg(tasks=tuple(counts), budget=eval_spec, chat=False)
    ref = make_reference(loaded, cfg)
    specs = [Base(), *[LayerDrop((l,)) for l in layers]]
    per, total = block_flops(loaded, lambda: evaluate(loaded, cfg, reference=ref))  # also prepares the data
    full_cost = [total - (sum(per[i] for i in s.layers) if s.layers else 0) for s in specs[1:]]
    reuse_cost = [total - sum(per[:first_layer(s, loaded.n_layers) + 1]) for s in specs[1:]]
    bound = (total + sum(full_cost)) / (total + sum(reuse_cost))

    def values(scores):
        return [s.value for s in scores]

    out = {}
    for name, prefix in (("full", None), ("reuse", PrefixCfg())):
        t0, c0 = time.perf_counter(), time.process_time()
        got = []
        with PrefixCache(prefix) if prefix else _null() as cache:
            for s in specs:
                with s.apply(loaded), reuse(loaded, cache, first_layer(s, loaded.n_layers)):
                    got += values(evaluate(loaded, cfg, reference=ref))
        out[name] = (time.perf_counter() - t0, time.process_time() - c0, got)
    return {"sweep": f"single drop ({len(layers)} layers + base)", "full_s": out["full"][0],
            "fast_s": out["reuse"][0], "full_cpu_s": out["full"][1], "fast_cpu_s": out["reuse"][1],
            "bound": bound, "max_rel_diff": rel_diff(out["reuse"][2], out["full"][2])}


def _null():
    import contextlib

    return contextlib.nullcontext(None)


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def product_floor(loaded, sample, max_tokens: int = 2048, repeats: int = 3) -> float:
    """Seconds that every exact single-head edit of the head sweep needs for its matrix products and its loss alone.

    An exact edit of layer l runs blocks l..L-1 on every token and unembeds every scored position, as
    ``ablation_importance`` batches them (edits of one layer in passes of up to ``max_tokens`` tokens,
    logits in chunks of ``lm.positions_within``). This times only the products of those passes, each
    block's linear layers (its own weights) and the attention's two products, and the unembedding with
    the vocabulary log-sum-exp, on random inputs of the same shapes, at the same thread count; norms,
    rotary tables, activation functions, softmax and residual adds cost nothing here. So ``full_s /
    floor_s`` is more than any exact float32 implementation of the sweep can reach on this machine (a
    median of ``repeats`` per block and shape)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from interp.evals import lm
    from interp.studies import heads_importance as imp
    from interp.studies.heads_text import IGNORE

    blocks = loaded.model.get_submodule(loaded.arch.layers)
    linears = [[m for m in blk.modules() if isinstance(m, nn.Linear)] for blk in blocks]
    unembed = loaded.model.get_submodule(loaded.arch.lm_head).weight
    d_model, vocab = unembed.shape[1], unembed.shape[0]
    H, D = loaded.n_heads, loaded.d_head
    step = lm.positions_within(vocab)
    units = len(imp.MODES) * H
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=unembed.dtype)

    def block_times(rows: int, width: int) -> list[float]:
        n = rows * width
        xs = {m.in_features: rand(n, m.in_features) for ms in linears for m in ms}
        q, k, v = rand(rows, H, width, D), rand(rows, H, D, width), rand(rows, H, width, D)
        out = []
        for ms in linears:
            def run(ms=ms):
                for m in ms:
                    F.linear(xs[m.in_features], m.weight, m.bias)
                torch.matmul(torch.matmul(q, k), v)
            out.append(_median_s(run, repeats))
        return out

    def loss_s(positions: int) -> float:
        h = rand(positions, d_model)
        tgt = torch.randint(vocab, (positions,), generator=gen)

        def run():
            for i in range(0, positions, step):
                imp._nll_hits(F.linear(h[i:i + step], unembed), tgt[i:i + step])
        return _median_s(run, repeats)

    total = 0.0
    for b in sample:
        width = int(b.kwargs["input_ids"].shape[1])
        scored = int((b.targets != IGNORE).sum())
        per_pass = max(1, min(units, max_tokens // (b.rows * width)))
        chunks = [min(per_pass, units - s) for s in range(0, units, per_pass)]
        for c in sorted(set(chunks)):
            t = block_times(c * b.rows, width)
            u = loss_s(c * scored)
            # every layer l: blocks l..L-1 and the loss, once per chunk of that size
            total += chunks.count(c) * sum(sum(t[l:]) + u for l in range(len(t)))
    return total


def head_sweep(loaded, text_seqs: int, seq_len: int) -> dict:
    import numpy as np
    import torch

    from interp.data.prompts import book_corpus
    from interp.interventions.gating import LayerGate, head_gates
    from interp.studies import heads_importance as imp
    from interp.studies.heads_text import batches, corpus_ids, lm_batch

    ids = corpus_ids(loaded.tokenizer, book_corpus())
    seqs = [ids[i * seq_len:(i + 1) * seq_len] for i in range(text_seqs)]
    sample = batches(lambda s: lm_batch(s, loaded.tokenizer.pad_token_id), seqs, 4)
    means = imp.head_means(loaded, sample)
    L, H = loaded.n_layers, loaded.n_heads

    per, total = block_flops(loaded, lambda: [imp.row_metrics(loaded.logits, imp.final_hidden(loaded, b), b.targets)
                                              for b in sample])
    units = len(imp.MODES) * L * H
    suffix_cost = sum(len(imp.MODES) * H * (total - sum(per[:l])) for l in range(L))
    bound = units * total / (total + suffix_cost)  # + total: the clean pass that records the block inputs

    t0, c0 = time.perf_counter(), time.process_time()
    naive = np.full((len(imp.MODES), L, H, text_seqs), np.nan)
    for m, mode in enumerate(imp.MODES):
        for layer in range(L):
            for head in range(H):
                gates = torch.ones(H)
                gates[head] = 0.0
                fill = means[layer] if mode == "mean" else None
                row0 = 0
                for b in sample:
                    with head_gates(loaded, {layer: LayerGate(gates, fill)}):
                        nll, _, _ = imp.row_metrics(loaded.logits, imp.final_hidden(loaded, b), b.targets)
                    naive[m, layer, head, row0:row0 + b.rows] = nll.numpy()
                    row0 += b.rows
    naive_s, naive_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    fast = imp.ablation_importance(loaded, sample, means).edited["nll"]
    fast_s, fast_cpu = time.perf_counter() - t0, time.process_time() - c0
    # the study's passes (2,048 tokens) and the widest (every edit of a layer at once): the lower one
    floor_s = min(product_floor(loaded, sample, max_tokens) for max_tokens in (2048, 1 << 40))
    return {"sweep": f"head ablation ({units} edits, {text_seqs}x{seq_len} tokens)", "full_s": naive_s,
            "fast_s": fast_s, "full_cpu_s": naive_cpu, "fast_cpu_s": fast_cpu, "bound": bound,
            "max_rel_diff": rel_diff(fast.ravel(), naive.ravel()), "floor_s": floor_s}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval", default="ppl=1024,facts=24", help="fixed-input tasks of the drop sweep (the layer "
                    "study's quick counts without its generated arithmetic)")
    ap.add_argument("--layers", default="all", help="layers to drop one at a time: all (1..L-1) or a count")
    ap.add_argument("--text-seqs", type=int, default=4, help="head ablation sample (the head study's quick: 4 x 48)")
    ap.add_argument("--seq-len", type=int, default=48)
    ap.add_argument("--skip", default="", help="comma list of sweeps to leave out: drop, heads")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    from interp.model.loading import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    L = loaded.n_layers
    layers = list(range(1, L)) if args.layers == "all" else list(range(1, min(L, 1 + int(args.layers))))
    rows = []
    skip = set(args.skip.split(","))
    with torch.no_grad():
        if "drop" not in skip:
            rows.append(drop_sweep(loaded, args.eval, layers))
        if "heads" not in skip:
            rows.append(head_sweep(loaded, args.text_seqs, args.seq_len))
    out = pd.DataFrame(rows)
    out["speedup"] = out["full_s"] / out["fast_s"]
    out["share_of_bound"] = out["speedup"] / out["bound"]
    out["cpu_speedup"] = out["full_cpu_s"] / out["fast_cpu_s"]  # the guide on a busy machine
    if "floor_s" in out:  # the most an exact method could reach: its products and loss alone
        out["floor_speedup"] = out["full_s"] / out["floor_s"]
    print(f"model {loaded.name}, {args.threads} threads")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(out.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
