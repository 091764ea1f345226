"""Capture throughput: one process against ``invoke cache --workers N`` (a local Ray Data pool).

Both sides cache the same prompts (book passages, the layer study's capture: resid_pre at every
layer plus the last resid_post, last-token and mean vectors, at most 256 tokens) into fresh stores,
each in its own process, at two sizes (``--prompts`` and 4x that). Wall time includes everything a
user waits for: model load, for Ray its start-up and every actor's model load. The fixed cost and the
steady throughput are separated by the two sizes: steady tokens/s = (tokens_4x - tokens_1x) /
(time_4x - time_1x), start-up = time_1x - tokens_1x / steady.

One process uses every core for torch; each Ray actor one thread (``RayCfg.threads``), so on 2
cores 2 workers compete with Ray Data's own tasks and the driver's commits: the speed-up here is
expected to be small. The value of the pool is the cluster path (one GPU per actor).

    python bench/cache_workers.py [--prompts 64] [--workers 2] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import (  # (the same prompts and sites as bench/scaling.py)
    HOOKS,
    run_phase,
    write_prompts,
)


def phase(args) -> dict:
    import torch

    from interp.capture.capture import CaptureCfg, capture
    from interp.capture.ray_capture import capture_ray
    from interp.capture.ray_session import RayCfg
    from interp.model.loading import ModelCfg, load_model
    from store import Store

    t0 = time.perf_counter()
    model_cfg = ModelCfg(args.model)
    n_layers = json.loads(args.n_layers)
    cfg = CaptureCfg(prompts=args.prompt_file, hooks=HOOKS.format(last=n_layers - 1), positions="last,mean",
                     backend="torch", max_tokens=256, batch_size=args.batch_size, flush_mb=args.flush_mb)
    store = Store(args.store)
    if args.workers == 0:
        torch.set_num_threads(os.cpu_count() or 1)
        run = capture(load_model(model_cfg), store, cfg, progress=False)
    else:
        run = capture_ray(model_cfg, store, cfg, RayCfg(workers=args.workers), progress=False)
    wall = time.perf_counter() - t0
    with store.connect(read_only=True) as con:
        tokens, config_hash = con.execute("SELECT (SELECT sum(n_tokens) FROM run_prompts WHERE run_id = ?), "
                                          "(SELECT config_hash FROM runs WHERE run_id = ?)", [run, run]).fetchone()
    return {"wall_s": wall, "tokens": int(tokens), "config_hash": config_hash}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64, help="prompts at the small size (the large one is 4x)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--flush-mb", type=int, default=16)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--prompt-file", help=argparse.SUPPRESS)
    ap.add_argument("--n-layers", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print("RESULT " + json.dumps(phase(args)), flush=True)
        return

    from interp.model.loading import load_model

    n_layers = load_model(args.model).n_layers
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    results: dict[tuple[int, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        for n in (args.prompts, 4 * args.prompts):
            prompt_file = Path(tmp) / f"p{n}.jsonl"
            write_prompts(prompt_file, n)
            for workers in (0, args.workers):
                store = Path(tmp) / f"s{n}-{workers}.duckdb"
                results[(n, workers)] = run_phase("capture", __file__, model=args.model, store=store, prompt_file=prompt_file,
                                                  n_layers=n_layers, workers=workers, batch_size=args.batch_size,
                                                  flush_mb=args.flush_mb)
                side = f"{workers} Ray workers" if workers else "1 process"
                print(f"{n} prompts, {side}: {results[(n, workers)]['wall_s']:.1f}s", flush=True)
    small, large = args.prompts, 4 * args.prompts
    print(f"\n| side | wall s ({small} / {large} prompts) | steady tokens/s | start-up s | same run identity |")
    print("|---|---|---|---|---|")
    steady = {}
    for workers in (0, args.workers):
        a, b = results[(small, workers)], results[(large, workers)]
        steady[workers] = (b["tokens"] - a["tokens"]) / (b["wall_s"] - a["wall_s"])
        start = a["wall_s"] - a["tokens"] / steady[workers]
        same = a["config_hash"] == results[(small, 0)]["config_hash"]
        name = "1 process" if workers == 0 else f"{workers} Ray workers"
        print(f"| {name} | {a['wall_s']:.1f} / {b['wall_s']:.1f} | {steady[workers]:.0f} | {start:.1f} | {same} |")
    print(f"\nsteady throughput, {args.workers} workers / 1 process: {steady[args.workers] / steady[0]:.2f}x; "
          f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
