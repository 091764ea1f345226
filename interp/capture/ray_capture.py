"""Capture on a Ray Data pipeline (``invoke cache --workers N``): the forward passes move to N
actors, the store's guarantees stay with the driver.

The driver (this process) does what a single-process run does (``capture.capture``): prompts,
run identity, the store's write lock and the run's claim, ``recover()``, tokenising, the final
completeness check. Only the loop is replaced. The prompts, longest first, are cut into chunks of
whole batches and become a Ray dataset; ``map_batches`` runs them through a pool of N actors, each
of which loads the model once, runs the ordinary capture backend over a chunk and writes one shard
per (hook, layer) straight to the shard location (``store.activations.write_part``: step 1 of the
commit protocol). Each chunk sends back only its manifest rows. The driver, the only process that
opens the DuckDB file, commits groups of finished chunks, one transaction per group
(``commit_parts``: steps 2 and 3), as the single-process writer does.

Why the single-process guarantees hold:
- the driver numbers the parts (chunk i writes part ``base + i``), so no two chunks share a file,
  and a retried chunk rewrites its own ``.tmp``;
- a killed actor is restarted and its chunk retried (``RayCfg.max_restarts``; finite, so an actor
  that always dies fails the run instead of hanging the pool);
- a killed driver leaves ``.tmp`` files no manifest lists: the next run's ``recover()`` deletes
  them and the prompts resume after the last committed group. A local Ray's processes die with
  their driver; on a cluster Ray ends a dead driver's actors (its job).

Every worker must reach the store's shard location: local disk when Ray runs on this machine, S3
(``INTERP_SHARDS=s3://...``) or a shared file system on a cluster.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import replace
from functools import partial
from types import ModuleType

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from interp.capture.backends import open_backend
from interp.capture.batching import encode, pad
from interp.capture.capture import CaptureCfg, _blocks, _Collector, _token_frame, capture
from interp.capture.ray_session import RayCfg, placement, ray_session
from interp.data.prompts import Prompt
from interp.model.loading import Loaded, ModelCfg, load_model
from interp.model.sites import Site
from interp.provenance import code_version
from store import Store, StoreError
from store.activations import (
    Block,
    ShardRow,
    commit_parts,
    next_part,
    recover,
    shard_write_error,
    take_worker_part,
    worker_suffix,
    write_part,
)


def capture_ray(model_cfg: ModelCfg, store: Store, cfg: CaptureCfg, ray_cfg: RayCfg, progress: bool = True) -> int:
    """Capture ``cfg`` into ``store`` on a Ray pool; returns the run id. The same run (identity,
    prompts, vectors to 1e-5) as ``capture(load_model(model_cfg), store, cfg)``.

    The driver loads the model too, on CPU, for what the run records and the tokenizer; the
    actors load it on their own device (cuda when Ray gives them a GPU)."""
    if cfg.backend == "ndif":
        raise ValueError("--workers runs the model on Ray workers; --backend ndif runs it on NDIF: use one of them")
    if model_cfg.device_map is not None:
        raise ValueError("--workers loads one whole model copy per actor: drop --device-map (or use one process)")
    with ray_session(ray_cfg.address) as (ray, local):  # first: Ray's errors come before anything is stored
        cpus, gpus = placement(ray.cluster_resources(), ray_cfg, local)
        if model_cfg.device != "cpu" and not gpus:
            raise ValueError(f"--device {model_cfg.device} with --workers, but the Ray cluster has no GPUs: "
                             "omit --device (each actor uses the GPU Ray gives it, else the CPU)")
        loaded = load_model(replace(model_cfg, device="cpu"))
        return capture(loaded, store, cfg, progress, loop=partial(_pipeline, ray, model_cfg, ray_cfg, cpus, gpus))


def plan_chunks(n_tokens: list[int], batch_size: int, bytes_per_prompt: float, bytes_per_token: float,
                flush_bytes: int, workers: int) -> list[range]:
    """Cut prompts (in the given order) into chunks of whole batches: about ``flush_bytes`` of
    vectors each (one shard per site per chunk), and at least two chunks per worker so a slow one
    does not hold the others up."""
    n = len(n_tokens)
    if n == 0:
        return []
    per_prompt = bytes_per_prompt + bytes_per_token * sum(n_tokens) / n
    by_bytes = max(1, int(flush_bytes // max(per_prompt, 1.0)))
    size = max(batch_size, min(by_bytes, math.ceil(n / (2 * workers))))
    size = math.ceil(size / batch_size) * batch_size
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def capture_chunk(loaded: Loaded, cfg: CaptureCfg, sites: list[Site], store: Store, run_id: int, part: int,
                  prompt_ids: list[str], seqs: list[list[int]]) -> tuple[list[ShardRow], str]:
    """Run one chunk through the model in batches of ``cfg.batch_size`` and write its shards (one
    per hook and layer, all numbered ``part``, in files of this attempt's own suffix); returns
    their manifest rows and the suffix."""
    by_site: dict[tuple[str, int], list[Block]] = {}
    with open_backend(loaded, cfg.backend) as backend:
        for start in range(0, len(seqs), cfg.batch_size):
            batch_seqs, ids = seqs[start:start + cfg.batch_size], prompt_ids[start:start + cfg.batch_size]
            batch = pad(batch_seqs, loaded.tokenizer.pad_token_id, cfg.padding_side).to(loaded.device)
            col = _Collector(batch, cfg.position_list)
            backend.run(batch, sites, col)
            for b in _blocks(col, ids, [len(s) for s in batch_seqs]):
                by_site.setdefault((b.hook, b.layer), []).append(b)
    suffix = worker_suffix()
    try:
        # sync=off skips the fsync; commit and end both fsync here (a worker cannot defer it to
        # the driver's close, which does not hold the worker's files)
        durable = cfg.sync != "off"
        return [write_part(store, run_id, hook, layer, part, blocks, durable=durable, suffix=suffix)
                for (hook, layer), blocks in by_site.items()], suffix
    except OSError as e:
        raise shard_write_error(store, e) from None


class CaptureWorker:
    """A Ray actor of the pool: loads the model once, then captures the chunks it is given."""

    def __init__(self, model_cfg: ModelCfg, cfg: CaptureCfg, sites: list[Site], store: Store, run_id: int,
                 threads: int) -> None:
        import ray

        torch.set_num_threads(threads)
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.loaded = load_model(replace(model_cfg, device=device, device_map=None))
        self.cfg, self.sites, self.store, self.run_id = cfg, sites, store, run_id
        self.version = code_version()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"chunk": [], "shards": [], "suffix": [], "code_version": [], "revision": []}
        for chunk, part, payload in zip(batch["chunk"], batch["part"], batch["payload"]):
            job = json.loads(payload)
            shards, suffix = capture_chunk(self.loaded, self.cfg, self.sites, self.store, self.run_id,
                                           int(part), job["ids"], job["seqs"])
            out["chunk"].append(int(chunk))
            out["shards"].append(json.dumps(shards, default=int))
            out["suffix"].append(suffix)
            out["code_version"].append(self.version)
            out["revision"].append(str(self.loaded.revision))
        return {k: np.array(v) for k, v in out.items()}


class _Group:
    """Finished chunks waiting for the driver's next commit (one transaction per ``flush_bytes`` of
    shards, or per ``flush_seconds``)."""

    def __init__(self, store: Store, run_id: int, flush_bytes: int, flush_seconds: float = 30.0) -> None:
        self.store, self.run_id, self.flush_bytes, self.flush_seconds = store, run_id, flush_bytes, flush_seconds
        self._reset()

    def _reset(self) -> None:
        self.shards: list[tuple] = []  # manifest rows (ShardRow) as decoded from a worker's JSON
        self.suffixes: list[str] = []
        self.prompts: list[tuple[str, int, int]] = []
        self.tokens: list[pd.DataFrame] = []
        self.bytes = 0
        self.since = time.monotonic()

    def add(self, shards: list[list], suffix: str, prompts: list[tuple[str, int, int]], tokens: pd.DataFrame) -> None:
        self.shards += [tuple(s) for s in shards]
        self.suffixes += [suffix] * len(shards)
        self.prompts += prompts
        self.tokens.append(tokens)
        self.bytes += sum(int(s[5]) for s in shards)
        if self.bytes >= self.flush_bytes or time.monotonic() - self.since >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.prompts:
            for shard, suffix in zip(self.shards, self.suffixes):
                take_worker_part(self.store, shard[3], suffix)
            commit_parts(self.store, self.run_id, self.shards, self.prompts, self.tokens)
        self._reset()


def _worker_error(e: BaseException) -> BaseException:
    """The user-facing error inside Ray's wrappers (a worker's StoreError or ValueError as it was
    raised), else one line naming the worker failure."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, (StoreError, ValueError, FileNotFoundError)):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return RuntimeError(f"a capture worker failed: {first[:200]} (rerun the same command to resume)")


