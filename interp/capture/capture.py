"""Capture: run prompts through a model, read sites, stream vectors into the store.

A run is identified by its model and config (batch size excluded: it never changes
results) and the content of its prompts, so running the same command again resumes an
interrupted run and skips a finished one, and an edited prompt file makes a new run.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from interp.capture.backends import BACKENDS, open_backend
from interp.capture.batching import Batch, context_length, encode, last_index, pad
from interp.data.prompts import Prompt, check_prompt_specs, load_prompts, prompts_digest
from interp.model.loading import Loaded
from interp.model.sites import Site, check_hook_names, parse_sites
from interp.provenance import canonical_json, code_version, config_hash
from store import Store, StoreError
from store.activations import SYNCS, ActivationWriter, Block, next_part, recover
from store.prompts import add_prompts, done_prompt_ids, stored_prompts_match
from store.runs import adopt_run, finish_run, release, start_run

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

POSITIONS = ("last", "mean", "all")


@dataclass(frozen=True)
class CaptureCfg:
    """What to capture. Every field except batch_size, flush_mb and sync is part of the run's identity."""

    prompts: str = "harmful,neutral"
    """Comma-separated prompt sets or files (see interp.data.prompts.load_prompts)."""
    hooks: str = "resid_post"
    """Comma-separated hooks: resid_pre, resid_post, attn_out, mlp_out, z; optionally name:layer[-layer]."""
    positions: str = "last"
    """Comma-separated reductions: last (last token), mean (over tokens), all (every token)."""
    backend: str = "nnsight"
    """nnsight (TransformersModel tracing), tl (TransformerLens TransformerBridge) or torch (plain
    hooks): the same vectors to 1e-5; tl is the slowest (BENCHMARKS.md, section 1)."""
    limit: int | None = None
    """At most this many prompts per prompt set (a fixed, seeded subset)."""
    seed: int = 0
    chat: bool | None = None
    """Wrap prompts in the chat template; None: when the tokenizer has one."""
    max_tokens: int | None = None
    """Truncate longer prompts (keeping the end); None: the model's context length."""
    padding_side: str = "right"
    batch_size: int = field(default=8, compare=False)
    flush_mb: int = field(default=128, compare=False)
    sync: str = field(default="commit", compare=False)
    """When shard files reach the disk: commit (the default: each is fsynced before its commit is
    recorded, so a power loss never leaves a committed shard torn), end (one fsync pass when the
    run finishes: a killed process still loses nothing, a power loss mid-run can tear committed
    shards, which `invoke check --deep` finds) or off (the page cache only, like torch.save)."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend '{self.backend}': use one of {', '.join(BACKENDS)}")
        bad = [p for p in self.position_list if p not in POSITIONS]
        if bad or not self.position_list:
            raise ValueError(f"unknown position '{','.join(bad) or self.positions}': use last, mean or all")
        check_hook_names(self.hooks)
        check_prompt_specs(self.prompts)
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1 (or omitted for every prompt)")
        if self.padding_side not in ("left", "right"):
            raise ValueError("padding side must be 'left' or 'right'")
        if self.sync not in SYNCS:
            raise ValueError(f"unknown sync '{self.sync}': use one of {', '.join(SYNCS)}")

    @property
    def position_list(self) -> list[str]:
        return [p.strip() for p in self.positions.split(",") if p.strip()]

    def identity(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("batch_size", "flush_mb", "sync")}


def _reduce(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(batch, pos, ...) -> (batch, ...) for last/mean; masked rows are never read."""
    if how == "last":
        return x[torch.arange(x.shape[0], device=x.device), last_index(mask)]
    m = mask.to(x.dtype).view(*mask.shape, *([1] * (x.dim() - 2)))
    return (x * m).sum(1) / m.sum(1)


