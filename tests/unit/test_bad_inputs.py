"""Bad input of every class is one line and leaves the store unchanged: model files, the environment
(devices, read-only and full disks, foreign files, readers that hold the store), prompt files, and
the validator every flag and file goes through."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import duckdb
import pytest
import torch

from interp.capture.capture import CaptureCfg, capture
from interp.data.prompts import PromptSetError, load_file
from interp.model.loading import load_model
from interp.validate import (
    Boolean,
    Choice,
    InvalidValue,
    ListOf,
    Number,
    Optional,
    Text,
    Whole,
    parse,
)
from store import Store, StoreError
from store.check import check_store
from store.sql import run_sql

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def tiny_model():
    from interp.model.loading import wrap
    from tests.conftest import byte_tokenizer, tiny_llama

    return wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model.model.save_pretrained(d)
    tiny_model.tokenizer.save_pretrained(d)
    return d


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# --- model files -------------------------------------------------------------------------


def test_truncated_weights(model_dir, tmp_path):
    d = _copy(model_dir, tmp_path / "m")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(RuntimeError, match=r"weights file .*model.safetensors is truncated or damaged") as e:
        load_model(str(d))
    assert "re-save or copy" in _one_line(e)


def test_missing_tokenizer(model_dir, tmp_path):
    d = _copy(model_dir, tmp_path / "m")
    for f in d.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(RuntimeError, match="has no tokenizer") as e:
        load_model(str(d))
    assert "sentencepiece" not in _one_line(e) and "save_pretrained" in str(e.value)


def test_tokenizer_larger_than_the_embedding(model_dir, tmp_path):
    from transformers import AutoTokenizer

    d = _copy(model_dir, tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(d)
    tok.add_tokens(["<extra_one>", "<extra_two>"])
    tok.save_pretrained(d)
    with pytest.raises(RuntimeError, match=r"has 261 tokens but the model's embedding has 259 rows") as e:
        load_model(str(d))
    _one_line(e)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device,match", [("cuda", "this machine has no CUDA device"),
                                          ("cuda:1", "this machine has no CUDA device"),
                                          ("gpu", "unknown device 'gpu'")])
def test_devices_this_machine_does_not_have(model_dir, device, match):
    with pytest.raises(RuntimeError, match=match) as e:
        load_model(str(model_dir), device=device)
    _one_line(e)


# --- the environment ---------------------------------------------------------------------


def test_a_sqlite_file_is_refused_before_duckdb_sees_it(tmp_path, monkeypatch):
    path = tmp_path / "other.duckdb"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: pytest.fail("DuckDB must not open it"))
    for ro in (True, False):
        with pytest.raises(StoreError, match=r"is not a readable interp store \(an SQLite database\)") as e:
            with Store(path).connect(read_only=ro):
                pass
        _one_line(e)


def test_a_read_only_file_system(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "text": "hello"}\n{"id": "b", "text": "there"}')
    cfg = CaptureCfg(prompts=str(path), hooks="resid_post:1", backend="torch", flush_mb=0)
    store = Store(tmp_path / "ro" / "s.duckdb")
    capture(tiny_model, store, cfg, progress=False)
    files = {p: p.stat().st_mtime_ns for p in store.path.parent.rglob("*")}
    from tests.conftest import read_only_fs

    read_only_fs(monkeypatch, store.path.parent)
    report = check_store(store)  # reading works: check, sql
    assert report.ok and run_sql(store, "SELECT count(*) AS n FROM run_prompts")["n"][0] == 2
    with pytest.raises(StoreError, match="is on a read-only file system") as e:
        capture(tiny_model, store, CaptureCfg(prompts=str(path), hooks="resid_post:0", backend="torch"),
                progress=False)
    assert "copy the store" in _one_line(e)
    monkeypatch.undo()
    assert {p: p.stat().st_mtime_ns for p in store.path.parent.rglob("*")} == files


_FULL = textwrap.dedent("""
    import resource, signal, sys
    from store import Store, StoreError
    from store.evals import write_evals
    store = Store(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    rows = [{"run_id": 1, "study": "eval", "point": f"p{i}", "intervention": "{}", "task": "ppl", "metric": "nll",
             "value": 1.0, "stderr": None, "n": 1, "chance": None, "dataset": '"' + "x" * 2000 + '"', "seconds": 0.0}
            for i in range(3000)]
    try:
        with store.connect() as con:
            write_evals(con, rows)
        print("stored")
    except StoreError as e:
        print(e)
""")


def test_a_full_disk_under_the_duckdb_file(tmp_path):
    store = Store(tmp_path / "full.duckdb")
    with store.connect() as con:
        con.execute("INSERT INTO runs (kind, model, revision, dtype, device, n_layers, d_model, config, config_hash, "
                    "code_version, status) VALUES ('eval', 'm', 'r', 'f', 'c', 1, 1, '{}', 'h', 't', 'complete')")
    limit = store.path.stat().st_size + 200_000
    r = subprocess.run([sys.executable, "-c", _FULL, str(store.path), str(limit)], capture_output=True, text=True,
                       env=ENV, timeout=120)
    out = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(out) == 1, r.stdout + r.stderr
    assert out[0].startswith("the store's disk is full (") and "rerun the same command" in out[0], out
    assert "cannot rollback" not in r.stdout + r.stderr
    assert check_store(store).ok
    assert run_sql(store, "SELECT count(*) AS n FROM evals")["n"][0] == 0


_READER = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
""")


