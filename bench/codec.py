"""The shard codec decision: the store's own Parquet codec (store/parquet.py) against pyarrow's and
DuckDB's Parquet writers and readers, side by side on the same synthetic vectors.

Each writer is fed ``--gb`` of float32 vectors (d = ``--d``, ``--shard-mb`` per shard, like the
capture's flushes) straight from memory, as fast as it accepts them; the shards are written
round-robin (shard i by every writer before shard i + 1), so a slow moment of the machine hits all
three alike. Then every shard is read back to one contiguous (rows, d) float32 array, round-robin
again, and checked against what was written. Writes go to the page cache (no fsync: the
capture's durable mode adds the same fsync to any writer) and reads come from it, so the figures
are the codecs' own costs.

- ours: ``store.parquet.write_shard`` / ``store.parquet.vector_pages`` (+ one copy into the array)
- pyarrow: ``Block.table()`` then ``pq.write_table`` (uncompressed, no dictionary, no statistics:
  its fastest settings for this data) / ``pq.read_table(columns=["vec"], memory_map=True)``
- duckdb: ``COPY (SELECT * FROM <arrow table>) TO ... (FORMAT parquet, COMPRESSION uncompressed)`` /
  ``SELECT vec FROM read_parquet(...)`` fetched as Arrow

The rule (issue 23): the codec stays only if it is at least 1.5x faster than the faster library
on both write and read; otherwise the shards move to that library. The last lines say which.

    python bench/codec.py --gb 2          # the measurement (idle machine)
    python bench/codec.py --gb 0.05       # a check that it runs
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store.activations import Block
from store.parquet import vector_pages, write_shard

KEEP_RATIO = 1.5
"""How much faster than the best library the codec must be, on write and on read, to stay."""


def _ours_write(path: Path, block: Block, _con) -> None:
    write_shard(path, [block])


def _pyarrow_write(path: Path, block: Block, _con) -> None:
    pq.write_table(block.table(), path, compression="NONE", use_dictionary=False, write_statistics=False)


def _duckdb_write(path: Path, block: Block, con: duckdb.DuckDBPyConnection) -> None:
    con.register("shard_rows", block.table())
    try:
        con.execute(f"COPY (SELECT * FROM shard_rows) TO '{path}' (FORMAT parquet, COMPRESSION uncompressed)")
    finally:
        con.unregister("shard_rows")


def _ours_read(path: Path, _con) -> np.ndarray:
    views = vector_pages(path)
    if views is None:
        raise RuntimeError(f"{path}: not in the codec's layout")
    return np.concatenate(views) if len(views) > 1 else views[0].copy()


def _flat(column: pa.ChunkedArray, d: int) -> np.ndarray:
    values = [c.flatten().to_numpy() for c in column.chunks if len(c)]
    return (np.concatenate(values) if len(values) > 1 else values[0].copy()).reshape(-1, d)


def _pyarrow_read(path: Path, _con, d: int) -> np.ndarray:
    return _flat(pq.read_table(path, columns=["vec"], memory_map=True).column("vec"), d)


def _duckdb_read(path: Path, con: duckdb.DuckDBPyConnection, d: int) -> np.ndarray:
    return _flat(con.execute(f"SELECT vec FROM read_parquet('{path}')").to_arrow_table().column("vec"), d)


WRITERS = {"ours": _ours_write, "pyarrow": _pyarrow_write, "duckdb": _duckdb_write}


def run(gb: float, d: int, shard_mb: float, root: Path, seed: int = 0) -> dict[str, dict[str, float]]:
    """Seconds and bytes per writer: {name: {write_s, read_s, bytes, file_bytes}}."""
    rows = max(1, int(shard_mb * 2**20 // (4 * d)))
    n_shards = max(1, round(gb * 2**30 / (rows * d * 4)))
    rng = np.random.default_rng(seed)
    vec = rng.standard_normal((rows, d), dtype=np.float32)  # one shard's vectors, fed again and again
    ids = pa.array([f"p{i:08d}" for i in range(rows)], pa.string())
    pos = np.arange(rows, dtype=np.int32) % 256
    block = Block("resid_post", 0, "all", ids, vec, pos)
    con = duckdb.connect()
    con.execute("SET threads = 1")  # the store writes each shard on one thread (one per shard in a pool)
    out = {w: {"write_s": 0.0, "read_s": 0.0, "bytes": 0, "file_bytes": 0} for w in WRITERS}
    readers = {"ours": lambda p: _ours_read(p, con), "pyarrow": lambda p: _pyarrow_read(p, con, d),
               "duckdb": lambda p: _duckdb_read(p, con, d)}
    for w in WRITERS:
        (root / w).mkdir(parents=True, exist_ok=True)
    print(f"{n_shards} shards x {rows} vectors of d={d} ({rows * d * 4 / 2**20:.0f} MiB each) per writer, "
          f"{n_shards * rows * d * 4 / 2**30:.2f} GiB in all", flush=True)
    for i in range(n_shards):
        for name, write in WRITERS.items():
            path = root / name / f"part-{i:06d}.parquet"
            t0 = time.perf_counter()
            write(path, block, con)
            out[name]["write_s"] += time.perf_counter() - t0
            out[name]["bytes"] += vec.nbytes
            out[name]["file_bytes"] += path.stat().st_size
    for i in range(n_shards):
        for name, read in readers.items():
            t0 = time.perf_counter()
            got = read(root / name / f"part-{i:06d}.parquet")
            out[name]["read_s"] += time.perf_counter() - t0
            if i == 0 and not np.array_equal(got, vec):
                raise RuntimeError(f"{name} read back other vectors than it wrote")
    con.close()
    return out


def decide(out: dict[str, dict[str, float]]) -> list[str]:
    """The report's lines: speeds, ours against each library, and the decision."""
    gbs = {w: {k: r["bytes"] / 2**30 / max(r[f"{k}_s"], 1e-12) for k in ("write", "read")} for w, r in out.items()}
    lines = [f"{'writer':<8} {'write GiB/s':>12} {'read GiB/s':>11} {'file/data':>10}"]
    lines += [f"{w:<8} {g['write']:>12.2f} {g['read']:>11.2f} {out[w]['file_bytes'] / out[w]['bytes']:>10.4f}"
              for w, g in gbs.items()]
    ratios = {lib: {k: gbs["ours"][k] / gbs[lib][k] for k in ("write", "read")} for lib in ("pyarrow", "duckdb")}
    for lib, r in ratios.items():
        lines.append(f"ours / {lib}: write {r['write']:.2f}x, read {r['read']:.2f}x")
    best = {k: max(("pyarrow", "duckdb"), key=lambda lib: gbs[lib][k]) for k in ("write", "read")}
    worst = {k: ratios[best[k]][k] for k in ("write", "read")}
    if all(v >= KEEP_RATIO for v in worst.values()):
        lines.append(f"decision: KEEP store/parquet.py: {worst['write']:.2f}x the fastest library writer "
                     f"({best['write']}) and {worst['read']:.2f}x the fastest reader ({best['read']}), "
                     f"both >= {KEEP_RATIO}x")
    else:
        lib = max(("pyarrow", "duckdb"), key=lambda w: min(gbs[w]["write"], gbs[w]["read"]))
        short = ", ".join(f"{k} {v:.2f}x" for k, v in worst.items() if v < KEEP_RATIO)
        lines.append(f"decision: MOVE the shards to {lib}: ours against the fastest library is {short} "
                     f"(below {KEEP_RATIO}x)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=2.0, help="GiB of vectors fed to each writer (default 2)")
    ap.add_argument("--d", type=int, default=576, help="vector length (default 576, SmolLM2-135M's d_model)")
    ap.add_argument("--shard-mb", type=float, default=64.0, help="MiB of vectors per shard (default 64)")
    ap.add_argument("--dir", default=None, help="directory for the (temporary, removed) shards; default: the system temp directory")
    args = ap.parse_args()
    if args.gb <= 0 or args.d < 1 or args.shard_mb <= 0:
        ap.error("--gb and --shard-mb must be positive and --d at least 1")
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="interp-codec-", dir=args.dir))  # only this directory is removed
    try:
        out = run(args.gb, args.d, args.shard_mb, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for line in decide(out):
        print(line)


if __name__ == "__main__":
    main()
