"""`invoke sql` cannot write or read other files: the statement check, DuckDB's sandbox, a child
process for the query; and the command line behaves like a Unix tool (pipes, NULLs)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from store import Store, StoreError
from store.check import check_store
from store.sql import run_sql

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("sql") / "s.duckdb")
    with s.connect() as con:
        con.execute("INSERT INTO runs (kind, model, revision, dtype, device, n_layers, d_model, config, config_hash, "
                    "code_version, status) VALUES ('cache', 'm', 'r', 'float32', 'cpu', 2, 8, '{}', 'h', 't', "
                    "'complete')")
    return s


@pytest.mark.parametrize("sql,match", [
    ("SELECT * FROM enable_logging(storage='file', storage_path='{tmp}/log.csv')", r"enable_logging\(\) is not allowed"),
    ("SELECT * FROM enable_profiling()", r"enable_profiling\(\) is not allowed"),
    ("SELECT * FROM checkpoint()", r"checkpoint\(\) is not allowed"),
    ("SELECT * FROM force_checkpoint()", r"force_checkpoint\(\) is not allowed"),
    ("SELECT (SELECT count(*) FROM enable_logging()) AS x FROM runs", r"enable_logging\(\) is not allowed"),
    ("SELECT * FROM query('COPY runs TO ''{tmp}/x.csv''')", r"query\(\) is not allowed"),
    ("/* hidden */ COPY runs TO '{tmp}/x.csv'", "COPY is not allowed"),
    ("-- comment\nCALL checkpoint()", "CALL is not allowed"),
    ("/* c */ EXPLAIN ANALYZE SELECT * FROM enable_profiling()", r"enable_profiling\(\) is not allowed"),
    ("PRAGMA enable_profiling", "PRAGMA is not allowed"),
    ("SET enable_external_access = true", "SET is not allowed"),
    ("SELECT count(*) AS n FROM read_csv('/etc/passwd')", "reads only this store"),
    ("SELECT * FROM read_text('{tmp}/secret.txt')", "reads only this store"),
    ("SELECT * FROM glob('/etc/*')", "reads only this store"),
    ("INSTALL httpfs", "is not allowed"),
])
def test_read_only_sql_touches_nothing_outside_the_store(store, tmp_path, sql, match):
    (tmp_path / "secret.txt").write_text("secret")
    before = {p.name: p.stat().st_mtime_ns for p in store.path.parent.iterdir()}
    with pytest.raises(StoreError, match=match) as e:
        run_sql(store, sql.format(tmp=tmp_path))
    assert "\n" not in str(e.value) and "--write" in str(e.value) or "reads only this store" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt"]  # nothing written, no log, no profile
    assert {p.name: p.stat().st_mtime_ns for p in store.path.parent.iterdir()} == before
    assert check_store(store).ok


@pytest.mark.parametrize("sql", ["/* c */ EXPLAIN ANALYZE SELECT 1", "-- c\nSELECT 1 AS one", "DESCRIBE runs",
                                 "SUMMARIZE runs", "SELECT count(*) FROM activations", "FROM runs",
                                 "WITH a AS (SELECT 1 AS x) SELECT * FROM a"])
def test_reading_statements_run(store, sql):
    assert len(run_sql(store, sql)) >= 1


def test_a_crash_ends_only_the_query_process(store, tmp_path, monkeypatch):
    """Were the deny-list to miss a function, DuckDB's sandbox refuses it, and the abort DuckDB then
    raises when the connection closes ends the child, not the caller."""
    import store.sql as sql_mod

    monkeypatch.setattr(sql_mod, "check_read_only", lambda sql, checker=None: None)  # a hole in the first line
    with pytest.raises(StoreError, match=r"crashed DuckDB \(SIGABRT\) in its own process") as e:
        run_sql(store, f"SELECT * FROM enable_logging(storage='file', storage_path='{tmp_path}/logs/log.csv'); "
                       "SELECT count(*) FROM runs")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "logs").exists()
    assert check_store(store).ok and run_sql(store, "SELECT 1 AS x")["x"][0] == 1  # this process carries on


def test_write_runs_anything_under_the_write_lock(store, tmp_path):
    run_sql(store, f"COPY (SELECT 1 AS x) TO '{tmp_path}/out.csv'", write=True)
    assert (tmp_path / "out.csv").read_text().split() == ["x", "1"]
    with store.write_lock():  # a cache run holds it: --write waits its turn by refusing now
        with pytest.raises(StoreError, match="being written by another process"):
            run_sql(store, "DELETE FROM runs WHERE false", write=True)


def _invoke(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True, env=env,
                          **kw)


def test_nulls_print_as_null_never_nan(store):
    q = "SELECT NULL::INTEGER AS i, NULL::DOUBLE AS d, 'nan'::DOUBLE AS n, NULL AS s, [1, NULL] AS l"
    table = _invoke("sql", "--store", str(store.path), q)
    assert table.returncode == 0, table.stderr
    cells = [c.strip() for c in table.stdout.splitlines()[3].strip("│").split("│")]
    assert cells == ["NULL", "NULL", "NaN", "NULL", "[1, NULL]"]
    csv = _invoke("sql", "--store", str(store.path), "--format", "csv", q)
    assert csv.stdout.splitlines()[1].startswith(",,nan,,")
    js = _invoke("sql", "--store", str(store.path), "--format", "json", "SELECT NULL::INTEGER AS i, 2 AS j")
    assert js.stdout.strip() == '[{"i":null,"j":2}]'


def test_a_closed_pipe_ends_quietly(store):
    for fmt in ("csv", "table"):
        proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "sql", "--store", str(store.path), "--format", fmt,
             "SELECT range AS i FROM range(200000)"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
        proc.stdout.readline()
        proc.stdout.close()  # `| head -1`
        err = proc.stderr.read().decode()
        proc.wait(timeout=60)
        assert "Traceback" not in err and "BrokenPipe" not in err and err.strip() == "", err
