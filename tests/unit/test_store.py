import duckdb
import numpy as np
import pandas as pd
import pytest

from interp.data.prompts import Prompt
from store import Store, StoreError
from store.activations import ActivationWriter, Block, layer_stack, read_vectors, recover
from store.db import SCHEMA_VERSION
from store.prompts import add_prompts, done_prompt_ids
from store.runs import latest_run, start_run
from store.sql import run_sql

MODEL = {"model": "m", "revision": "r", "dtype": "float32", "device": "cpu", "n_layers": 2, "d_model": 4}


def _run(store: Store) -> int:
    with store.connect() as con:
        return start_run(con, kind="cache", model=MODEL, backend="torch", config="{}", config_hash="h",
                         code_version="test").run_id


def _tokens(ids, n):
    return pd.DataFrame([(p, i, i, f"t{i}") for p in ids for i in range(n)],
                        columns=["prompt_id", "pos", "token_id", "token"])


def test_roundtrip_last_and_derived_from_all(store):
    run = _run(store)
    rng = np.random.default_rng(0)
    ids = ["p1", "p2"]
    full = {l: rng.standard_normal((2, 3, 4)).astype(np.float32) for l in range(2)}  # (prompt, pos, d)
    with ActivationWriter(store, run, durable=False) as w:
        blocks = [Block("resid_post", l, "all", [p for p in ids for _ in range(3)], full[l].reshape(6, 4),
                      np.tile(np.arange(3, dtype=np.int32), 2)) for l in range(2)]
        w.add([("p1", 3, 0), ("p2", 3, 0)], _tokens(ids, 3), blocks)
    with store.connect(read_only=True) as con:
        meta, X = read_vectors(con, store, run, "resid_post", [1], reduce="last")
        assert meta["prompt_id"].tolist() == ids
        np.testing.assert_array_equal(X, full[1][:, -1])
        meta, X = read_vectors(con, store, run, "resid_post", [0], reduce="mean")
        np.testing.assert_allclose(X, full[0].mean(1), rtol=1e-6)
        prompts, layers, S = layer_stack(con, store, run, "resid_post", "last")
        assert layers == [0, 1] and S.shape == (2, 2, 4)
        # the SQL view sees the same vectors without suite code
        got = con.execute("SELECT vec FROM activations WHERE run_id = ? AND layer = 1 AND prompt_id = 'p2' "
                          "ORDER BY pos", [run]).fetchnumpy()["vec"]
        np.testing.assert_array_equal(np.stack(got), full[1][1])
        assert con.execute("SELECT count(*) FROM tokens WHERE run_id = ?", [run]).fetchone()[0] == 6


def test_reader_equals_the_sql_view_over_many_shards(store):
    """read_vectors (pyarrow fast path) against a plain SQL query of the activations view:
    several commits per layer, unequal lengths, per-head rows, a prompt filter."""
    run = _run(store)
    rng = np.random.default_rng(1)
    lengths = {f"q{i:02d}": int(n) for i, n in enumerate(rng.integers(1, 5, 9))}
    ids = list(lengths)[::-1]  # written out of order on purpose
    with ActivationWriter(store, run, durable=False, flush_bytes=1) as w:  # one shard per add
        for chunk in (ids[:3], ids[3:7], ids[7:]):
            rows = [(p, t) for p in chunk for t in range(lengths[p])]
            blocks = []
            for l in range(2):
                blocks.append(Block("resid_post", l, "all", [p for p, _ in rows],
                                    rng.standard_normal((len(rows), 4)).astype(np.float32),
                                    np.array([t for _, t in rows], np.int32)))
                blocks.append(Block("z", l, "last", [p for p in chunk for _ in range(3)],
                                    rng.standard_normal((3 * len(chunk), 4)).astype(np.float32),
                                    np.array([lengths[p] - 1 for p in chunk for _ in range(3)], np.int32),
                                    np.tile(np.arange(3, dtype=np.int16), len(chunk))))
            w.add([(p, lengths[p], 0) for p in chunk], _tokens(chunk, 0), blocks)
    with store.connect(read_only=True) as con:
        def view(sql, params=()):
            return con.execute(sql, [run, *params]).fetchnumpy()["vec"]

        _, X = read_vectors(con, store, run, "resid_post", None, "all")
        ref = view("SELECT vec FROM activations WHERE run_id = ? AND hook = 'resid_post' ORDER BY layer, prompt_id, pos")
        np.testing.assert_array_equal(X, np.stack(ref))
        meta, X = read_vectors(con, store, run, "resid_post", [1], "last")
        ref = view("SELECT a.vec FROM activations a JOIN run_prompts r USING (run_id, prompt_id) WHERE a.run_id = ? "
                   "AND hook = 'resid_post' AND layer = 1 AND a.pos = r.n_tokens - 1 ORDER BY prompt_id")
        np.testing.assert_array_equal(X, np.stack(ref))
        assert meta["prompt_id"].tolist() == sorted(ids)
        _, X = read_vectors(con, store, run, "resid_post", [0], "mean")
        ref = con.execute("SELECT prompt_id, [avg(vec[1]), avg(vec[2]), avg(vec[3]), avg(vec[4])] FROM activations "
                          "WHERE run_id = ? AND hook = 'resid_post' AND layer = 0 GROUP BY prompt_id "
                          "ORDER BY prompt_id", [run]).fetchall()
        np.testing.assert_allclose(X, np.array([r[1] for r in ref]), rtol=1e-5, atol=1e-6)
        meta, X = read_vectors(con, store, run, "z", [1], "last", prompt_ids=["q03", "q07"])
        ref = view("SELECT vec FROM activations WHERE run_id = ? AND hook = 'z' AND layer = 1 "
                   "AND prompt_id IN ('q03', 'q07') ORDER BY prompt_id, head")
        np.testing.assert_array_equal(X, np.stack(ref))
        assert meta["head"].tolist() == [0, 1, 2, 0, 1, 2]


