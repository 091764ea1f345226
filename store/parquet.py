"""Activation shards as Parquet, encoded and decoded directly for the store's one layout.

A shard holds the columns of ``SHARD_SCHEMA``: ``prompt_id``, ``reduce`` (optional strings),
``pos``, ``head`` (optional int32 / int16) and ``vec``, a required list of required floats.
Every file is plain Parquet (format 1.0 data pages, PLAIN values, RLE levels, no
compression) that any Parquet reader takes; the tests read it with DuckDB, pyarrow and Polars.

Why not a library writer: almost all of a shard is the float values of ``vec``, and for
this layout the values section of a page is exactly the bytes of the float32 array. So

- ``write_shard`` hands each page's values to the kernel straight from the NumPy array
  (one copy, like ``np.save``), where pyarrow and Polars first encode into their own
  buffers (two copies; BENCHMARKS.md section 2 has the figures);
- ``vector_pages`` returns each data page's values as a zero-copy (rows, d) view of the
  memory-mapped file, so a reader copies them once, straight into its output, after
  checking the page's levels really describe rows of exactly ``d`` floats. Any file it
  does not recognise (another writer's page layout, compression, dictionary pages, a
  nullable list) gives ``None`` and the caller decodes it with pyarrow instead.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from store.activations import Block

Buf = bytes | memoryview
"""Bytes being decoded: a header read into memory, or the memory-mapped file."""
Piece = bytes | np.ndarray
"""A piece of a page as it goes to the file: encoded bytes, or a (uint8) view of float32 values.
(numpy's stubs declare ndarray a buffer only for Python 3.12+, hence the ignores on memoryview(piece).)"""

# --- Thrift compact protocol: Parquet's page headers and footer ----------------------------

_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _encode(kind: int, value: Any) -> bytes:  # value's type follows kind (thrift is untyped on the wire)
    if kind in (_I16, _I32, _I64):
        return _varint(_zigzag(value))
    if kind == _BYTE:
        return bytes([value & 0xFF])
    if kind == _BINARY:
        raw = value.encode() if isinstance(value, str) else bytes(value)
        return _varint(len(raw)) + raw
    if kind == _STRUCT:
        return _struct(value)
    if kind == _LIST:
        item, items = value
        head = bytes([len(items) << 4 | item]) if len(items) < 15 else bytes([0xF0 | item]) + _varint(len(items))
        return head + b"".join(_encode(item, x) for x in items)
    raise ValueError(f"thrift type {kind} is not written here")


def _struct(fields: Sequence[tuple[int, int, object]]) -> bytes:
    """A struct from (field id, type, value) in increasing field id; None values are skipped.
    Booleans are given as type _TRUE with a bool value."""
    out, last = bytearray(), 0
    for fid, kind, value in fields:
        if value is None:
            continue
        if kind == _TRUE:
            kind = _TRUE if value else _FALSE
        delta = fid - last
        out += bytes([delta << 4 | kind]) if 0 < delta <= 15 else bytes([kind]) + _varint(_zigzag(fid))
        last = fid
        if kind not in (_TRUE, _FALSE):
            out += _encode(kind, value)
    out.append(0)
    return bytes(out)


def _read_varint(buf: Buf, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _read_value(buf: Buf, i: int, kind: int) -> tuple[Any, int]:  # the value's type follows kind
    if kind in (_TRUE, _FALSE):
        return kind == _TRUE, i
    if kind == _BYTE:
        return buf[i], i + 1
    if kind in (_I16, _I32, _I64):
        n, i = _read_varint(buf, i)
        return (n >> 1) ^ -(n & 1), i
    if kind == _DOUBLE:
        return None, i + 8
    if kind == _BINARY:
        n, i = _read_varint(buf, i)
        return bytes(buf[i:i + n]), i + n
    if kind in (_LIST, _SET):
        head = buf[i]
        i += 1
        size, item = head >> 4, head & 0x0F
        if size == 15:
            size, i = _read_varint(buf, i)
        items = []
        for _ in range(size):
            if item in (_TRUE, _FALSE):
                items.append(buf[i] == 1)
                i += 1
            else:
                value, i = _read_value(buf, i, item)
                items.append(value)
        return items, i
    if kind == _MAP:
        size, i = _read_varint(buf, i)
        if size:
            types = buf[i]
            i += 1
            for _ in range(size):
                _, i = _read_value(buf, i, types >> 4)
                _, i = _read_value(buf, i, types & 0x0F)
        return None, i
    if kind == _STRUCT:
        return _read_struct(buf, i)
    raise ValueError(f"bad thrift type {kind}")


def _read_struct(buf: Buf, i: int) -> tuple[dict[int, Any], int]:
    fields: dict[int, Any] = {}  # decoded thrift values: their types follow the field's kind
    fid = 0
    while True:
        head = buf[i]
        i += 1
        if head == 0:
            return fields, i
        delta, kind = head >> 4, head & 0x0F
        if delta:
            fid += delta
        else:
            n, i = _read_varint(buf, i)
            fid = (n >> 1) ^ -(n & 1)
        fields[fid], i = _read_value(buf, i, kind)


# --- Parquet constants (parquet.thrift) ------------------------------------------------------

_INT32, _FLOAT, _BYTE_ARRAY = 1, 4, 6                     # physical types
_REQUIRED, _OPTIONAL, _REPEATED = 0, 1, 2                 # repetition
_UTF8, _LIST_CT, _INT_16 = 0, 3, 16                       # converted types
_PLAIN, _RLE = 0, 3                                       # encodings
_DATA_PAGE = 0
_PAGE_VALUES = 1 << 20                                    # bytes of vector values per data page
_CREATED_BY = "interp store shard writer (store/parquet.py)"


def _rle(runs: Sequence[tuple[int, int]]) -> bytes:
    """Levels of bit width 1 as RLE runs of (value, count), with the 4-byte length prefix of
    format-1.0 data pages."""
    body = b"".join(_varint(count << 1) + bytes([value]) for value, count in runs if count)
    return len(body).to_bytes(4, "little") + body


def _row_pattern(d: int) -> bytes:
    """Repetition levels of one list of d values: a run of one 0, then a run of d-1 ones."""
    return _varint(1 << 1) + b"\x00" + (_varint((d - 1) << 1) + b"\x01" if d > 1 else b"")


def _page_header(n_values: int, size: int) -> bytes:
    return _struct([(1, _I32, _DATA_PAGE), (2, _I32, size), (3, _I32, size),
                    (5, _STRUCT, [(1, _I32, n_values), (2, _I32, _PLAIN), (3, _I32, _RLE), (4, _I32, _RLE)])])


def _plain_strings(values: pa.Array) -> np.ndarray:
    """PLAIN BYTE_ARRAY encoding of a string array without nulls: each value's 4-byte length,
    then its bytes."""
    arr = values.cast(pa.large_string())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    out = np.empty(4 * n + int(offsets[-1] - offsets[0]), np.uint8)
    starts = offsets[:-1] - offsets[0] + 4 * np.arange(n)
    out[(starts[:, None] + np.arange(4)).reshape(-1)] = lengths.astype("<u4").view(np.uint8)
    rows = np.repeat(np.arange(n), lengths)
    out[np.arange(int(offsets[-1] - offsets[0])) + 4 * (rows + 1)] = data[offsets[0]:offsets[-1]]
    return out


class _Column:
    """One column chunk being laid out: its pages as lists of byte pieces."""

    def __init__(self, name: str, physical: int, path: list[str]) -> None:
        self.name, self.physical, self.path = name, physical, path
        self.pages: list[list[Piece]] = []
        self.n_values = 0

    def page(self, n_values: int, levels: bytes, values: Piece | list[Piece]) -> None:
        """``values``: one buffer, or a list of buffers written one after another."""
        pieces = values if isinstance(values, list) else [values]
        size = len(levels) + sum(memoryview(v).nbytes for v in pieces)  # type: ignore[arg-type,misc]  # see Piece
        self.pages.append([_page_header(n_values, size), levels, *pieces])
        self.n_values += n_values

    def nbytes(self) -> int:
        return sum(memoryview(p).nbytes for page in self.pages for p in page)  # type: ignore[arg-type,misc]  # see Piece


def _optional_column(name: str, physical: int, parts: list[tuple[int, object]]) -> _Column:
    """An optional flat column from (n_rows, values or None for all-null) parts, as one page."""
    col = _Column(name, physical, [name])
    runs = [(0 if values is None else 1, n) for n, values in parts]
    body = b"".join(np.ascontiguousarray(v).tobytes() for _, v in parts if v is not None)
    col.page(sum(n for n, _ in parts), _rle(runs), body)
    return col


def write_shard(path: str | Path, blocks: Sequence[Block]) -> tuple[int, int, int]:
    """Write blocks (``store.activations.Block``) of one (hook, layer) as a Parquet file.

    Returns (rows, bytes, CRC-32 of the bytes). The checksum is computed from the pieces as
    they go to the file (zlib's crc32, about 3 GB/s on one core here, releasing the GIL), so
    nothing is read back. Every block's vectors must have the same length. Raises OSError
    (errno kept, so a full disk stays recognisable) if the file cannot be written.
    """
    segments = [[np.ascontiguousarray(v, dtype="<f4") for v in row_segments(b.vec) if len(v)] for b in blocks]
    blocks, segments = [b for b, seg in zip(blocks, segments) if seg], [seg for seg in segments if seg]
    widths = {int(v.shape[1]) for seg in segments for v in seg}
    if len(widths) > 1:
        raise ValueError(f"one shard holds vectors of one length, got {sorted(widths)}")
    counts = [sum(len(v) for v in seg) for seg in segments]
    n_rows = sum(counts)
    if not n_rows:
        from store.db import SHARD_SCHEMA

        pq.write_table(SHARD_SCHEMA.empty_table(), str(path))
        with open(path, "rb") as f:
            data = f.read()
        return 0, len(data), zlib.crc32(data)
    d = widths.pop()

    ids = _Column("prompt_id", _BYTE_ARRAY, ["prompt_id"])
    ids.page(n_rows, _rle([(1, n_rows)]), b"".join(
        _plain_strings(b.prompt_ids if isinstance(b.prompt_ids, pa.Array) else pa.array(b.prompt_ids, pa.string()))
        .tobytes() for b in blocks))
    reduce = _Column("reduce", _BYTE_ARRAY, ["reduce"])
    reduce.page(n_rows, _rle([(1, n_rows)]), b"".join(
        (len(b.reduce.encode()).to_bytes(4, "little") + b.reduce.encode()) * n for b, n in zip(blocks, counts)))
    pos = _optional_column("pos", _INT32, [(n, None if b.pos is None else np.asarray(b.pos, "<i4"))
                                           for b, n in zip(blocks, counts)])
    head = _optional_column("head", _INT32, [(n, None if b.head is None else np.asarray(b.head, "<i4"))
                                             for b, n in zip(blocks, counts)])
    vec = _Column("vec", _FLOAT, ["vec", "list", "element"])
    per_page = max(1, _PAGE_VALUES // (4 * d))
    pattern = _row_pattern(d)
    for seg, n in zip(segments, counts):
        # Pages of ``per_page`` rows from the start of each block, whatever its segments: a page
        # spanning several segments is written as several pieces, so the file is byte for byte
        # the one the block concatenated into one array would give, without that copy.
        pieces: list[Piece] = []
        rows = 0
        for values in seg:
            start = 0
            while start < len(values):
                take = min(len(values) - start, per_page - rows)
                pieces.append(values[start:start + take].reshape(-1).view(np.uint8))
                start, rows = start + take, rows + take
                if rows == per_page:
                    vec.page(rows * d, _vec_levels(pattern, rows, d), pieces)
                    pieces, rows = [], 0
        if rows:
            vec.page(rows * d, _vec_levels(pattern, rows, d), pieces)
    columns = [ids, reduce, pos, head, vec]

    chunks, offset = [], 4
    for col in columns:
        size = col.nbytes()
        meta = [(1, _I32, col.physical), (2, _LIST, (_I32, [_PLAIN, _RLE])), (3, _LIST, (_BINARY, col.path)),
                (4, _I32, 0), (5, _I64, col.n_values), (6, _I64, size), (7, _I64, size), (9, _I64, offset)]
        chunks.append([(2, _I64, offset), (3, _STRUCT, meta)])
        offset += size
    total = offset - 4
    string: list[tuple[int, int, object]] = [(10, _STRUCT, [(1, _STRUCT, [])])]  # LogicalType STRING
    schema = [
        [(4, _BINARY, "schema"), (5, _I32, 5)],
        [(1, _I32, _BYTE_ARRAY), (3, _I32, _OPTIONAL), (4, _BINARY, "prompt_id"), (6, _I32, _UTF8), *string],
        [(1, _I32, _BYTE_ARRAY), (3, _I32, _OPTIONAL), (4, _BINARY, "reduce"), (6, _I32, _UTF8), *string],
        [(1, _I32, _INT32), (3, _I32, _OPTIONAL), (4, _BINARY, "pos")],
        [(1, _I32, _INT32), (3, _I32, _OPTIONAL), (4, _BINARY, "head"), (6, _I32, _INT_16),
         (10, _STRUCT, [(10, _STRUCT, [(1, _BYTE, 16), (2, _TRUE, True)])])],  # LogicalType INTEGER(16, signed)
        [(3, _I32, _REQUIRED), (4, _BINARY, "vec"), (5, _I32, 1), (6, _I32, _LIST_CT),
         (10, _STRUCT, [(3, _STRUCT, [])])],  # LogicalType LIST
        [(3, _I32, _REPEATED), (4, _BINARY, "list"), (5, _I32, 1)],
        [(1, _I32, _FLOAT), (3, _I32, _REQUIRED), (4, _BINARY, "element")],
    ]
    row_group = [(1, _LIST, (_STRUCT, chunks)), (2, _I64, total), (3, _I64, n_rows),
                 (5, _I64, 4), (6, _I64, total), (7, _I16, 0)]
    footer = _struct([(1, _I32, 1), (2, _LIST, (_STRUCT, schema)), (3, _I64, n_rows),
                      (4, _LIST, (_STRUCT, [row_group])), (6, _BINARY, _CREATED_BY)])

    with open(path, "wb", buffering=0) as f:
        crc = _write_all(f, b"PAR1", 0)
        for col in columns:
            for piece in (p for page in col.pages for p in page):
                crc = _write_all(f, piece, crc)
        crc = _write_all(f, footer + len(footer).to_bytes(4, "little") + b"PAR1", crc)
    return n_rows, offset + len(footer) + 8, crc


def row_segments(vec: np.ndarray | list[np.ndarray] | tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """A block's vectors as a list of (rows, d) arrays: ``vec`` itself, or the consecutive row
    segments it was given as (e.g. each prompt's real tokens, views of the padded batch)."""
    return list(vec) if isinstance(vec, (list, tuple)) else [vec]


def _vec_levels(pattern: bytes, rows: int, d: int) -> bytes:
    rep = pattern * rows
    return len(rep).to_bytes(4, "little") + rep + _rle([(1, rows * d)])


def _write_all(f: BinaryIO, data: Piece, crc: int) -> int:
    """Write all of ``data``; returns the running CRC-32 updated with it."""
    view = memoryview(data).cast("B")  # type: ignore[arg-type]  # see Piece
    crc = zlib.crc32(view, crc)
    while view.nbytes:
        view = view[f.write(view):]
    return crc


def file_crc32(path: str | Path, chunk: int = 8 << 20) -> int:
    """CRC-32 of a whole file, read in chunks (``invoke check --deep``, exports)."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


# --- reading -------------------------------------------------------------------------------


def _level_runs(buf: Buf, i: int, end: int) -> Iterator[tuple[int, tuple[int, int] | np.ndarray]]:
    """Runs of a bit-width-1 RLE/bit-packed hybrid stream: (first byte, (value, count)) for an
    RLE run, (first byte, bits) for a bit-packed one."""
    while i < end:
        start = i
        head, i = _read_varint(buf, i)
        if head & 1:
            groups = head >> 1
            bits = np.unpackbits(np.frombuffer(buf, np.uint8, groups, i), bitorder="little")
            i += groups
            yield start, bits
        else:
            yield start, (buf[i], head >> 1)
            i += 1


def _all_ones(buf: Buf, i: int, end: int, n: int, max_runs: int = 4096) -> bool:
    """Whether the first n levels of a stream are all 1 (every list element present)."""
    seen = 0
    for k, (_, run) in enumerate(_level_runs(buf, i, end)):
        if k >= max_runs:
            return False
        if isinstance(run, tuple):
            value, count = run
            if value != 1:
                return False
            seen += count
        else:
            take = run[:n - seen]
            if not take.all():
                return False
            seen += len(take)
        if seen >= n:
            return True
    return False


def _rows_of(buf: Buf, i: int, end: int, n: int) -> int | None:
    """The list length d if the repetition levels describe n // d rows of exactly d values
    each (levels 0, 1, ..., 1 per row), else None.

    The first row's runs are decoded; they must end exactly where the second row's first run
    starts, and the whole stream must then be that byte pattern repeated once per row."""
    level, second = 0, None
    for start, run in _level_runs(buf, i, end):
        if isinstance(run, tuple):
            value, count = run
            if level == 0 and (value != 0 or count > 1):
                # a first run of several zeros is rows of one value: accept it whole, else give up
                return 1 if value == 0 and count == n and _levels(buf, i, end, n) is not None else None
            if level > 0 and value == 0:
                second = start
                break
            level += count
        else:
            zeros = np.flatnonzero(run == 0)
            if level == 0:
                if run[0] != 0:
                    return None
                zeros = zeros[1:]
            if len(zeros):
                if zeros[0] != 0:
                    return None  # the next row starts inside this run: not a layout checked here
                second = start
                break
            level += len(run)
    if second is None:  # one row: the levels must be exactly 0, 1, ..., 1
        flat = _levels(buf, i, end, n)
        return n if flat is not None and flat[0] == 0 and bool(flat[1:].all()) else None
    d = level
    if d <= 0 or n % d:
        return None
    rows = n // d
    pattern = np.frombuffer(buf, np.uint8, second - i, i)
    if len(pattern) * rows != end - i:
        return None
    stream = np.frombuffer(buf, np.uint8, end - i, i).reshape(rows, len(pattern))
    return d if bool((stream == pattern).all()) else None


def _levels(buf: Buf, i: int, end: int, n: int, max_runs: int = 64) -> np.ndarray | None:
    """All of a short level stream, decoded (None if it has more runs or fewer levels)."""
    parts: list[np.ndarray] = []
    for k, (_, run) in enumerate(_level_runs(buf, i, end)):
        if k >= max_runs:
            return None
        parts.append(np.full(run[1], run[0], np.uint8) if isinstance(run, tuple) else run)
    flat = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return flat[:n] if len(flat) >= n else None


def vector_pages(path: str | Path, metadata: pq.FileMetaData | None = None) -> list[np.ndarray] | None:
    """The ``vec`` column of a shard as zero-copy (rows, d) float32 views of the memory-mapped
    file, one per data page, in row order; None if the file is not in the layout checked here
    (the caller then decodes it with pyarrow)."""
    md = metadata or pq.read_metadata(path)
    arrow = md.schema.to_arrow_schema()
    field = arrow.field("vec") if "vec" in arrow.names else None
    if (field is None or field.nullable or not (pa.types.is_list(field.type) or pa.types.is_large_list(field.type))
            or field.type.value_field.nullable
            or field.type.value_type != pa.float32()):
        return None
    chunks = []
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        col = next((rg.column(j) for j in range(rg.num_columns) if rg.column(j).path_in_schema == "vec.list.element"),
                   None)
        if (col is None or col.compression != "UNCOMPRESSED" or col.has_dictionary_page
                or col.physical_type != "FLOAT"):
            return None
        chunks.append((col.data_page_offset, col.total_compressed_size, rg.num_rows))
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = memoryview(mapped)
    views: list[np.ndarray] = []
    width = None
    try:
        for offset, size, n_rows in chunks:
            got, i, end = 0, offset, offset + size
            while i < end:
                header, body = _read_struct(buf, i)
                page = header.get(5)
                if header.get(1) != _DATA_PAGE or page is None or header.get(2) != header.get(3):
                    return None
                n, page_end = page[1], body + header[3]
                if page.get(2) != _PLAIN or page.get(3) != _RLE or page.get(4) != _RLE:
                    return None
                rep_len = int.from_bytes(buf[body:body + 4], "little")
                rep = body + 4
                def_len = int.from_bytes(buf[rep + rep_len:rep + rep_len + 4], "little")
                defs = rep + rep_len + 4
                values = defs + def_len
                if page_end - values != 4 * n or page_end > end:
                    return None
                d = _rows_of(buf, rep, rep + rep_len, n)
                if d is None or (width is not None and d != width) or not _all_ones(buf, defs, values, n):
                    return None
                width = d
                views.append(np.frombuffer(mapped, "<f4", n, values).reshape(n // d, d))
                got += n // d
                i = page_end
            if got != n_rows:
                return None
    except (IndexError, ValueError):  # a truncated or malformed header: let pyarrow report it
        return None
    finally:
        buf.release()
    return views


__all__ = ["file_crc32", "row_segments", "vector_pages", "write_shard"]
