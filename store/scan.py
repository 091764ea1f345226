"""Streaming reads: one commit's worth of vectors at a time, so an analysis scales past memory.

Every commit of a cache run writes one part of every (hook, layer) with the same prompts in
the same order, so part ``k`` of all sites lines up row for row. ``iter_parts`` yields them
one part at a time: memory is bounded by the writer's flush size, not by the run.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import numpy as np
import pandas as pd

from store.activations import ShardRef, read_shard_vectors
from store.db import Store, StoreError


def _read(store: Store, rel: ShardRef, reduce: str) -> tuple[list[str], np.ndarray]:
    table, X = read_shard_vectors(store, rel, ["prompt_id", "reduce"], reduce)
    return table.column("prompt_id").to_pylist(), X


def parts_of_sites(con: duckdb.DuckDBPyConnection, run_id: int,
                   sites: list[tuple[str, int]]) -> Iterator[tuple[int, dict[tuple[str, int], ShardRef]]]:
    """(part, {site: shard}) for every committed part of the run, in order; every part
    must hold every site (one commit writes all of them)."""
    con.register("wanted_sites", pd.DataFrame({"hook": [s[0] for s in sites], "layer": [s[1] for s in sites]}))
    try:
        rows = con.execute(
            "SELECT s.part, s.hook, s.layer, s.path, s.n_bytes FROM shards s JOIN wanted_sites w USING (hook, layer) "
            "WHERE s.run_id = ? ORDER BY s.part", [run_id]).fetchall()
    finally:
        con.unregister("wanted_sites")
    by_part: dict[int, dict[tuple[str, int], ShardRef]] = {}
    for part, hook, layer, path, n_bytes in rows:
        by_part.setdefault(part, {})[(hook, layer)] = ShardRef(path, n_bytes)
    if not by_part:
        raise StoreError(f"run {run_id} has none of the sites {sites[:3]}...: capture them first")
    for part in sorted(by_part):
        paths = by_part[part]
        missing = [s for s in sites if s not in paths]
        if missing:
            raise StoreError(f"run {run_id} part {part} lacks {missing[:3]}: the sites were not captured together")
        yield part, paths


def iter_parts(con: duckdb.DuckDBPyConnection, store: Store, run_id: int, sites: list[tuple[str, int]],
               reduce: str = "last") -> Iterator[tuple[list[str], np.ndarray]]:
    """Per committed part: (prompt_ids, X) with X (len(sites), n, d) float32, sites in the given order.

    ``sites`` are (hook, layer) pairs stored by the run with one vector per prompt (``last``
    or ``mean``; not per-head ``z``).
    """
    if reduce not in ("last", "mean"):
        raise StoreError(f"iter_parts streams one vector per prompt ('last' or 'mean'), not '{reduce}'")
    for part, paths in parts_of_sites(con, run_id, sites):
        ids, blocks = None, []
        for site in sites:
            got, X = _read(store, paths[site], reduce)
            if ids is None:
                ids = got
            elif got != ids:
                raise StoreError(f"run {run_id} part {part}: {site} holds other prompts than {sites[0]}")
            blocks.append(X)
        if ids:
            yield ids, np.stack(blocks)
