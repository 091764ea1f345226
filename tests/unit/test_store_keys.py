"""Keys on every result table (docs/DESIGN.md): duplicates impossible, old stores de-duplicated by the
migration, writes idempotent."""

import duckdb
import pandas as pd
import pytest

from store import Store
from store.check import check_store, repair
from store.db import SCHEMA_VERSION
from store.evals import write_evals

NO_KEY = {"tokens"}  # guarded by run_prompts' key in the same transaction (see store/schema.sql)


def _without_keys(con, table: str) -> None:
    """The table as schema 1 had it: no key (DuckDB cannot drop a primary key: rebuild it)."""
    con.execute(f"CREATE TABLE {table}_old AS SELECT * FROM {table}")
    con.execute(f"DROP TABLE {table}")
    con.execute(f"ALTER TABLE {table}_old RENAME TO {table}")
    con.execute(f"ALTER TABLE {table} ALTER COLUMN created SET DEFAULT current_timestamp")


def _keyed_tables(con) -> set[str]:
    constrained = {r[0] for r in con.execute(
        "SELECT DISTINCT table_name FROM duckdb_constraints() WHERE constraint_type IN ('PRIMARY KEY', 'UNIQUE')")
        .fetchall()}
    indexed = {r[0] for r in con.execute("SELECT DISTINCT table_name FROM duckdb_indexes() WHERE is_unique")
               .fetchall()}
    return constrained | indexed


def test_every_table_has_a_key(tmp_path):
    from store.layers import NULLABLE_KEYS

    store = Store(tmp_path / "k.duckdb")
    with store.connect() as con:
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall()}
        missing = tables - _keyed_tables(con) - NO_KEY - set(NULLABLE_KEYS)
        indexed = {r[0] for r in con.execute("SELECT table_name FROM duckdb_indexes() WHERE is_unique").fetchall()}
    assert len(tables) > 25 and not missing, f"tables without a key on their natural key: {sorted(missing)}"
    # primary keys, not unique indexes: DuckDB 1.5.5 refuses a delete-then-insert of the same key
    # under a unique index once the store was reopened (every replace of a run's rows does that)
    assert not indexed, f"unique indexes instead of primary keys: {sorted(indexed)}"


def _eval_row(run_id, point="base", value=1.0, task="ppl", metric="perplexity"):
    return {"run_id": run_id, "study": "eval", "point": point, "intervention": '{"kind": "base"}', "task": task,
            "metric": metric, "value": value, "stderr": None, "n": 1, "chance": None, "dataset": "{}",
            "seconds": 0.0}


def test_writing_a_point_twice_keeps_one_copy(tmp_path):
    store = Store(tmp_path / "k.duckdb")
    with store.connect() as con:
        write_evals(con, [_eval_row(1, value=1.0), _eval_row(1, metric="nll", value=2.0)])
        write_evals(con, [_eval_row(1, value=3.0), _eval_row(1, metric="nll", value=4.0)])
        rows = con.execute("SELECT metric, value FROM evals ORDER BY metric").fetchall()
    assert rows == [("nll", 4.0), ("perplexity", 3.0)]


def test_null_key_columns_count_as_one_value(tmp_path):
    """layer_points' seed and layer_agreement's n are NULL for most rows: the writer and the check
    keep their natural key, NULL counted as one value."""
    from store import layers as db

    store = Store(tmp_path / "k.duckdb")
    row = {"strategy": "angular", "n": 2, "seed": None, "heal_steps": 0, "layers": [3, 4], "point": "drop[3-4]"}
    with store.connect() as con:
        with pytest.raises(Exception, match=r"rows for layer_points repeat the key .*'strategy': 'angular'"):
            db.replace_rows(con, 1, {"layer_points": pd.DataFrame([row, row])})
        db.replace_rows(con, 1, {"layer_points": pd.DataFrame([row, {**row, "strategy": "random", "seed": 7},
                                                                {**row, "strategy": "random", "seed": 8}])})
        db.replace_rows(con, 1, {"layer_points": pd.DataFrame([row])})  # replaced, not added
        assert con.execute("SELECT count(*) FROM layer_points").fetchone()[0] == 1
        con.execute("INSERT INTO runs (kind, model, revision, dtype, device, n_layers, d_model, config, config_hash, "
                    "code_version, status) VALUES ('layers', 'm', 'r', 'f', 'c', 1, 1, '{}', 'h', 't', 'complete')")
        con.execute("INSERT INTO layer_points VALUES (1, 'angular', 2, NULL, 0, [3, 4], 'drop[3-4]')")  # by hand
    assert [f.message for f in check_store(store).problems] == [
        "layer_points: 1 key(s) stored more than once: delete the extra copies with `invoke sql --write` or "
        "re-run the study into a new store"]


def _v1_store(path):
    """A store as schema 1 left it: no keys on evals / layer_points / layer_agreement, duplicates in them."""
    store = Store(path)
    with store.connect() as con:
        for kind in ("eval", "layers"):
            con.execute("INSERT INTO runs (kind, model, revision, dtype, device, n_layers, d_model, config, config_hash, "
                        "code_version, status) VALUES (?, 'm', 'r', 'float32', 'cpu', 2, 8, '{}', ?, 'test', 'complete')",
                        [kind, kind])
        _without_keys(con, "evals")
        rows = pd.DataFrame(  # noqa: F841 - read by name in the SQL (DuckDB replacement scan)
            [_eval_row(1, value=1.0), _eval_row(1, value=9.0), _eval_row(1, metric="nll"),
             _eval_row(2, value=5.0), _eval_row(2, value=5.0), _eval_row(2, value=5.0)])
        con.execute("INSERT INTO evals (run_id, study, point, intervention, task, metric, value, stderr, n, chance, "
                    "dataset, seconds) SELECT run_id, study, point, intervention, task, metric, value, stderr, n, "
                    "chance, dataset, seconds FROM rows")
        for _ in range(2):
            con.execute("INSERT INTO layer_points VALUES (1, 'single', 1, NULL, 0, [3], 'drop[3]')")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    return store


def test_migration_removes_duplicates_keeping_the_first_row(tmp_path):
    store = _v1_store(tmp_path / "old.duckdb")
    with store.connect() as con:  # a write-open migrates
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        rows = con.execute("SELECT run_id, metric, value FROM evals ORDER BY ALL").fetchall()
        assert rows == [(1, "nll", 1.0), (1, "perplexity", 1.0), (2, "perplexity", 5.0)]  # the first of each kept
        assert con.execute("SELECT count(*) FROM layer_points").fetchone()[0] == 1
        assert "evals" in _keyed_tables(con)
        con.execute("DELETE FROM evals WHERE run_id = 2")  # a replace after the migration (and a reopen) works
        con.execute("INSERT INTO evals (run_id, study, point, intervention, task, metric, value, dataset) "
                    "VALUES (2, 'eval', 'base', '{}', 'ppl', 'perplexity', 6.0, '{}')")
        with pytest.raises(duckdb.ConstraintException):
            con.execute("INSERT INTO evals (run_id, study, point, intervention, task, metric, dataset) "
                        "VALUES (1, 'eval', 'base', '{}', 'ppl', 'nll', '{}')")


def test_check_repair_migrates_an_old_store(tmp_path):
    store = _v1_store(tmp_path / "old.duckdb")
    with pytest.raises(Exception, match=r"schema version 1: run `invoke check --repair"):
        check_store(store)
    done = repair(store)
    assert done["notes"] == ["schema 1 -> 2: removed duplicated rows: evals 3, layer_points 1"]
    assert check_store(store).ok
    assert repair(store)["notes"] == []  # nothing left to do
