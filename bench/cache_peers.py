"""Caching activations with the suite next to what users write by hand, in one run.

Every path runs the same prompts in the same batches (longest first, batch ``--batch``,
right padding) and tokenises inside its timed section; every saving path keeps the same
vectors: each layer's ``resid_post`` at every real token (float32).

- bare forward: tokenise, ``model(**enc)`` (logits for every position), nothing kept;
- bare forward, blocks only: the same without the unembedding (what a capture that stops
  after the last block it needs does at least);
- HF: ``output_hidden_states=True``, real tokens of ``hidden_states[1:]``, ``torch.save`` per batch;
- TL: TransformerLens bridge ``run_with_cache(names_filter=...)``, ``torch.save`` per batch;
- nnsight: ``lm.trace(enc)`` with ``layers[i].output.save()``, ``torch.save`` per batch;
- interp: ``capture`` into a fresh store, each backend, with ``sync=commit`` (the default:
  every shard fsynced before its commit), ``sync=end`` (one fsync pass when the run ends) and
  ``sync=off`` (the page cache only, like ``torch.save``).

``torch.save`` leaves its files in the page cache (no fsync), as users' scripts do: compare it
with the suite's ``sync=off`` row for equal durability, with ``sync=commit`` for the cost of it.
Every row is the best of ``--repeat`` runs after one untimed warm-up of that path (imports;
the TransformerLens bridge and the nnsight wrapper are built once, outside the timing, as a
user's notebook builds them once). Files are written under a fresh temporary directory per
run and deleted afterwards (untimed).

    python bench/cache_peers.py [--prompts 96] [--batch 8] [--repeat 1] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from interp.capture.backends import own_forwards, transformer_bridge
from interp.capture.batching import context_length, encode, format_prompt
from interp.capture.capture import CaptureCfg, capture
from interp.data.prompts import load_prompts
from interp.model.loading import load_model
from store import Store


def timed(repeat: int, fn) -> float:
    """Best wall time of ``fn(dir)`` over ``repeat`` runs after one warm-up, each in a fresh
    temporary directory deleted afterwards (not timed)."""
    times = []
    for i in range(repeat + 1):
        tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
        try:
            t0 = time.perf_counter()
            fn(tmp)
            if i:  # the first run is the warm-up
                times.append(time.perf_counter() - t0)
        finally:
            shutil.rmtree(tmp)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=96, help="prompts (half harmful, half toxic)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per path (best kept)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--backends", default="torch,nnsight,tl", help="the suite's backends to time")
    ap.add_argument("--syncs", default="commit,end,off", help="the suite's sync modes to time")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    layers = range(loaded.n_layers)
    cfg = CaptureCfg(prompts="harmful,toxic", limit=args.prompts // 2, hooks="resid_post", positions="all",
                     batch_size=args.batch)
    prompts = load_prompts(cfg.prompts, cfg.limit, cfg.seed)
    # The batches: the suite's own order (longest first), so every path pads alike. Computed
    # once here, untimed; each path then formats and tokenises its texts inside its timing.
    lengths = [len(e.ids) for e in encode(tok, [p.text for p in prompts], loaded.is_chat, context_length(model))]
    texts = [p.text for _, p in sorted(zip(lengths, prompts), key=lambda lp: -lp[0])]
    groups = [texts[i:i + args.batch] for i in range(0, len(texts), args.batch)]
    n_tokens = sum(lengths)
    pad_side = tok.padding_side
    tok.padding_side = "right"

    def batches():
        """Each batch as the peers tokenise it: the chat-formatted texts, padded to the longest."""
        for group in groups:
            formatted = [format_prompt(tok, t, loaded.is_chat) for t in group]
            yield tok(formatted, padding=True, return_tensors="pt", add_special_tokens=not loaded.is_chat)

    def keep(stack: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(layer, batch, pos, d) -> (layer, real tokens, d), the vectors the suite stores."""
        return stack[:, mask.bool()].contiguous()

    def bare(_tmp: Path) -> None:
        with torch.no_grad():
            for enc in batches():
                model(**enc, use_cache=False)

    def bare_blocks(_tmp: Path) -> None:
        with torch.no_grad():
            for enc in batches():
                model.get_decoder()(**enc, use_cache=False)

    def hf(tmp: Path) -> None:
        with torch.no_grad():
            for i, enc in enumerate(batches()):
                out = model(**enc, output_hidden_states=True, use_cache=False)
                # hidden_states[-1] is after the final norm in most families: still one vector per layer
                torch.save(keep(torch.stack(out.hidden_states[1:]), enc["attention_mask"]), tmp / f"b{i}.pt")

    rows: list[dict] = []

    def row(what: str, seconds: float) -> None:
        rows.append({"path": what, "s": seconds, "tokens/s": n_tokens / seconds})
        print(f"  {what}: {seconds:.2f} s", flush=True)

    print(f"{args.model}: {len(texts)} prompts, {n_tokens} tokens, batches of {args.batch}, "
          f"{n_tokens * loaded.n_layers * loaded.d_model * 4 / 1e6:.0f} MB of resid_post vectors", flush=True)
    row("bare forward", timed(args.repeat, bare))
    row("bare forward, blocks only (no unembedding)", timed(args.repeat, bare_blocks))
    row("HF output_hidden_states + torch.save", timed(args.repeat, hf))

    with own_forwards(model), transformer_bridge(loaded) as bridge:
        names = [f"blocks.{l}.hook_resid_post" for l in layers]

        def tl(tmp: Path) -> None:
            with torch.no_grad():
                for i, enc in enumerate(batches()):
                    _, cache = bridge.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"],
                                                     names_filter=lambda n: n in names)
                    torch.save(keep(torch.stack([cache[n] for n in names]), enc["attention_mask"]), tmp / f"b{i}.pt")

        row("TransformerLens run_with_cache(names_filter) + torch.save", timed(args.repeat, tl))

    with own_forwards(model):
        from nnsight import TransformersModel

        lm = TransformersModel(model, tokenizer=tok, task="text-generation")

        def nns(tmp: Path, lm: TransformersModel = lm) -> None:
            with torch.no_grad():
                for i, enc in enumerate(batches()):
                    saved = []
                    with lm.trace(dict(enc), use_cache=False):
                        for l in layers:
                            out = lm.model.layers[l].output
                            saved.append((out[0] if isinstance(out, tuple) else out).save())
                    torch.save(keep(torch.stack(list(saved)), enc["attention_mask"]), tmp / f"b{i}.pt")

        row("nnsight trace .save() + torch.save", timed(args.repeat, nns))
        del nns, lm  # the wrapper holds the model's envoys: free it before the suite's backends run
    tok.padding_side = pad_side

    for backend in args.backends.split(","):
        for sync in args.syncs.split(","):
            run_cfg = CaptureCfg(**{**cfg.__dict__, "backend": backend, "sync": sync})

            def suite(tmp: Path, run_cfg=run_cfg) -> None:
                capture(loaded, Store(tmp / "s.duckdb"), run_cfg, progress=False)

            row(f"interp capture, {backend}, sync={sync}", timed(args.repeat, suite))

    base = rows[0]["s"]
    blocks = rows[1]["s"]
    table = pd.DataFrame(rows)
    table["of bare forward"] = base / table["s"]
    table["of blocks only"] = blocks / table["s"]
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
