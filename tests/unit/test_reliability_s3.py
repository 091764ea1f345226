"""Shards on S3-compatible object storage (DuckDB httpfs), against a moto server on 127.0.0.1."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from interp.capture.capture import CaptureCfg, capture
from store import Store, StoreError
from store.activations import read_vectors
from store.check import check_store
from store.sql import run_sql

moto = pytest.importorskip("moto", reason="S3 tests need moto[server]: pip install -e '.[s3]'")
pytest.importorskip("duckdb_extension_httpfs", reason="S3 tests need duckdb-extension-httpfs: pip install -e '.[s3]'")
boto3 = pytest.importorskip("boto3")

TEXTS = ["the cat sat on the mat", "hi", "a longer prompt about gardens and rivers", "x", "numbers 1 2 3"]
BUCKET = "interp-test"


@pytest.fixture(scope="module")
def s3_server():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.skip("moto server did not start")
                time.sleep(0.05)
        client = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                              region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield url, client
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def s3(s3_server, monkeypatch, request):
    url, client = s3_server
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": url}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("INTERP_SHARDS", raising=False)
    prefix = f"stores/{request.node.name}"
    return f"s3://{BUCKET}/{prefix}", client, prefix


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q{i}", "text": t}) for i, t in enumerate(TEXTS)))
    return str(path)


def _cfg(prompt_file):
    return CaptureCfg(prompts=prompt_file, hooks="resid_post,z:1", positions="last,all", backend="torch",
                      batch_size=2, flush_mb=0)


def remote_rows(url):
    from store import remote

    return sorted(set(remote.read_table(url, ["prompt_id"]).column("prompt_id").to_pylist()))


def _keys(client, prefix):
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def test_cache_and_query_shards_on_s3(tiny, tmp_path, s3, prompt_file):
    root, client, prefix = s3
    remote = Store(tmp_path / "r.duckdb", shards=root)
    local = Store(tmp_path / "l.duckdb")
    run = capture(tiny, remote, _cfg(prompt_file), progress=False)
    capture(tiny, local, _cfg(prompt_file), progress=False)
    keys = _keys(client, prefix)
    assert f"{prefix}/run_id=1/hook=resid_post/layer=3/part-000002.parquet" in keys
    assert len([k for k in keys if k.startswith(f"{prefix}/run_id=1/")]) == 3 * 5  # 3 commits x 5 (hook, layer)
    assert not (tmp_path / "r.shards").exists() or not list((tmp_path / "r.shards").rglob("*.parquet"))
    for hook in ("resid_post", "z"):
        for reduce in ("last", "mean", "all"):
            with remote.connect(read_only=True) as con:
                meta, X = read_vectors(con, remote, run, hook, None, reduce)
            with local.connect(read_only=True) as con:
                meta2, X2 = read_vectors(con, local, 1, hook, None, reduce)
            assert meta.equals(meta2)
            np.testing.assert_array_equal(X, X2)
    q = "SELECT layer, reduce, count(*) AS n, sum(list_sum(vec)) AS s FROM activations GROUP BY ALL ORDER BY ALL"
    a, b = run_sql(remote, q), run_sql(local, q)
    assert a[["layer", "reduce", "n"]].equals(b[["layer", "reduce", "n"]])
    np.testing.assert_allclose(a["s"], b["s"], rtol=1e-5)
    assert check_store(remote).ok


def test_interrupted_commit_on_s3_is_invisible_and_overwritten(tiny, tmp_path, s3, prompt_file):
    root, client, prefix = s3
    store = Store(tmp_path / "r.duckdb", shards=root)
    run = capture(tiny, store, _cfg(prompt_file), progress=False)
    n = run_sql(store, "SELECT count(*) AS n FROM activations")["n"][0]
    # an object a killed writer uploaded but never committed: a copy of real rows
    src = f"{prefix}/run_id=1/hook=resid_post/layer=0/part-000000.parquet"
    stray = f"{prefix}/run_id=1/hook=resid_post/layer=0/part-000003.parquet"
    client.copy_object(Bucket=BUCKET, Key=stray, CopySource={"Bucket": BUCKET, "Key": src})
    assert run_sql(store, "SELECT count(*) AS n FROM activations")["n"][0] == n  # the view reads the manifest
    report = check_store(store)
    assert [f.check for f in report.problems] == ["unlisted"] and "part-000003" in report.problems[0].message
    # the same run with more prompts resumes at part 3 and overwrites the stray object
    more = tmp_path / "more.jsonl"
    more.write_text(Path(prompt_file).read_text() + "\n" + json.dumps({"id": "q9", "text": "one more"}))
    run2 = capture(tiny, store, CaptureCfg(**{**_cfg(prompt_file).__dict__, "prompts": str(more)}), progress=False)
    assert run2 != run
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT prompt_id) FROM run_prompts WHERE run_id = ?",
                           [run2]).fetchone() == (6, 6)
    # resume of run 1 itself: roll its last commit back as if the kill came before it, leaving the
    # uploaded objects behind; the rerun rewrites the same keys
    last = remote_rows(f"{root}/run_id=1/hook=resid_post/layer=0/part-000002.parquet")
    with store.connect() as con:
        con.execute("DELETE FROM shards WHERE run_id = 1 AND part = 2")
        for table in ("run_prompts", "tokens"):
            con.execute(f"DELETE FROM {table} WHERE run_id = 1 AND prompt_id IN (SELECT unnest(?))", [last])
        con.execute("UPDATE runs SET status = 'running' WHERE run_id = 1")
    assert run_sql(store, "SELECT count(*) AS n FROM activations WHERE run_id = 1")["n"][0] < n
    client.delete_object(Bucket=BUCKET, Key=stray)
    assert capture(tiny, store, _cfg(prompt_file), progress=False) == 1
    report = check_store(store)
    assert report.ok, report.problems
    assert run_sql(store, "SELECT count(*) AS n FROM activations WHERE run_id = 1")["n"][0] == n


def test_store_with_s3_shards_needs_its_location(tiny, tmp_path, s3, prompt_file, monkeypatch):
    root, _, _ = s3
    capture(tiny, Store(tmp_path / "r.duckdb", shards=root), _cfg(prompt_file), progress=False)
    with pytest.raises(StoreError, match=f"keeps its shards at {root}.*INTERP_SHARDS={root}"):
        with Store(tmp_path / "r.duckdb").connect(read_only=True):
            pass
    monkeypatch.setenv("INTERP_SHARDS", root)
    assert run_sql(Store(tmp_path / "r.duckdb"), "SELECT count(*) AS n FROM runs")["n"][0] == 1


def test_bad_endpoint_is_a_clear_error(tiny, tmp_path, s3, prompt_file, monkeypatch):
    root, _, _ = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises((StoreError, RuntimeError), match="object storage failed on s3://.*AWS_ENDPOINT_URL"):
        capture(tiny, Store(tmp_path / "r.duckdb", shards=root), _cfg(prompt_file), progress=False)
