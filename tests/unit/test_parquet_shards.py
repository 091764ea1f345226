"""store/parquet.py: the direct shard encoder and the zero-copy page reader, checked against
pyarrow, DuckDB and Polars (independent Parquet implementations)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store import Store
from store.activations import Block, read_shard, read_shard_vectors
from store.db import SHARD_SCHEMA
from store.parquet import _PAGE_VALUES, vector_pages, write_shard


def _blocks(d: int, n: int = 300, seed: int = 0) -> list[Block]:
    rng = np.random.default_rng(seed)
    return [
        Block("z", 2, "all", [f"prompt-{i % 37}" for i in range(n)], rng.standard_normal((n, d), dtype=np.float32),
              np.arange(n, dtype=np.int32), (np.arange(n) % 9).astype(np.int16)),
        Block("z", 2, "mean", pa.array(["é-ünïcode", "", "x" * 300]), rng.standard_normal((3, d), dtype=np.float32)),
        Block("z", 2, "last", ["a", "b"], rng.standard_normal((2, d), dtype=np.float32), np.array([5, 9], np.int32)),
    ]


def _expected(blocks: list[Block]) -> pa.Table:
    return pa.concat_tables([b.table() for b in blocks])


@pytest.mark.parametrize("d", [1, 2, 7, 9, 64, 576, _PAGE_VALUES // 4 + 3])
def test_every_reader_reads_back_exactly_what_was_written(tmp_path, d):
    blocks = _blocks(d, n=300 if d < 10_000 else 4)
    path = tmp_path / "s.parquet"
    rows, nbytes, _crc = write_shard(path, blocks)
    want = _expected(blocks)
    assert rows == want.num_rows and nbytes == path.stat().st_size
    got = pq.read_table(path)
    assert got.schema == SHARD_SCHEMA  # types come from the file's own logical types
    assert got.equals(want)
    dk = duckdb.connect().execute(f"SELECT prompt_id, reduce, pos, head, vec FROM read_parquet('{path}')").fetchall()
    assert [r[:4] for r in dk] == list(zip(*[want.column(c).to_pylist() for c in ("prompt_id", "reduce", "pos", "head")]))
    assert np.array_equal(np.array([r[4] for r in dk], np.float32), np.concatenate([b.vec for b in blocks]))
    views = vector_pages(path)
    assert views is not None
    assert np.array_equal(np.concatenate(views), np.concatenate([b.vec for b in blocks]))
    assert all(not v.flags.owndata for v in views)  # views of the file, not copies


def test_polars_reads_a_shard(tmp_path):
    pl = pytest.importorskip("polars")
    blocks = _blocks(16)
    write_shard(tmp_path / "s.parquet", blocks)
    df = pl.read_parquet(tmp_path / "s.parquet")
    want = _expected(blocks)
    assert df["prompt_id"].to_list() == want.column("prompt_id").to_pylist()
    assert df["head"].to_list() == want.column("head").to_pylist()
    assert np.array_equal(np.array(df["vec"].to_list(), np.float32), np.concatenate([b.vec for b in blocks]))


def test_large_vectors_span_several_pages(tmp_path):
    blocks = _blocks(576, n=2000)
    write_shard(tmp_path / "s.parquet", blocks)
    views = vector_pages(tmp_path / "s.parquet")
    assert len(views) > 3 and {v.shape[1] for v in views} == {576}


def test_other_writers_files_are_read_by_pages_only_when_their_layout_checks_out(tmp_path):
    want = _expected(_blocks(576))
    X = np.concatenate([b.vec for b in _blocks(576)])
    plain = tmp_path / "plain.parquet"
    pq.write_table(want, plain, compression="none", use_dictionary=False)
    assert np.array_equal(np.concatenate(vector_pages(plain)), X)
    for name, kw in {"zstd": {"compression": "zstd"}, "dict": {"compression": "none"}}.items():
        pq.write_table(want, tmp_path / f"{name}.parquet", **kw)
        assert vector_pages(tmp_path / f"{name}.parquet") is None
    nullable = want.cast(pa.schema([*[f for f in SHARD_SCHEMA if f.name != "vec"],
                                    pa.field("vec", pa.list_(pa.float32()))]))
    pq.write_table(nullable, tmp_path / "nullable.parquet", compression="none", use_dictionary=False)
    assert vector_pages(tmp_path / "nullable.parquet") is None


@pytest.mark.parametrize("lengths", [[4] * 50 + [5] + [4] * 49, [8] * 99 + [16], [3, 3, 3, 2, 4] * 20])
def test_ragged_lists_are_never_mistaken_for_rows_of_one_length(tmp_path, lengths):
    """The page check must notice one list of another length, wherever it is."""
    rng = np.random.default_rng(1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    vec = pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.standard_normal(offsets[-1], dtype=np.float32)),
                                   type=pa.list_(pa.field("element", pa.float32(), nullable=False)))
    table = pa.table({"prompt_id": pa.array(["p"] * len(lengths)), "vec": vec},
                     schema=pa.schema([("prompt_id", pa.string()), pa.field("vec", vec.type, nullable=False)]))
    path = tmp_path / "ragged.parquet"
    pq.write_table(table, path, compression="none", use_dictionary=False)
    assert vector_pages(path) is None


def test_a_damaged_level_stream_falls_back_to_pyarrow(tmp_path):
    path = tmp_path / "s.parquet"
    write_shard(path, _blocks(64))
    raw = bytearray(path.read_bytes())
    md = pq.read_metadata(path)
    start = md.row_group(0).column(4).data_page_offset
    # the first page's repetition levels start after its header and 4-byte length; make one
    # row's second run say 62 ones instead of 63
    from store.parquet import _read_struct

    _, body = _read_struct(bytes(raw), start)
    first_row = body + 4
    assert raw[first_row:first_row + 4] == bytes([2, 0, 63 << 1, 1])
    raw[first_row + 2] = 62 << 1
    path.write_bytes(bytes(raw))
    assert vector_pages(path) is None


def test_read_shard_uses_pages_or_pyarrow_with_the_same_result(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.shard_dir.mkdir(parents=True)
    blocks = _blocks(32)
    write_shard(store.shard_dir / "ours.parquet", blocks)
    pq.write_table(_expected(blocks), store.shard_dir / "theirs.parquet", compression="zstd")
    ours, views = read_shard(store, "ours.parquet")
    theirs, _ = read_shard(store, "theirs.parquet")
    assert ours.equals(theirs) and ours.schema == theirs.schema
    assert all(not v.flags.owndata for v in views)
    for rel in ("ours.parquet", "theirs.parquet"):
        meta, X = read_shard_vectors(store, rel, ["prompt_id", "reduce"], reduce="mean")
        assert meta.column("prompt_id").to_pylist() == ["é-ünïcode", "", "x" * 300]
        assert np.array_equal(X, blocks[1].vec)


def test_one_shard_holds_one_vector_length(tmp_path):
    a, b = _blocks(8)[0], _blocks(9)[1]
    with pytest.raises(ValueError, match="one length"):
        write_shard(tmp_path / "s.parquet", [a, b])


def test_one_row_of_another_length_inside_a_page_is_caught(tmp_path):
    """Row 10 one value shorter and row 11 one longer: the page's totals still fit rows of
    40, only the row-by-row check of the level stream can tell."""
    from store.parquet import _read_struct

    path = tmp_path / "s.parquet"
    write_shard(path, [Block("resid_post", 0, "last", [f"p{i}" for i in range(50)],
                             np.ones((50, 40), np.float32), np.zeros(50, np.int32))])
    assert vector_pages(path) is not None
    raw = bytearray(path.read_bytes())
    _, body = _read_struct(bytes(raw), pq.read_metadata(path).row_group(0).column(4).data_page_offset)
    row = body + 4 + 4 * 10  # each row is 4 bytes: run of one 0, run of 39 ones
    assert raw[row:row + 8] == bytes([2, 0, 39 << 1, 1, 2, 0, 39 << 1, 1])
    raw[row + 2], raw[row + 6] = 38 << 1, 40 << 1
    path.write_bytes(bytes(raw))
    assert pq.read_table(path).column("vec")[10].as_py() == [1.0] * 39  # a valid file, with ragged rows
    assert vector_pages(path) is None


@pytest.mark.parametrize("per_page", [1, 5, 64])
def test_row_segments_write_the_same_file_as_one_array(tmp_path, monkeypatch, per_page):
    """A block given as consecutive row segments (the capture loop's views of each prompt's
    real tokens) is written byte for byte as the block concatenated into one array, also
    where a page spans several segments or a segment several pages."""
    import store.parquet as parquet

    d = 7
    monkeypatch.setattr(parquet, "_PAGE_VALUES", 4 * d * per_page)
    rng = np.random.default_rng(3)
    batch = rng.standard_normal((6, 13, d), dtype=np.float32)     # (batch, pos, d), like a padded batch
    spans = [(0, 13), (0, 1), (0, 9), (0, 4), (0, 12), (0, 2)]
    segs = [batch[i, a:b] for i, (a, b) in enumerate(spans)]
    n = sum(len(s) for s in segs)
    ids = [f"p{i}" for i, (a, b) in enumerate(spans) for _ in range(b - a)]
    pos = np.concatenate([np.arange(b - a, dtype=np.int32) for a, b in spans])
    whole = Block("resid_post", 0, "all", ids, np.concatenate(segs), pos)
    split = Block("resid_post", 0, "all", ids, segs, pos)
    assert split.nbytes == whole.nbytes == n * d * 4
    got = [write_shard(tmp_path / f"{name}.parquet", [b, _blocks(d, n=20)[2]])
           for name, b in (("whole", whole), ("split", split))]
    assert got[0] == got[1]  # rows, bytes and CRC-32
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "split.parquet").read_bytes()
    assert np.array_equal(pq.read_table(tmp_path / "split.parquet").column("vec").combine_chunks().flatten()
                          .to_numpy()[:n * d].reshape(n, d), np.concatenate(segs))
    assert split.table().equals(whole.table())
