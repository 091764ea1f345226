"""Cache throughput on the embedded model, measured side by side in one run.

1. tokens/s of a bare forward pass vs tokens/s of caching every layer's resid_post at every
   position into the store (same prompts, same batches), per backend, and their ratio
   (target: caching >= 0.85x bare forward);
2. store write and read MB/s for a large block of vectors next to np.save / np.load of the
   same array (target: >= 0.25x NumPy, stretch 0.5x). Durable variants (fsync) are shown
   too, since the store fsyncs every commit.

    python bench/cache_throughput.py [--prompts 96] [--repeat 3] [--vectors 4096]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interp.capture.batching import context_length, encode, pad
from interp.capture.capture import CaptureCfg, capture
from interp.data.prompts import load_prompts
from interp.model.loading import load_model
from store import Store
from store.activations import ActivationWriter, Block, layer_stack
from store.runs import start_run


def best_of(repeat: int, fn, setup=None, teardown=None) -> float:
    """Best wall time of ``fn(setup())`` over ``repeat`` runs; setup and teardown are not timed."""
    times = []
    for _ in range(repeat):
        arg = setup() if setup else None
        t0 = time.perf_counter()
        fn(arg) if setup else fn()
        times.append(time.perf_counter() - t0)
        if teardown:
            teardown(arg)
    return min(times)


def forward_vs_cache(loaded, n_prompts: int, repeat: int, batch_size: int = 8) -> list[dict]:
    cfg = CaptureCfg(prompts="harmful,toxic", limit=n_prompts // 2, hooks="resid_post", positions="all",
                     batch_size=batch_size)
    prompts = load_prompts(cfg.prompts, cfg.limit)
    enc = encode(loaded.tokenizer, [p.text for p in prompts], loaded.is_chat, context_length(loaded.model))
    seqs = sorted((e.ids for e in enc), key=len, reverse=True)
    batches = [pad(seqs[i:i + batch_size], loaded.tokenizer.pad_token_id) for i in range(0, len(seqs), batch_size)]
    n_tokens = sum(len(s) for s in seqs)

    def bare():
        with torch.no_grad():
            for b in batches:
                loaded.model(**b.model_kwargs(), use_cache=False)

    bare()  # warm-up
    t_bare = best_of(repeat, bare)
    rows = [{"what": "bare forward", "seconds": t_bare, "tokens/s": n_tokens / t_bare, "ratio": 1.0}]
    for backend in ("tl", "torch", "nnsight"):
        # Timed: everything a cache run does (tokenise, create the store file and its schema,
        # forward with hooks, write and fsync the shards, commit). Not timed: deleting it after,
        # and one warm-up run per backend, as for the bare forward (it imports the backend and,
        # for tl, boots the TransformerBridge, which is then kept with the model).
        def cached(tmp):
            capture(loaded, Store(Path(tmp) / "b.duckdb"), CaptureCfg(**{**cfg.__dict__, "backend": backend}),
                    progress=False)
        best_of(1, cached, setup=lambda: tempfile.mkdtemp(prefix="bench-cache-"), teardown=shutil.rmtree)
        t = best_of(repeat, cached, setup=lambda: tempfile.mkdtemp(prefix="bench-cache-"), teardown=shutil.rmtree)
        rows.append({"what": f"cache resid_post x{loaded.n_layers} layers, all positions ({backend})",
                     "seconds": t, "tokens/s": n_tokens / t, "ratio": t_bare / t})
    mb = n_tokens * loaded.n_layers * loaded.d_model * 4 / 1e6
    print(f"{len(seqs)} prompts, {n_tokens} tokens, {mb:.0f} MB of vectors per cache run")
    return rows


def _save(path: Path, X: np.ndarray, durable: bool) -> None:
    """np.save to a new file, as the store writes new files (the caller deletes it after,
    untimed: overwriting one file would reuse its page-cache pages, which a store never does)."""
    with open(path, "wb") as f:
        np.save(f, X)
        if durable:
            f.flush()
            os.fsync(f.fileno())


def store_vs_numpy(n_vectors: int, n_layers: int, d: int, repeat: int) -> list[dict]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_layers, n_vectors, d), dtype=np.float32)
    mb = X.nbytes / 1e6
    ids = [f"p{i:06d}" for i in range(n_vectors)]
    pos = np.zeros(n_vectors, np.int32)
    tokens = pd.DataFrame({"prompt_id": ids, "pos": 0, "token_id": 0, "token": "t"})
    model = {"model": "bench", "revision": "r", "dtype": "float32", "device": "cpu", "n_layers": n_layers,
             "d_model": d}
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    rows = []
    counter = iter(range(10_000))  # a fresh store per write
    try:
        for durable in (False, True):
            t_np = best_of(repeat, lambda target: _save(target, X, durable),
                           setup=lambda: tmp / f"x{next(counter)}.npy", teardown=os.remove)

            def new_store():  # not timed: creating the database and its schema is once per store
                s = Store(tmp / f"s{next(counter)}.duckdb")
                with s.connect() as con:
                    run = start_run(con, kind="cache", model=model, backend=None, config="{}", config_hash="b",
                                    code_version="bench").run_id
                return s, run

            def write(target):  # timed: the writer, from opening to its commit of prompts, tokens and shards
                s, run = target
                with ActivationWriter(s, run, durable=durable) as w:
                    w.add([(p, 1, 0) for p in ids], tokens,
                          [Block("resid_post", l, "last", ids, X[l], pos) for l in range(n_layers)])

            t_store = best_of(repeat, write, setup=new_store, teardown=lambda target: shutil.rmtree(target[0].shard_dir))
            tag = "durable (fsync)" if durable else "page cache"
            rows.append({"what": f"np.save, {tag}", "MB/s": mb / t_np, "ratio": 1.0})
            rows.append({"what": f"store write, {tag}", "MB/s": mb / t_store, "ratio": t_np / t_store})
        target = new_store()  # the block to read back, written once (page cache) and kept
        write(target)
        last, run_id = target
        _save(tmp / "x.npy", X, False)
        t_load = best_of(repeat, lambda: np.load(tmp / "x.npy"))

        def read():
            with last.connect(read_only=True) as con:
                _, _, Y = layer_stack(con, last, run_id, "resid_post", "last")
            assert Y.shape == X.shape

        t_read = best_of(repeat, read)
        rows.append({"what": "np.load", "MB/s": mb / t_load, "ratio": 1.0})
        rows.append({"what": "store read (layer_stack -> NumPy)", "MB/s": mb / t_read, "ratio": t_load / t_read})
        print(f"block: {n_layers} layers x {n_vectors} vectors x {d} floats = {mb:.0f} MB")
    finally:
        shutil.rmtree(tmp)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vectors", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    loaded = load_model("smollm2-135m-instruct")
    pd.set_option("display.width", 200)
    print(pd.DataFrame(forward_vs_cache(loaded, args.prompts, args.repeat)).round(3).to_string(index=False))
    print(pd.DataFrame(store_vs_numpy(args.vectors, loaded.n_layers, loaded.d_model, args.repeat))
          .round(3).to_string(index=False))


if __name__ == "__main__":
    main()