class _Collector:
    """Sink for a backend: reduces each site's tensor at once and keeps CPU float32 copies."""

    def __init__(self, batch: Batch, positions: list[str]) -> None:
        self.batch, self.positions = batch, positions
        self.out: dict[tuple[Site, str], torch.Tensor] = {}

    def __call__(self, site: Site, x: torch.Tensor) -> None:
        mask = self.batch.attention_mask.to(x.device)
        for how in self.positions:
            y = x if how == "all" else _reduce(x, mask, how)
            self.out[(site, how)] = y.detach().to("cpu", torch.float32)


def _blocks(col: _Collector, ids: list[str], lengths: list[int]) -> list[Block]:
    blocks = []
    mask = col.batch.attention_mask.bool().cpu()
    real = mask.numpy()                                   # (batch, pos)
    # Arrow arrays of the prompt ids, built once per batch and shared by every layer's block
    ids_one = pa.array(ids, pa.string())
    if "all" in col.positions:
        row_of = np.nonzero(real)[0]                      # batch row of every real token, in order
        pos_all = (mask.cumsum(1) - 1).numpy()[real].astype(np.int32)
        ids_all = ids_one.take(pa.array(row_of))
        spans = _spans(real)
    for (site, how), t in col.out.items():
        arr = t.numpy()
        if how == "all":  # one row per real token, positions from 0 whatever the padding side
            # each prompt's real tokens as a view of the batch (no copy: the shard writer
            # writes the views; the masked copy cost as much CPU as writing the shard)
            segs, pids, pos_arr = [arr[i, a:b] for i, (a, b) in enumerate(spans)], ids_all, pos_all
        else:
            segs, pids = [arr], ids_one
            pos_arr = None if how == "mean" else np.array([n - 1 for n in lengths], np.int32)
        head = None
        if site.hook == "z":  # (rows, head, d_head) -> one row per head
            n_rows, n_heads = sum(len(s) for s in segs), arr.shape[-2]
            head = np.tile(np.arange(n_heads, dtype=np.int16), n_rows)
            pids = pids.take(pa.array(np.repeat(np.arange(n_rows), n_heads)))
            pos_arr = None if pos_arr is None else np.repeat(pos_arr, n_heads)
            segs = [s.reshape(len(s) * n_heads, -1) for s in segs]
        blocks.append(Block(site.hook, site.layer, how, pids, segs if len(segs) > 1 else segs[0], pos_arr, head))
    return blocks


