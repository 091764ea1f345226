"""The exported Parquet layout is readable by other engines, partitioned by run, hook and layer."""

import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from interp.capture.capture import CaptureCfg, capture
from store import StoreError
from store.activations import read_vectors
from store.export import export_store

TEXTS = ["the cat sat on the mat", "hi", "a longer prompt about gardens and rivers", "x", "numbers 1 2 3"]


@pytest.fixture
def two_runs(tiny, store, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q{i}", "text": t}) for i, t in enumerate(TEXTS)))
    runs = [capture(tiny, store, CaptureCfg(prompts=str(path), hooks=hooks, positions="last,all", backend="torch",
                                            batch_size=2, flush_mb=0), progress=False)
            for hooks in ("resid_post,z:1", "mlp_out:0-1")]
    # debris an interrupted writer could leave: never exported
    (store.shard_dir / "run_id=1" / "hook=resid_post" / "layer=0" / "part-000099.parquet.tmp").write_bytes(b"x")
    return store, runs


def _stack(table: pa.Table) -> np.ndarray:
    col = table.column("vec").combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), -1)


def test_pyarrow_dataset_reads_the_export_partitioned(two_runs, tmp_path):
    store, runs = two_runs
    out = tmp_path / "export"
    n = export_store(store, out)
    with store.connect(read_only=True) as con:
        total = con.execute("SELECT count(*) FROM activations").fetchone()[0]
        n_shards = con.execute("SELECT count(*) FROM shards").fetchone()[0]
    assert n["shards"] == n_shards and n["rows"] == total
    data = ds.dataset(out / "activations", format="parquet", partitioning="hive")
    assert {"run_id", "hook", "layer", "prompt_id", "reduce", "pos", "head", "vec"} <= set(data.schema.names)
    assert data.count_rows() == total
    # partition pruning by run, hook and layer, and the same vectors as the store reader
    want = (ds.field("run_id") == 1) & (ds.field("hook") == "resid_post") & (ds.field("layer") == 2) \
        & (ds.field("reduce") == "last")
    got = data.to_table(filter=want).sort_by("prompt_id")
    assert len(list(data.get_fragments(filter=want))) == 3  # only that partition's parts are opened
    with store.connect(read_only=True) as con:
        meta, X = read_vectors(con, store, runs[0], "resid_post", [2], "last")
    assert got.column("prompt_id").to_pylist() == meta["prompt_id"].tolist()
    np.testing.assert_array_equal(_stack(got), X)
    # z keeps its per-head rows; run 2's hooks are in their own partitions
    heads = data.to_table(filter=(ds.field("hook") == "z") & (ds.field("reduce") == "last"))
    assert heads.num_rows == len(TEXTS) * 4
    assert set(data.to_table(filter=ds.field("run_id") == 2, columns=["hook"]).column("hook").to_pylist()) == \
        {"mlp_out"}
    # the tables come along, and DuckDB reads the same layout with hive partitioning
    assert pq.read_table(out / "tables" / "runs.parquet").num_rows == 2
    assert pq.read_table(out / "tables" / "tokens.parquet").num_rows > 0
    con = duckdb.connect()
    per_layer = con.execute(
        f"SELECT hook, layer, count(*) FROM read_parquet('{out}/activations/**/*.parquet', hive_partitioning = true) "
        "WHERE run_id = 2 GROUP BY ALL ORDER BY ALL").fetchall()
    tokens = con.execute(f"SELECT count(*) FROM '{out}/tables/run_prompts.parquet' WHERE run_id = 2").fetchone()[0]
    n_tok = con.execute(f"SELECT sum(n_tokens) FROM '{out}/tables/run_prompts.parquet' WHERE run_id = 2").fetchone()[0]
    assert tokens == len(TEXTS)
    assert per_layer == [("mlp_out", 0, n_tok + len(TEXTS)), ("mlp_out", 1, n_tok + len(TEXTS))]


def test_export_filters_links_and_refuses_to_mix(two_runs, tmp_path):
    store, _runs = two_runs
    out = tmp_path / "one"
    n = export_store(store, out, runs=[2], hooks=["mlp_out"], link=True)
    files = sorted((out / "activations").rglob("*.parquet"))
    assert n["shards"] == len(files) == 2 * 3 and all(f.stat().st_nlink == 2 for f in files)
    assert pq.read_table(out / "tables" / "runs.parquet").column("run_id").to_pylist() == [2]
    with pytest.raises(StoreError, match="already holds an export"):
        export_store(store, out)
    with pytest.raises(StoreError, match="no shards match runs"):
        export_store(store, tmp_path / "none", runs=[7])


def test_polars_reads_the_export(two_runs, tmp_path):
    pl = pytest.importorskip("polars", reason="polars is optional; pyarrow and DuckDB readers are tested above")
    store, _ = two_runs
    export_store(store, tmp_path / "pl")
    df = pl.scan_parquet(str(tmp_path / "pl" / "activations" / "**" / "*.parquet"), hive_partitioning=True) \
        .filter((pl.col("hook") == "resid_post") & (pl.col("layer") == 1)).collect()
    with store.connect(read_only=True) as con:
        n = con.execute("SELECT count(*) FROM activations WHERE hook = 'resid_post' AND layer = 1").fetchone()[0]
    assert df.height == n
