"""Layer-study tables (store/schema/20_layers.sql): writers replace a run's rows in one
transaction, so re-running a study never duplicates anything; readers return DataFrames.

``iter_state_parts`` streams a cache run's residual states one commit (part) at a time, every
stored reduction from one read of each shard, so the layer analyses' memory is bounded by the
capture's flush size (128 MB by default), not by the run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import duckdb
import numpy as np
import pandas as pd
import pyarrow.compute as pc

from store import tables
from store.activations import gather_rows, read_shard
from store.db import Store, StoreError
from store.rows import first_row
from store.scan import parts_of_sites

TABLES = ("layer_similarity", "layer_angular", "layer_influence", "layer_points", "layer_agreement", "layer_heal",
          "layer_heal_adapters")
"""The layer study's tables; their columns are the schema's (store/schema/20_layers.sql)."""
NULLABLE_KEYS: dict[str, list[str]] = {
    "layer_points": ["strategy", "n", "seed", "heal_steps", "point"],
    "layer_agreement": ["scope", "n", "proxy", "position", "task", "metric"],
}
"""Natural keys (after run_id) of the tables whose key has a NULL-able column, so the database
cannot hold it as a PRIMARY KEY (store/schema/20_layers.sql): ``replace_rows`` keeps it."""


def _check(table: str) -> None:
    if table not in TABLES:
        raise StoreError(f"unknown layer table '{table}': one of {', '.join(TABLES)}")


def replace_rows(con: duckdb.DuckDBPyConnection, run_id: int, frames: dict[str, pd.DataFrame]) -> None:
    """Replace the run's rows of each named table by the frame's, all in one transaction."""
    for table, df in frames.items():
        _check(table)
        key = NULLABLE_KEYS.get(table)
        if key is not None and df.duplicated(subset=key).any():  # (NaN/None count as one value)
            twice = df[df.duplicated(subset=key, keep=False)][key].iloc[0].to_dict()
            raise StoreError(f"rows for {table} repeat the key {twice}: each must be stored once")
    frames = {t: df.assign(layers=[[int(x) for x in v] for v in df["layers"]]) if "layers" in df else df
              for t, df in frames.items()}
    tables.replace_rows(con, frames, run_id=run_id)


def adapters_digest(adapters: dict[str, np.ndarray]) -> str:
    """Content digest of a set of LoRA adapters: sha256 of each name, shape and float32 bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(adapters):
        m = np.ascontiguousarray(adapters[name], dtype=np.float32)
        h.update(json.dumps([name, list(m.shape)]).encode())
        h.update(m.tobytes())
    return h.hexdigest()


def add_heal_log(con: duckdb.DuckDBPyConnection, run_id: int, point: str, log: pd.DataFrame,
                 adapters: dict[str, np.ndarray] | None = None) -> None:
    """Replace one healed point's training log (step, loss, seconds) and trained LoRA adapters (name ->
    matrix) with their content digest, in one transaction."""
    mats = adapters or {}
    frame = pd.DataFrame({"name": list(mats), "shape": [list(np.shape(m)) for m in mats.values()],
                          "weights": [np.asarray(m, np.float32).reshape(-1) for m in mats.values()],
                          "digest": adapters_digest(mats) if mats else None})
    tables.replace_rows(con, {"layer_heal": log, "layer_heal_adapters": frame}, run_id=run_id, point=point)


def heal_adapters(con: duckdb.DuckDBPyConnection, run_id: int, point: str) -> dict[str, np.ndarray]:
    """The LoRA adapters a healed point trained (name -> float32 matrix; empty when none are stored), checked
    against the digest stored with them."""
    return stored_adapters(con, run_id, point)[0]


def stored_adapters(con: duckdb.DuckDBPyConnection, run_id: int,
                    point: str) -> tuple[dict[str, np.ndarray], str | None]:
    """(adapters, content digest) of a healed point; a digest the weights no longer hash to is a StoreError.
    Rows stored before digests existed get theirs computed here."""
    rows = con.execute("SELECT name, shape, weights, digest FROM layer_heal_adapters WHERE run_id = ? AND point = ? "
                       "ORDER BY name", [run_id, point]).fetchall()
    mats = {name: np.asarray(w, np.float32).reshape(shape) for name, shape, w, _ in rows}
    if not mats:
        return {}, None
    digest = adapters_digest(mats)
    stored = {d for *_, d in rows} - {None}
    if stored and stored != {digest}:
        raise StoreError(f"the LoRA adapters of run {run_id} point '{point}' do not match their stored digest "
                         f"{min(stored)[:16]}: the store was altered; heal the point again")
    return mats, digest


def read_table(con: duckdb.DuckDBPyConnection, table: str, run_id: int) -> pd.DataFrame:
    _check(table)
    return con.execute(f"SELECT * EXCLUDE (run_id) FROM {table} WHERE run_id = ? ORDER BY ALL", [run_id]).df()


def has_rows(con: duckdb.DuckDBPyConnection, table: str, run_id: int) -> bool:
    _check(table)
    return first_row(con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]))[0] > 0


def point_evals(con: duckdb.DuckDBPyConnection, run_id: int) -> pd.DataFrame:
    """(point, task, metric, value, stderr) of every point of the run, base included."""
    return con.execute("SELECT point, task, metric, value, stderr FROM evals WHERE run_id = ? "
                       "ORDER BY point, task, metric", [run_id]).df()


