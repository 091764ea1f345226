"""Scaling: cache and analyse 1x, 10x and 100x the tokens of the quick layer study, and show
time growing linearly and peak memory staying flat.

1x is what the quick layer study caches: 64 book passages (``--base-prompts``), resid_pre at
every layer plus the last resid_post, last-token and mean vectors, 256 tokens at most. Scale
k caches k times as many prompts (book passages, cycled with a numbered suffix once they run
out). Each phase runs in its own process so its peak RSS is its own:

- cache: ``interp.capture.capture.capture`` into a fresh store (the writer flushes every
  ``--flush-mb``, which bounds its buffers);
- stream: mean cosine and angular distance between every pair of residual states, streamed
  part by part from the store (``store.scan.iter_parts``; memory bounded by one commit);
- study: the layer study's own analysis (``analyses.layer_similarity.run``: cosine, angular
  distance, Block Influence), for comparison (``--no-in-memory`` skips it). Until 2026-11-23 it
  held every vector at once; it now streams the store part by part too;
- probes, directions: the safety study's per-layer probes (``analyses.probes.run``) and concept
  directions (``analyses.directions.run``) over three layers, on the prompts labelled by a hash of
  their id (``--no-safety`` skips them). Both read one layer at a time: their memory is meant to
  grow with the prompts of one layer (the probe's n x n Gram matrix), not with the layers.

Ratios are against 1x: ``time/token`` near 1.0 means linear time, ``RSS`` near 1.0 flat memory.

    python bench/scaling.py [--scales 1,10,100] [--base-prompts 64] [--flush-mb 16] [--batch-size 16] [--no-safety]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOOKS = "resid_pre,resid_post:{last}"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_prompts(path: Path, n: int) -> None:
    from interp.data.prompts import load_prompts

    pool = load_prompts("book", None, 0)
    with open(path, "w") as f:
        for i in range(n):
            p = pool[i % len(pool)]
            k = i // len(pool)
            text = p.text if k == 0 else f"{p.text} ({k})"
            f.write(json.dumps({"id": f"{p.id}~{k}" if k else p.id, "text": text, "label": "book"}) + "\n")


def phase_cache(args) -> dict:
    import torch

    from interp.capture.capture import CaptureCfg, capture
    from interp.model.loading import load_model
    from store import Store

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    t_load = time.perf_counter() - t0
    rss_model = peak_rss_mb()
    cfg = CaptureCfg(prompts=args.prompt_file, hooks=HOOKS.format(last=loaded.n_layers - 1), positions="last,mean",
                     backend="torch", max_tokens=256, batch_size=args.batch_size, flush_mb=args.flush_mb)
    store = Store(args.store)
    t0 = time.perf_counter()
    run = capture(loaded, store, cfg, progress=False)
    t_cache = time.perf_counter() - t0
    with store.connect(read_only=True) as con:
        tokens, prompts = con.execute("SELECT sum(n_tokens), count(*) FROM run_prompts WHERE run_id = ?",
                                      [run]).fetchone()
        mb = con.execute("SELECT sum(n_bytes) FROM shards WHERE run_id = ?", [run]).fetchone()[0] / 1e6
    return {"run": run, "prompts": prompts, "tokens": int(tokens), "store_mb": mb, "load_s": t_load,
            "cache_s": t_cache, "rss_model_mb": rss_model, "rss_cache_mb": peak_rss_mb()}


def stream_similarity(store, run: int, n_layers: int, position: str = "last"):
    """Mean cosine and angular distance between residual states, one commit at a time: (S, S) each."""
    import numpy as np

    from store.scan import iter_parts

    sites = [("resid_pre", l) for l in range(n_layers)] + [("resid_post", n_layers - 1)]
    cos_sum = ang_sum = None
    n = 0
    with store.connect(read_only=True) as con:
        for _, X in iter_parts(con, store, run, sites, position):  # X (S, p, d)
            X = X.astype(np.float64)
            U = X / np.linalg.norm(X, axis=-1, keepdims=True)
            C = np.clip(np.einsum("apd,bpd->abp", U, U, optimize=True), -1.0, 1.0)
            cos_sum = C.sum(-1) if cos_sum is None else cos_sum + C.sum(-1)
            A = (np.arccos(C) / np.pi).sum(-1)
            ang_sum = A if ang_sum is None else ang_sum + A
            n += X.shape[1]
    return cos_sum / n, ang_sum / n, n


def phase_stream(args) -> dict:
    from store import Store

    t0 = time.perf_counter()
    cos, ang, n = stream_similarity(Store(args.store), args.run, args.n_layers, "last")
    stream_similarity(Store(args.store), args.run, args.n_layers, "mean")  # both positions, like the study
    return {"stream_s": time.perf_counter() - t0, "rss_stream_mb": peak_rss_mb(), "stream_prompts": n,
            "cos": cos.tolist(), "ang": ang.tolist()}


def phase_memory(args) -> dict:
    import numpy as np

    from analyses import layer_similarity
    from store import Store

    store = Store(args.store)
    t0 = time.perf_counter()
    with store.connect(read_only=True) as con:
        out = layer_similarity.run(con, store, args.run)
    t = time.perf_counter() - t0
    sim = next(v for v in out.values() if "cosine" in getattr(v, "columns", []))
    sim = sim[sim["position"] == "last"]
    S = int(sim["layer_a"].max()) + 1
    cos = np.zeros((S, S))
    cos[sim["layer_a"], sim["layer_b"]] = sim["cosine"]
    return {"memory_s": t, "rss_memory_mb": peak_rss_mb(), "cos_mem": cos.tolist()}


SAFETY_LAYERS = 3
"""Layers the probe and direction phases read (first, middle, last resid_pre): each reads one layer
at a time, so its memory depends on the prompts per layer, not on how many layers it reads."""


def _labelled(store, run: int):
    """The run's prompts labelled harmful/neutral by a fixed hash of their id: book passages carry no
    such classes, so the scores mean nothing; only time and memory are measured."""
    import zlib

    import pandas as pd

    from analyses.safety_data import dataset_frame

    with store.connect(read_only=True) as con:
        ids = [r[0] for r in con.execute("SELECT prompt_id FROM run_prompts WHERE run_id = ? ORDER BY prompt_id",
                                         [run]).fetchall()]
    cls = ["harmful" if zlib.crc32(i.encode()) % 2 else "neutral" for i in ids]
    frame = pd.DataFrame({"prompt_id": ids, "dataset": cls, "source": "book", "label": cls, "grp": None,
                          "group_kept": None})
    return dataset_frame(frame, 0.2, 0, ())


def phase_safety(args) -> dict:
    """Per-layer probes (ridge CV with a permutation null, logistic CV, held-out) and concept
    directions (difference of means, logistic direction) over SAFETY_LAYERS layers."""
    from analyses import directions, probes
    from store import Store

    store = Store(args.store)
    data = _labelled(store, args.run)
    cfg = probes.ProbeCfg(problems=("harmful_vs_neutral",), permutations=50)
    layers = sorted({0, args.n_layers // 2, args.n_layers - 1})[:SAFETY_LAYERS]
    out = {}
    t0 = time.perf_counter()
    with store.connect(read_only=True) as con:
        if args.phase == "probes":
            df = probes.run(con, store, args.run, data, cfg, ["resid_pre"], ["last"], layers, progress=False)
        else:
            df, _ = directions.run(con, store, args.run, data, cfg, ["resid_pre"], ["last"], layers,
                                   concepts=("harmful",), progress=False)
    out[f"{args.phase}_s"] = time.perf_counter() - t0
    out[f"rss_{args.phase}_mb"] = peak_rss_mb()
    out[f"{args.phase}_rows"] = len(df)
    return out


def worker(args) -> None:
    fn = {"cache": phase_cache, "stream": phase_stream, "memory": phase_memory, "probes": phase_safety,
          "directions": phase_safety}[args.phase]
    print("RESULT " + json.dumps(fn(args)), flush=True)


def run_phase(phase: str, script: str = __file__, **kw) -> dict:
    """Run ``script --phase PHASE --key=value ...`` in a fresh process (its peak RSS its own) and
    return the JSON it prints after ``RESULT ``."""
    cmd = [sys.executable, script, "--phase", phase] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{out.stderr[-3000:]}")
    return json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,10,100")
    ap.add_argument("--base-prompts", type=int, default=64, help="prompts at 1x (the quick layer study: 64)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--flush-mb", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--no-in-memory", action="store_true", help="skip the layer study's own analysis (layer_similarity.run)")
    ap.add_argument("--no-safety", action="store_true", help="skip the probe and direction phases")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--prompt-file", help=argparse.SUPPRESS)
    ap.add_argument("--run", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n-layers", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        return worker(args)

    import numpy as np
    import pandas as pd

    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        for scale in [int(s) for s in args.scales.split(",")]:
            n = args.base_prompts * scale
            prompt_file = Path(tmp) / f"p{scale}.jsonl"
            write_prompts(prompt_file, n)
            store = Path(tmp) / f"s{scale}.duckdb"
            c = run_phase("cache", model=args.model, store=store, prompt_file=prompt_file,
                          flush_mb=args.flush_mb, batch_size=args.batch_size)
            from store import Store

            with Store(store).connect(read_only=True) as con:
                n_layers = con.execute("SELECT n_layers FROM runs WHERE run_id = ?", [c["run"]]).fetchone()[0]
            s = run_phase("stream", store=store, run=c["run"], n_layers=n_layers)
            row = {"scale": scale, **c, **s}
            if not args.no_in_memory:
                m = run_phase("memory", store=store, run=c["run"])
                row.update(m)
                row["stream_vs_memory_max_diff"] = float(np.abs(np.array(s["cos"]) - np.array(m["cos_mem"])).max())
            if not args.no_safety:
                for phase in ("probes", "directions"):
                    row.update(run_phase(phase, store=store, run=c["run"], n_layers=n_layers))
            rows.append(row)
            print(f"{scale}x done: {c['tokens']} tokens, cache {c['cache_s']:.0f}s, load avg "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
            for f in Path(tmp).glob(f"s{scale}.*"):  # free the disk before the next scale
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    base = rows[0]
    table = []
    for r in rows:
        t = {"scale": f"{r['scale']}x", "prompts": r["prompts"], "tokens": r["tokens"], "store MB": r["store_mb"],
             "cache s": r["cache_s"], "tok/s": r["tokens"] / r["cache_s"],
             "cache s/token ratio": (r["cache_s"] / r["tokens"]) / (base["cache_s"] / base["tokens"]),
             "cache RSS MB": r["rss_cache_mb"], "cache RSS ratio": r["rss_cache_mb"] / base["rss_cache_mb"],
             "stream s": r["stream_s"],
             "stream s/token ratio": (r["stream_s"] / r["tokens"]) / (base["stream_s"] / base["tokens"]),
             "stream RSS MB": r["rss_stream_mb"], "stream RSS ratio": r["rss_stream_mb"] / base["rss_stream_mb"]}
        if "memory_s" in r:
            t.update({"study analysis s": r["memory_s"], "study analysis RSS MB": r["rss_memory_mb"],
                      "study analysis RSS ratio": r["rss_memory_mb"] / base["rss_memory_mb"],
                      "max |cos stream - study|": r["stream_vs_memory_max_diff"]})
        for phase in ("probes", "directions"):
            if f"{phase}_s" in r:
                t.update({f"{phase} s": r[f"{phase}_s"], f"{phase} RSS MB": r[f"rss_{phase}_mb"],
                          f"{phase} RSS ratio": r[f"rss_{phase}_mb"] / base[f"rss_{phase}_mb"]})
        table.append(t)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    print(pd.DataFrame(table).round(3).T.to_string(header=False))
    print(f"model load + RSS with the model alone: {base['load_s']:.1f}s, {base['rss_model_mb']:.0f} MB; "
          f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