def test_a_long_query_delays_a_cache_run_but_never_kills_it(tiny_model, tmp_path, monkeypatch, capsys):
    import store.db as db

    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q{i}", "text": f"text {i}"}) for i in range(4)))
    store = Store(tmp_path / "s.duckdb")
    with store.connect():
        pass
    monkeypatch.setattr(db, "WRITE_NOTE_S", 0.5)
    monkeypatch.setattr(db, "READ_WAIT_S", 0.2)  # (the old deadline that killed the writer was 30 s)
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(store.path), "3"], stdout=subprocess.PIPE, text=True,
                              env=ENV)
    try:
        assert reader.stdout.readline().strip() == "holding"
        run = capture(tiny_model, store, CaptureCfg(prompts=str(path), hooks="resid_post:1", backend="torch",
                                                    batch_size=2, flush_mb=0), progress=False)
    finally:
        reader.wait()
    assert f"for process {reader.pid} to close" in capsys.readouterr().err
    assert run == 1 and check_store(store).ok
    assert run_sql(store, "SELECT count(*) AS n FROM run_prompts")["n"][0] == 4


# --- prompt files ------------------------------------------------------------------------


@pytest.mark.parametrize("content,message", [
    ('{"text": "ok"}\n\n[1, 2]\n', r"line 3 is a JSON list, not an object"),
    ('{"text": "ok"}\n"just a string"\n', r"line 2 is a JSON str, not an object"),
    ('\n\n{"text": ["a", "list"]}\n', r"line 3: 'text' takes text, not list \['a', 'list'\]"),
    ('{"text": 42}\n', r"line 1: 'text' takes text, not int 42"),
    ('{"text": "a", "label": {"x": 1}}\n', r"line 1: 'label' takes text, not dict"),
    ('{"text": "a", "id": [1]}\n', r"line 1: 'id' takes text, not list"),
    ('{"text": "a", "id": "x"}\n\n{"text": "b", "id": "x"}\n', r"line 3: id 'x' is already used on line 1"),
    ('{"text": "a"}\n{"text": "b"\n', r"line 2 is not valid JSON Lines"),
    ('{"text": "a"}\n\n\n{"text": "  "}\n', r"line 4 has an empty 'text'"),
])
def test_bad_prompt_lines_name_their_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(PromptSetError, match=message) as e:
        load_file(path)
    assert _one_line(e).startswith(str(path))


def test_bad_csv_rows_name_their_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('text,label\nhello,a\n\n"x, y",b,extra\n')
    with pytest.raises(PromptSetError, match=r"line 4 has more values than the header"):
        load_file(path)
    path.write_text("text,label\nhello,a\n\n\nworld,b\n")
    assert [(p.id, p.text, p.label) for p in load_file(path)] == [("bad-0001", "hello", "a"), ("bad-0002", "world", "b")]


def test_a_good_file_with_numeric_ids(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"id": 7, "text": " seven ", "label": "x", "category": "c"}\n\n{"text": "eight"}\n')
    assert [(p.id, p.text, p.label, p.category) for p in load_file(path)] == [
        ("7", "seven", "x", "c"), ("ok-0002", "eight", "unlabelled", None)]


# --- the validator -----------------------------------------------------------------------


@pytest.mark.parametrize("value,spec,expect", [
    ("8", Whole(min=1), 8), (8, Whole(), 8), (8.0, Whole(), 8), (" -3 ", Whole(), -3),
    ("0.25", Number(min=0, max=1), 0.25), ("1e-3", Number(), 0.001),
    ("TRUE", Boolean(), True), ("off", Boolean(), False), (False, Boolean(), False),
    ("csv", Choice(("table", "csv")), "csv"), ("1, 2,3", ListOf(Whole()), (1, 2, 3)),
    ("-2,-1.5", ListOf(Number()), (-2.0, -1.5)), ("none", Optional(Whole()), None), (None, Optional(Boolean()), None),
    ("text", Text(), "text"),
])
def test_validator_accepts(value, spec, expect):
    assert parse(value, spec, "--x") == expect


@pytest.mark.parametrize("value,spec,message", [
    ("abc", Whole(), "--x takes a whole number, not 'abc'"),
    ("8.5", Whole(), "--x takes a whole number, not '8.5'"),
    (True, Whole(), "--x takes a whole number, not True"),
    ("0", Whole(min=1), "--x takes a whole number of at least 1, not '0'"),
    ("11", Whole(min=1, max=10), "--x takes a whole number from 1 to 10, not '11'"),
    ("nan", Number(), "--x takes a number, not 'nan'"),
    ("2", Number(min=0, max=1), "--x takes a number of at least 0 and at most 1, not '2'"),
    ("ture", Boolean(), "--x takes true or false, not 'ture' (did you mean true?)"),
    ("maybe", Boolean(), "--x takes true or false, not 'maybe'"),
    ("flaot32", Choice(("float32", "float16", "bfloat16")),
     "--x takes one of float32, float16, bfloat16, not 'flaot32' (did you mean float32?)"),
    ("1,x", ListOf(Whole()), "--x (item 2) takes a whole number, not 'x'"),
    ("", ListOf(Whole()), "--x needs at least 1 value(s), got ''"),
    (["a"], Text(), "--x takes text, not list ['a']"),
])
def test_validator_refuses_in_one_line(value, spec, message):
    with pytest.raises(InvalidValue) as e:
        parse(value, spec, "--x")
    assert str(e.value) == message


def test_validator_is_thread_safe_and_pure():
    """Specs are frozen values: one spec parses in several threads at once."""
    spec, out = ListOf(Whole(min=0)), []
    threads = [threading.Thread(target=lambda i=i: out.append(parse(f"{i},{i + 1}", spec, "--x"))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == [(i, i + 1) for i in range(8)]
