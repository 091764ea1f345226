"""Reliability of the store: integrity check, read-only SQL, schema versions, bad input."""

import json
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from interp.capture.capture import CaptureCfg, capture
from interp.data.prompts import PromptSetError
from store import Store, StoreError
from store import db as store_db
from store.activations import read_vectors
from store.check import check_store, repair
from store.runs import latest_run
from store.sql import run_sql

TEXTS = ["the cat sat on the mat", "hi", "a somewhat longer prompt about gardens and rivers",
         "numbers 1 2 3", "x", "what is the capital of France?"]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q{i}", "text": t}) for i, t in enumerate(TEXTS)))
    return str(path)


def _cfg(prompt_file, **kw):
    return CaptureCfg(prompts=prompt_file, hooks=kw.pop("hooks", "resid_post,z:1"),
                      positions=kw.pop("positions", "last,all"), backend="torch", batch_size=2, flush_mb=0, **kw)


def _problems(store):
    out: dict[str, str] = {}
    for f in check_store(store).problems:
        out[f.check] = (out[f.check] + " | " if f.check in out else "") + f.message
    return out


@pytest.fixture
def cached(tiny, store, prompt_file):
    run = capture(tiny, store, _cfg(prompt_file), progress=False)
    assert check_store(store).ok
    return store, run


# --- invoke check ------------------------------------------------------------------------


def _shards(store):
    return sorted(p for p in store.shard_dir.rglob("run_id=1/**/*.parquet"))


def test_check_finds_missing_truncated_and_stray_shards(cached):
    store, _ = cached
    a, b, c = _shards(store)[:3]
    a.unlink()
    b.write_bytes(b.read_bytes()[: b.stat().st_size // 2])
    shutil.copy(c, c.with_name("part-000777.parquet"))  # a copy outside the manifest: every row twice
    found = _problems(store)
    assert "1 shard(s) in the manifest are missing" in found["manifest"] and a.name in found["manifest"]
    assert f"1 shard(s) cannot be read: {b.relative_to(store.shard_dir)} unreadable" in found["manifest"]
    assert "part-000777.parquet" in found["unlisted"] and "move them out" in found["unlisted"]


def test_check_finds_lost_rows(cached):
    store, _run = cached
    with store.connect() as con:  # a finished prompt whose tokens vanished
        con.execute("DELETE FROM tokens WHERE prompt_id = 'q1'")
    assert "prompt q1: 0 token rows (0 distinct) for" in _problems(store)["tokens"]
    with store.connect() as con:  # vectors of a prompt the run never finished
        con.execute("DELETE FROM run_prompts WHERE prompt_id = 'q2'")
    found = _problems(store)["coverage"]
    assert "run 1 resid_post layer 0 (all): vectors for 6 prompt(s), the run finished 5; 1 unknown" in found
    shard = _shards(store)[0]
    rows = shard.read_bytes()
    shard.write_bytes(rows[:-8] + b"\0" * 8)  # a damaged footer: counts cannot be read
    assert "cannot be read" in _problems(store)["manifest"]


def test_check_duplicate_vectors(cached):
    store, _ = cached
    with store.connect() as con:
        part = con.execute("SELECT path FROM shards WHERE hook = 'resid_post' AND layer = 0 ORDER BY part LIMIT 1"
                           ).fetchone()[0]
        dup = part.replace("part-000000", "part-000500")
        shutil.copy(store.shard_dir / part, store.shard_dir / dup)
        n, size = con.execute("SELECT n_rows, n_bytes FROM shards WHERE path = ?", [part]).fetchone()
        con.execute("INSERT INTO shards (run_id, hook, layer, part, path, n_rows, n_bytes) "
                    "VALUES (1, 'resid_post', 0, 500, ?, ?, ?)", [dup, n, size])
    found = _problems(store)
    assert "stored more than once" in found["duplicates"] and "layer 0" in found["duplicates"]
    assert "coverage" not in found or "resid_post layer 0" in found["coverage"]


def test_check_interrupted_write_and_repair(cached):
    store, _ = cached
    shard = _shards(store)[0]
    committed_tmp = shard.with_name(shard.name + ".tmp")
    shard.rename(committed_tmp)                       # committed, not yet renamed
    stray = shard.with_name("part-000099.parquet.tmp")
    stray.write_bytes(b"half a shard")                # never committed
    with store.connect() as con:
        con.execute("UPDATE runs SET status = 'running'")
    found = _problems(store)
    assert "2 unfinished .tmp shard file(s)" in found["tmp"] and "--repair" in found["tmp"]
    assert "did not finish: re-run the same command" in found["runs"]
    assert "missing" in found["manifest"]
    assert repair(store) == {"renamed": 1, "deleted": 1, "notes": []}
    assert set(_problems(store)) == {"runs"}


def test_check_skips_the_run_a_live_writer_owns(cached):
    store, _ = cached
    with store.connect() as con:
        con.execute("UPDATE runs SET status = 'running'")
    (_shards(store)[0].parent / "part-000042.parquet.tmp").write_bytes(b"in flight")
    with store.write_lock():
        report = check_store(store)
        assert report.writer_pid == os.getpid() and report.ok
    assert {"tmp", "runs"} <= set(_problems(store))


def test_check_eval_duplicates_and_orphan_rows(cached):
    store, run = cached
    row = (run, "layers", "base", '{"kind": "base"}', "ppl", "perplexity", 10.0, 0.1, 100, None, "{}", 1.0)
    insert = ("INSERT INTO evals (run_id, study, point, intervention, task, metric, value, stderr, n, chance, "
              "dataset, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    with store.connect() as con:
        con.execute(insert, list(row))
        with pytest.raises(duckdb.ConstraintException):  # the key makes a second copy impossible
            con.execute(insert, list(row))
        con.execute(insert, [99, *row[1:]])
    found = _problems(store)
    assert "evals: 1 row(s)" in found["provenance"]
    # a store from before the key (schema 1) may hold copies: check finds them, --repair removes them
    with store.connect() as con:
        con.execute("CREATE TABLE evals_old AS SELECT * FROM evals")  # schema 1's evals: no key
        con.execute("DROP TABLE evals")
        con.execute("ALTER TABLE evals_old RENAME TO evals")
        con.execute("ALTER TABLE evals ALTER COLUMN created SET DEFAULT current_timestamp")
        con.execute(insert, list(row))
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="check --repair"):
        check_store(store)
    assert repair(store)["notes"] == ["schema 1 -> 2: removed duplicated rows: evals 1"]
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM evals WHERE run_id = ?", [run]).fetchone()[0] == 1
    assert "evals" not in _problems(store)


# --- invoke sql is read-only ------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "DELETE FROM runs",
    "DROP TABLE prompts",
    "INSERT INTO meta VALUES ('x', 'y')",
    "COPY runs TO '{tmp}/out.csv'",
    "COPY (SELECT 1 AS x) TO '{shard}'",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "SELECT 1; DROP TABLE runs",
    "EXPLAIN ANALYZE COPY runs TO '{tmp}/out.csv'",
    "CHECKPOINT",
])
def test_sql_cannot_modify_without_write(cached, tmp_path, sql):
    store, _ = cached
    shard = _shards(store)[0]
    before = (shard.read_bytes(), run_sql(store, "SELECT count(*) AS n FROM runs")["n"][0])
    with pytest.raises(StoreError, match="--write"):
        run_sql(store, sql.format(tmp=tmp_path, shard=shard))
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()
    assert (shard.read_bytes(), run_sql(store, "SELECT count(*) AS n FROM runs")["n"][0]) == before
    assert check_store(store).ok


