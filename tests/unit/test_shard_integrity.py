"""Shard integrity: a CRC-32 recorded at commit and verified by `check --deep`, size-checked reads with
one-line errors (never a crash), verified exports."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from interp.capture.capture import CaptureCfg, capture
from store import Store, StoreError
from store.activations import read_vectors
from store.check import check_store
from store.export import export_store
from store.scan import iter_parts

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model():
    from interp.model.loading import wrap
    from tests.conftest import byte_tokenizer, tiny_llama

    return wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")


@pytest.fixture(scope="module")
def template(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("template")
    path = root / "p.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q{i}", "text": f"some words {i} " * (i + 1)}) for i in range(6)))
    store = Store(root / "s.duckdb")
    capture(tiny_model, store, CaptureCfg(prompts=str(path), hooks="resid_post:0-1", positions="last", backend="torch",
                                          batch_size=3, flush_mb=0), progress=False)
    return store


@pytest.fixture
def cached(template, tmp_path):
    """A copy of the template store (a copied store reads its own shards)."""
    store = Store(tmp_path / "s.duckdb")
    shutil.copy(template.path, store.path)
    shutil.copytree(template.shard_dir, store.shard_dir)
    return store


def _shard(store, layer=1):
    with store.connect(read_only=True) as con:
        rel, crc, size = con.execute("SELECT path, crc32, n_bytes FROM shards WHERE layer = ? ORDER BY part LIMIT 1",
                                     [layer]).fetchone()
    return store.shard_dir / rel, crc, size


def test_checksums_are_those_of_the_files(cached):
    with cached.connect(read_only=True) as con:
        rows = con.execute("SELECT path, crc32 FROM shards").fetchall()
    assert len(rows) == 4
    for rel, crc in rows:
        assert crc == zlib.crc32((cached.shard_dir / rel).read_bytes())


def test_overwritten_bytes_of_the_same_size_are_found_by_a_deep_check(cached):
    path, _, size = _shard(cached)
    data = bytearray(path.read_bytes())
    data[size // 2: size // 2 + 16] = b"\xff" * 16  # inside the float values: still a readable file
    path.write_bytes(bytes(data))
    assert check_store(cached).ok  # sizes and footers are fine
    found = [f.message for f in check_store(cached, deep=True).problems]
    assert len(found) == 1 and "1 shard(s) are damaged" in found[0] and path.name in found[0]
    assert "recorded" in found[0]


def test_a_truncated_shard_is_a_one_line_error_naming_it(cached):
    path, _, size = _shard(cached)
    path.write_bytes(path.read_bytes()[: size // 2])
    with cached.connect(read_only=True) as con:
        with pytest.raises(StoreError, match=rf"shard {path} is damaged \({size // 2} bytes, the manifest says "
                                             rf"{size}\): run `invoke check --deep") as e:
            read_vectors(con, cached, 1, "resid_post", [1], "last")
        assert "\n" not in str(e.value)
        with pytest.raises(StoreError, match="is damaged"):
            list(iter_parts(con, cached, 1, [("resid_post", 0), ("resid_post", 1)]))


_READER = textwrap.dedent("""
    import sys
    from store import Store, StoreError
    from store.activations import read_vectors
    store = Store(sys.argv[1])
    try:
        with store.connect(read_only=True) as con:
            read_vectors(con, store, 1, "resid_post", [1], "last")
        print("read")
    except StoreError as e:
        print(e)
""")


def test_a_shard_replaced_by_a_shorter_file_never_crashes_the_reader(cached):
    """A file shorter than its manifest entry is refused before it is memory-mapped (a mapped file
    that is shorter than its pages raises SIGBUS); run in a child so a crash would not take pytest."""
    path, _, size = _shard(cached)
    other, _, _ = _shard(cached, layer=0)
    smaller = path.parent / "smaller.tmp"
    smaller.write_bytes(other.read_bytes()[: size - 10] if other.stat().st_size > size else b"PAR1" + b"\0" * 64)
    os.replace(smaller, path)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", _READER, str(cached.path)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"reader died ({r.returncode}): {r.stderr[-500:]}"
    assert r.stdout.startswith(f"shard {path} is damaged") and "invoke check" in r.stdout


def test_export_verifies_its_copies_and_refuses_the_shard_directory(cached, tmp_path, monkeypatch):
    with pytest.raises(StoreError, match="inside the store's own shard directory") as e:
        export_store(cached, cached.shard_dir / "export")
    assert "\n" not in str(e.value)
    assert check_store(cached).ok
    import store.export as export

    real = export.shutil.copyfile

    def flaky(src, dst):
        real(src, dst)
        with open(dst, "r+b") as f:  # one byte flipped on the way
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 1]))

    monkeypatch.setattr(export.shutil, "copyfile", flaky)
    with pytest.raises(StoreError, match=r"does not match its recorded checksum"):
        export_store(cached, tmp_path / "out")
    monkeypatch.setattr(export.shutil, "copyfile", real)
    n = export_store(cached, tmp_path / "out2")
    assert n["shards"] == 4 and n["rows"] == 12
    got = np.sort([zlib.crc32(p.read_bytes()) for p in (tmp_path / "out2" / "activations").rglob("*.parquet")])
    with cached.connect(read_only=True) as con:
        want = np.sort([r[0] for r in con.execute("SELECT crc32 FROM shards").fetchall()])
    assert (got == want).all()