def drops(con: duckdb.DuckDBPyConnection, run_id: int, metric: str | None = None,
          strategy: str | None = None) -> pd.DataFrame:
    """Rows of the ``layer_drops`` view (every evaluated drop with its base value) for a run."""
    sql = ("SELECT strategy, n, seed, heal_steps, layers, point, task, metric, value, stderr, base_value, delta "
           "FROM layer_drops WHERE run_id = ?")
    params: list = [run_id]
    if metric is not None:
        sql += " AND metric = ?"
        params.append(metric)
    if strategy is not None:
        sql += " AND strategy = ?"
        params.append(strategy)
    return con.execute(sql + " ORDER BY strategy, n, seed, heal_steps", params).df()


def cheapest_blocks(con: duckdb.DuckDBPyConnection, run_id: int, n: int, metric: str = "perplexity") -> pd.DataFrame:
    """Evaluated (unhealed) drops of exactly n layers, cheapest first by ``metric``."""
    return con.execute(
        "SELECT DISTINCT point, layers, value, delta, list(strategy) OVER (PARTITION BY point) AS strategies "
        "FROM layer_drops WHERE run_id = ? AND n = ? AND metric = ? AND heal_steps = 0 "
        "ORDER BY value, point", [run_id, n, metric]).df()


# --- streaming the residual states of a cache run ----------------------------------------


def state_sites(con: duckdb.DuckDBPyConnection, run_id: int) -> list[tuple[str, int]]:
    """The residual states in order: resid_pre of layers 0..L-1 (the input of each layer), then
    resid_post of layer L-1 (the last layer's output, before the final norm)."""
    row = con.execute("SELECT n_layers FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if row is None:
        raise StoreError(f"no run {run_id} in this store: `invoke runs` lists them")
    n_layers = row[0]
    have = dict(con.execute("SELECT hook, list(DISTINCT layer ORDER BY layer) FROM shards WHERE run_id = ? "
                            "AND hook IN ('resid_pre', 'resid_post') GROUP BY hook", [run_id]).fetchall())
    pre = have.get("resid_pre", [])
    if pre != list(range(n_layers)):
        raise StoreError(f"cache run {run_id} lacks resid_pre at some of its {n_layers} layers (has {pre}): "
                         "capture resid_pre at every layer")
    if n_layers - 1 not in have.get("resid_post", []):
        raise StoreError(f"cache run {run_id} lacks resid_post of its last layer: capture resid_post:{n_layers - 1}")
    return [("resid_pre", l) for l in range(n_layers)] + [("resid_post", n_layers - 1)]


def stored_reductions(con: duckdb.DuckDBPyConnection, run_id: int) -> list[str]:
    """The reductions (last, mean, all) a cache run captured, from its recorded config."""
    row = con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if row is None:
        raise StoreError(f"no run {run_id} in this store: `invoke runs` lists them")
    positions = json.loads(row[0]).get("positions", "")
    return [p.strip() for p in str(positions).split(",") if p.strip()]


def prompt_lengths(con: duckdb.DuckDBPyConnection, run_id: int) -> dict[str, int]:
    """prompt_id -> tokens the model saw, for every finished prompt of a cache run."""
    return dict(con.execute("SELECT prompt_id, n_tokens FROM run_prompts WHERE run_id = ?", [run_id]).fetchall())


def iter_state_parts(con: duckdb.DuckDBPyConnection, store: Store, run_id: int, sites: list[tuple[str, int]],
                     reductions: list[str]) -> Iterator[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per committed part: {reduction: (prompt_ids, pos, X)} with X (len(sites), rows, d) float32.

    Every commit writes one shard of each (hook, layer) holding the same prompts in the same
    order, so row i of every site is the same (prompt, token): checked here. ``all`` has a
    row per token (pos its index); ``last`` and ``mean`` one row per prompt (pos of the last
    token, or -1 for mean). Each shard is read once for all requested reductions.
    """
    for part, paths in parts_of_sites(con, run_id, sites):
        out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for k, site in enumerate(sites):
            table, views = read_shard(store, paths[site], ["prompt_id", "reduce", "pos"])
            width = views[0].shape[1] if views else 0
            for how in reductions:
                keep = pc.equal(table.column("reduce"), how)
                sub = table.filter(keep)
                if sub.num_rows == 0:
                    raise StoreError(f"run {run_id} part {part} holds no '{how}' vectors of {site[0]}:{site[1]}: "
                                     f"capture with positions including {how}")
                ids = np.asarray(sub.column("prompt_id").to_pylist(), dtype=object)
                pos = sub.column("pos").fill_null(-1).to_numpy().astype(np.int64)
                if k == 0:
                    out[how] = (ids, pos, np.empty((len(sites), sub.num_rows, width), np.float32))
                elif not (np.array_equal(ids, out[how][0]) and np.array_equal(pos, out[how][1])):
                    raise StoreError(f"run {run_id} part {part}: {site} holds other rows than {sites[0]} ('{how}')")
                elif width != out[how][2].shape[2]:
                    raise StoreError(f"run {run_id} part {part}: {site} vectors have width {width}, "
                                     f"not {out[how][2].shape[2]}")
                gather_rows(views, np.flatnonzero(keep.to_numpy(zero_copy_only=False)), out=out[how][2][k])
            del table, views
        yield out