def _spans(real: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each row's real tokens; ``pad`` puts them in one run on either side."""
    out = []
    for row in real:
        idx = np.flatnonzero(row)
        if len(idx) != idx[-1] - idx[0] + 1:
            raise ValueError("a batch row's real tokens are not one contiguous run: pad() makes them so")
        out.append((int(idx[0]), int(idx[-1]) + 1))
    return out


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _release_freed_memory() -> None:
    """Hand memory freed by the last batch back to the OS (glibc keeps it otherwise, and
    batches of changing shapes then fragment the heap: peak memory grew with run length)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _token_frame(tokenizer: PreTrainedTokenizerBase, ids: list[str], seqs: list[list[int]]) -> pd.DataFrame:
    flat = [t for seq in seqs for t in seq]
    return pd.DataFrame({
        "prompt_id": [pid for pid, seq in zip(ids, seqs) for _ in seq],
        "pos": [i for seq in seqs for i in range(len(seq))],
        "token_id": flat,
        "token": tokenizer.convert_ids_to_tokens(flat),  # one call per batch, not one per token
    })


def run_config(loaded: Loaded, cfg: CaptureCfg, sites: list[Site]) -> dict:
    chat = loaded.is_chat if cfg.chat is None else cfg.chat
    return {**cfg.identity(), "chat": chat, "sites": [s.tl_name for s in sites],
            "max_tokens": cfg.max_tokens or context_length(loaded.model)}


CaptureLoop = Callable[[Loaded, Store, CaptureCfg, dict, list[Site], int, list[Prompt], int, bool], None]
"""The loop ``capture`` runs over the prompts still to do: (loaded, store, cfg, run config, sites,
run id, prompts to do, total prompts, progress), as ``_capture_prompts``."""


def capture(loaded: Loaded, store: Store, cfg: CaptureCfg, progress: bool = True,
            loop: CaptureLoop | None = None) -> int:
    """Capture ``cfg`` into ``store``; returns the run id (resuming or skipping as needed).

    ``loop`` replaces the in-process capture loop (``_capture_prompts``, same signature): the Ray
    pipeline (interp/capture/ray_capture.py) runs the prompts on workers; everything else (prompts,
    identity, write lock, run claim, recovery, completion check) stays here, in this process."""
    sites = parse_sites(cfg.hooks, loaded.n_layers)
    prompts: list[Prompt] = load_prompts(cfg.prompts, cfg.limit, cfg.seed)
    legacy = run_config(loaded, cfg, sites)  # the identity before prompt contents joined it
    config = {**legacy, "prompts_sha256": prompts_digest(prompts)}
    with store.write_lock():
        recover(store)
        with store.connect() as con:
            add_prompts(con, prompts)  # first: a prompt stored with another text is refused before any run exists
            run = start_run(con, kind="cache", model=loaded.describe(), backend=cfg.backend,
                            config=canonical_json(config), config_hash=config_hash(config),
                            code_version=code_version(), legacy_hash=config_hash(legacy))
            if run.legacy:  # made before prompt contents joined the identity: adopt it if it holds these prompts
                if stored_prompts_match(con, run.run_id, prompts, whole=run.status == "complete"):
                    adopt_run(con, run.run_id, canonical_json(config), config_hash(config))
                else:
                    release(con, run.run_id)
                    run = start_run(con, kind="cache", model=loaded.describe(), backend=cfg.backend,
                                    config=canonical_json(config), config_hash=config_hash(config),
                                    code_version=code_version())
            if run.status == "complete":
                return run.run_id
            done = done_prompt_ids(con, run.run_id)
            part = next_part(con, run.run_id)
        todo = [p for p in prompts if p.id not in done]
        # the in-process loop is told the first part number read above (one DuckDB open less);
        # a replacement loop (Ray) keeps the documented signature
        (loop or partial(_capture_prompts, first_part=part))(loaded, store, cfg, config, sites, run.run_id, todo,
                                                             len(prompts), progress)
        with store.connect() as con:
            if len(done_prompt_ids(con, run.run_id)) != len({p.id for p in prompts}):
                raise StoreError(f"run {run.run_id} is missing prompts after capture: rerun to resume")
            finish_run(con, run.run_id)
    return run.run_id


def _capture_prompts(loaded: Loaded, store: Store, cfg: CaptureCfg, config: dict, sites: list[Site],
                     run_id: int, todo: list[Prompt], total: int, progress: bool,
                     first_part: int | None = None) -> None:
    tok = loaded.tokenizer
    encoded = encode(tok, [p.text for p in todo], config["chat"], config["max_tokens"])
    # Longest first keeps padding low; batching never changes the stored numbers.
    order = sorted(range(len(todo)), key=lambda i: -len(encoded[i].ids))
    bar = tqdm(total=total, initial=total - len(todo), unit="prompt", desc=f"cache run {run_id}",
               disable=not progress)
    writer = ActivationWriter(store, run_id, flush_bytes=cfg.flush_mb << 20, sync=cfg.sync,
                            first_part=first_part)
    with writer, open_backend(loaded, cfg.backend) as backend:
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            seqs = [encoded[i].ids for i in idx]
            ids = [todo[i].id for i in idx]
            batch = pad(seqs, tok.pad_token_id, cfg.padding_side).to(loaded.device)
            col = _Collector(batch, cfg.position_list)
            backend.run(batch, sites, col)
            lengths = [len(s) for s in seqs]
            writer.add([(pid, n, encoded[i].truncated) for pid, n, i in zip(ids, lengths, idx)],
                       _token_frame(tok, ids, seqs), _blocks(col, ids, lengths))
            del col
            _release_freed_memory()
            bar.update(len(idx))
    bar.close()