def test_sql_reads_and_writes_with_write(cached, tmp_path):
    store, _ = cached
    assert run_sql(store, "EXPLAIN SELECT * FROM runs").shape[0] >= 1
    assert run_sql(store, "DESCRIBE runs").shape[0] > 5
    run_sql(store, f"COPY runs TO '{tmp_path}/out.csv'", write=True)
    assert (tmp_path / "out.csv").exists()


# --- schema versions ---------------------------------------------------------------------


def _old_store(path):
    """A hand-made store of schema version 0: meta plus an older, narrower runs table."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    con.execute("CREATE TABLE runs (run_id INTEGER PRIMARY KEY, model VARCHAR, config JSON)")
    con.execute("INSERT INTO runs VALUES (1, 'gpt2', '{}')")
    con.close()


def test_store_of_an_unmigratable_old_schema_is_refused(tmp_path):
    path = tmp_path / "old.duckdb"
    _old_store(path)
    for ro in (True, False):
        with pytest.raises(StoreError, match="schema version 0, older than this interp can migrate"):
            with Store(path).connect(read_only=ro):
                pass
    con = duckdb.connect(str(path), read_only=True)  # untouched
    assert con.execute("SELECT value FROM meta").fetchall() == [("0",)]
    assert [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()] == \
        ["meta", "runs"]
    con.close()


def test_older_schema_is_migrated_on_write_open_atomically(cached, monkeypatch):
    store, _ = cached
    monkeypatch.setattr(store_db, "SCHEMA_VERSION", 3)
    with pytest.raises(StoreError, match=r"schema version 2: run `invoke check --repair"):
        with store.connect(read_only=True):
            pass
    # a migration that fails half-way leaves version 2 and the old layout
    monkeypatch.setattr(store_db, "MIGRATIONS", {2: ["ALTER TABLE runs ADD COLUMN note VARCHAR",
                                                     "ALTER TABLE no_such_table ADD COLUMN x INT"]})
    with pytest.raises(duckdb.Error), store.connect():
        pass
    con = duckdb.connect(str(store.path), read_only=True)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    assert "note" not in [c[0] for c in con.execute("DESCRIBE runs").fetchall()]
    con.close()
    monkeypatch.setattr(store_db, "MIGRATIONS", {2: ["ALTER TABLE runs ADD COLUMN note VARCHAR"]})
    with store.connect() as con:
        assert "note" in [c[0] for c in con.execute("DESCRIBE runs").fetchall()]
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


# --- bad input ---------------------------------------------------------------------------


def test_truncated_store_file_is_refused_clearly(cached):
    store, _ = cached
    data = store.path.read_bytes()
    store.path.write_bytes(data[: len(data) // 3])
    for ro in (True, False):
        with pytest.raises(StoreError, match=r"store|interp store") as e:
            with store.connect(read_only=ro):
                pass
        assert "\n" not in str(e.value) and str(store.path) in str(e.value)


def test_store_of_another_model_is_refused(cached, tiny_gpt):
    store, _run = cached
    with store.connect(read_only=True) as con:
        with pytest.raises(StoreError, match="holds runs of tiny-llama, not tiny-gpt2: pass --model tiny-llama"):
            latest_run(con, kind="cache", model=tiny_gpt.name, d_model=tiny_gpt.d_model)
        with pytest.raises(StoreError, match="d_model 64 but the model has 32"):
            latest_run(con, kind="cache", model="tiny-llama", d_model=32)


def test_unknown_hook_and_layer_names(cached):
    store, run = cached
    with pytest.raises(ValueError, match="unknown hook 'resid_pots'; nearest valid names: resid_post"):
        CaptureCfg(hooks="resid_pots")
    with store.connect(read_only=True) as con:
        with pytest.raises(StoreError, match=r"no 'resid_pots' vectors.*stored: resid_post, z"):
            read_vectors(con, store, run, "resid_pots", None, "last")
        with pytest.raises(StoreError, match=r"layers \[7\].*stored layers: 0-3"):
            read_vectors(con, store, run, "resid_post", [7], "last")


def test_prompt_longer_than_the_context_is_truncated_and_recorded(tiny, store, tmp_path):
    long_text = " ".join(f"w{i}" for i in range(400))  # ~1900 byte tokens; context is 256
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"id": "long", "text": long_text}) + "\n" + json.dumps({"id": "short", "text": "hi"}))
    run = capture(tiny, store, _cfg(str(path), hooks="resid_post:2", positions="last"), progress=False)
    with store.connect(read_only=True) as con:
        n, cut = con.execute("SELECT n_tokens, truncated FROM run_prompts WHERE prompt_id = 'long'").fetchone()
        ids = [r[0] for r in con.execute("SELECT token_id FROM tokens WHERE prompt_id = 'long' ORDER BY pos")
               .fetchall()]
        meta, X = read_vectors(con, store, run, "resid_post", [2], "last")
    assert n == 256 and cut > 1000 and len(ids) == 256
    import torch
    with torch.no_grad():
        hs = tiny.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(X[meta["prompt_id"].tolist().index("long")], hs[3][0, -1].numpy(), rtol=1e-4,
                               atol=1e-5)
    assert check_store(store).ok


@pytest.mark.parametrize("content,message", [
    (b'{"text": "caf\xe9"}\n', "is not UTF-8 text"),
    (b"", "is empty"),
    (b"\n\n", "is empty"),
    (b'{"text": ""}\n', "empty 'text'"),
])
def test_bad_prompt_files_leave_no_trace(tiny, store, tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(PromptSetError, match=message) as e:
        capture(tiny, store, _cfg(str(path)), progress=False)
    assert "\n" not in str(e.value)
    assert not store.path.exists()  # refused before the store was touched


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_an_oserror_with_its_errno():
    import errno

    import store.activations as acts

    block = acts.Block("resid_post", 0, "last", ["a"], np.ones((1, 4), np.float32), np.array([0], np.int32))
    with pytest.raises(OSError) as e:
        acts.write_shard(Path("/dev/full"), [block])
    assert e.value.errno == errno.ENOSPC


def test_disk_full_mid_run_keeps_the_store_consistent_and_resumes(tiny, store, prompt_file, monkeypatch):
    import store.activations as acts

    real = acts.write_shard
    calls = {"n": 0}

    def full_disk(where, blocks):
        calls["n"] += 1
        if calls["n"] == 9:  # part 2 (each commit writes 5 shards): the disk fills up half-way
            with open(where, "wb") as f:
                f.write(b"PAR1 partial")
            raise OSError(28, "No space left on device")
        return real(where, blocks)

    monkeypatch.setattr(acts, "write_shard", full_disk)
    cfg = _cfg(prompt_file)
    with pytest.raises(StoreError, match="disk full while writing") as e:
        capture(tiny, store, cfg, progress=False)
    assert "free space" in str(e.value) and "\n" not in str(e.value)
    found = _problems(store)
    assert set(found) <= {"tmp", "runs"}  # nothing committed is damaged; the run is resumable
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM run_prompts").fetchone()[0] == 2  # part 1 kept
    monkeypatch.setattr(acts, "write_shard", real)
    run = capture(tiny, store, cfg, progress=False)
    assert check_store(store).ok
    clean = Store(store.path.with_name("clean.duckdb"))
    capture(tiny, clean, cfg, progress=False)
    for hook in ("resid_post", "z"):
        with store.connect(read_only=True) as con:
            meta, X = read_vectors(con, store, run, hook, None, "all")
        with clean.connect(read_only=True) as con:
            meta2, X2 = read_vectors(con, clean, 1, hook, None, "all")
        assert meta.equals(meta2)
        np.testing.assert_allclose(X, X2, rtol=1e-5, atol=1e-6)