def _pipeline(ray: ModuleType, model_cfg: ModelCfg, rc: RayCfg, cpus: float, gpus: float, loaded: Loaded,
              store: Store, cfg: CaptureCfg, config: dict, sites: list[Site], run_id: int, todo: list[Prompt],
              total: int, progress: bool) -> None:
    """The loop of ``capture`` on Ray (same signature as ``capture._capture_prompts``)."""
    if not todo:
        return
    tok = loaded.tokenizer
    encoded = encode(tok, [p.text for p in todo], config["chat"], config["max_tokens"])
    order = sorted(range(len(todo)), key=lambda i: -len(encoded[i].ids))  # longest first, as in one process
    row_bytes = 4.0 * len(sites) * loaded.d_model
    fixed = sum(p != "all" for p in cfg.position_list)
    chunks = [[order[k] for k in r] for r in plan_chunks(
        [len(encoded[i].ids) for i in order], cfg.batch_size, row_bytes * fixed,
        row_bytes * ("all" in cfg.position_list), cfg.flush_mb << 20, rc.workers)]
    with store.connect() as con:
        base = next_part(con, run_id)
    items = [{"chunk": c, "part": base + c, "payload": json.dumps(
        {"ids": [todo[i].id for i in idx], "seqs": [encoded[i].ids for i in idx]})} for c, idx in enumerate(chunks)]
    version, group = code_version(), _Group(store, run_id, cfg.flush_mb << 20)
    bar = tqdm(total=total, initial=total - len(todo), unit="prompt",
               desc=f"cache run {run_id} ({rc.workers} workers)", disable=not progress)
    with warnings.catch_warnings():  # max_restarts has no named parameter in Ray 2.60, only **ray_remote_args
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            CaptureWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=rc.workers),
            num_cpus=cpus, num_gpus=gpus or None,
            fn_constructor_kwargs={"model_cfg": model_cfg, "cfg": cfg, "sites": sites, "store": store,
                                   "run_id": run_id, "threads": rc.threads},
            max_restarts=rc.max_restarts, max_task_retries=rc.max_restarts)
    received: set[int] = set()
    try:
        for row in ds.iter_rows():
            if int(row["chunk"]) in received:  # a retried chunk reported twice: its files are removed below
                continue
            received.add(int(row["chunk"]))
            if row["code_version"] != version or row["revision"] != str(loaded.revision):
                raise StoreError(f"a Ray worker runs interp {row['code_version']} on model revision "
                                 f"{row['revision']}, the driver {version} on {loaded.revision}: install the "
                                 "same interp and model on every node")
            idx = chunks[int(row["chunk"])]
            ids, seqs = [todo[i].id for i in idx], [encoded[i].ids for i in idx]
            group.add(json.loads(row["shards"]), str(row["suffix"]),
                      [(todo[i].id, len(encoded[i].ids), encoded[i].truncated) for i in idx],
                      _token_frame(tok, ids, seqs))
            bar.update(len(idx))
    except KeyboardInterrupt:
        group.flush()  # keep the chunks already finished, as the single-process writer does
        raise
    except Exception as e:  # Ray (Data) wraps a worker's exception in its own types
        if type(e).__module__.startswith("ray"):
            raise _worker_error(e) from None
        raise
    group.flush()
    bar.close()
    recover(store)  # files of chunks Ray ran twice (under the write lock this run holds)