def test_interrupted_commit_is_finished_or_discarded(store):
    run = _run(store)
    with ActivationWriter(store, run, durable=False) as w:
        w.add([("a", 1, 0)], _tokens(["a"], 1),
              [Block("resid_post", 0, "last", ["a"], np.ones((1, 4), np.float32), np.array([0], np.int32))])
    shard = next(store.shard_dir.rglob("run_id=*/**/*.parquet"))
    # (1) committed but not renamed: recovery finishes the rename
    shard.rename(shard.with_name(shard.name + ".tmp"))
    # (2) written but never committed: recovery deletes it
    stray = shard.with_name("part-000099.parquet.tmp")
    stray.write_bytes(b"partial")
    assert recover(store) == {"renamed": 1, "deleted": 1}
    assert shard.exists() and not stray.exists()
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM activations").fetchone()[0] == 1


def test_duplicate_prompt_in_a_run_is_rejected_and_nothing_half_written(store):
    run = _run(store)
    block = Block("resid_post", 0, "last", ["a"], np.ones((1, 4), np.float32), np.array([0], np.int32))
    with ActivationWriter(store, run, durable=False) as w:
        w.add([("a", 1, 0)], _tokens(["a"], 1), [block])
    w = ActivationWriter(store, run, durable=False)
    w.add([("a", 1, 0)], _tokens(["a"], 1), [block])
    with pytest.raises(duckdb.ConstraintException):
        w.close()
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM shards").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM tokens").fetchone()[0] == 1
    assert recover(store)["deleted"] == 1  # the rejected commit's shard file is cleaned up


def test_prompts_are_idempotent_and_conflicts_refused(store):
    p = Prompt("x-1", "hello", "neutral", "interp", "neutral")
    with store.connect() as con:
        assert add_prompts(con, [p]) == 1
        assert add_prompts(con, [p]) == 0
        with pytest.raises(StoreError, match="different text"):
            add_prompts(con, [Prompt("x-1", "bye", "neutral", "interp", "neutral")])
        assert done_prompt_ids(con, 1) == set()


def test_user_sql_is_read_only_unless_asked(store):
    _run(store)
    assert run_sql(store, "SELECT count(*) AS n FROM runs")["n"][0] == 1
    with pytest.raises(StoreError, match="--write"):
        run_sql(store, "DELETE FROM runs")
    assert run_sql(store, "SELECT count(*) AS n FROM runs")["n"][0] == 1
    run_sql(store, "DELETE FROM runs", write=True)
    assert run_sql(store, "SELECT count(*) AS n FROM runs")["n"][0] == 0
    with pytest.raises(StoreError, match="SQL error"):
        run_sql(store, "SELECT nope FROM runs")


def test_bad_store_files(tmp_path):
    missing = Store(tmp_path / "none.duckdb")
    with pytest.raises(StoreError, match="invoke cache"):
        with missing.connect(read_only=True):
            pass
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a readable interp store"):
        with Store(junk).connect():
            pass
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).execute("CREATE TABLE t(x INT)").close()
    with pytest.raises(StoreError, match="not an interp store"):
        with Store(other).connect():
            pass


def test_newer_schema_is_refused(store):
    with store.connect() as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    for ro in (True, False):
        with pytest.raises(StoreError, match="upgrade interp"):
            with store.connect(read_only=ro):
                pass


def test_schema_scripts_run_again_only_when_they_change(store, monkeypatch):
    import store.db as db

    with store.connect() as con:
        con.execute("CREATE TABLE marker AS SELECT 1 AS x")
        digest = con.execute("SELECT value FROM meta WHERE key = 'schema_digest'").fetchone()[0]
    assert digest == db._schema_digest()
    ran = []
    real = db.schema_sql
    monkeypatch.setattr(db, "schema_sql", lambda: ran.append(1) or real())
    with store.connect():  # same scripts: only the digest is computed, none is executed
        pass
    assert len(ran) == 1
    monkeypatch.setattr(db, "schema_sql", lambda: [*real(), "CREATE TABLE IF NOT EXISTS added (y INT);"])
    with store.connect() as con:  # changed scripts: they run, and the new digest is kept
        assert con.execute("SELECT count(*) FROM added").fetchone()[0] == 0
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_digest'").fetchone()[0] != digest
        assert con.execute("SELECT x FROM marker").fetchone()[0] == 1


def test_store_of_another_model(store):
    _run(store)
    with store.connect(read_only=True) as con:
        with pytest.raises(StoreError, match="holds runs of m, not other"):
            latest_run(con, kind="cache", model="other")
        with pytest.raises(StoreError, match="different model"):
            latest_run(con, kind="cache", model="m", d_model=8, complete_only=False)


def test_second_writer_is_refused(store):
    with store.write_lock():
        with pytest.raises(StoreError, match="another process"):
            with store.write_lock():
                pass
