"""Run identity includes content: an edited prompt file or re-saved weights make a new run; old
stores keep resuming; content digests are cached so a second load does not rehash."""

import json

import pytest
import torch

from interp.capture.capture import CaptureCfg, capture, run_config
from interp.data.prompts import load_prompts
from interp.model.loading import load_model
from interp.model.sites import parse_sites
from interp.provenance import canonical_json, config_hash
from store import Store, StoreError
from store.prompts import add_prompts
from store.runs import finish_run, start_run
from store.sql import run_sql


@pytest.fixture(scope="module")
def tiny_model():
    from interp.model.loading import wrap
    from tests.conftest import byte_tokenizer, tiny_llama

    return wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def _cfg(prompt_file):
    return CaptureCfg(prompts=prompt_file, hooks="resid_post:1", positions="last", backend="torch", flush_mb=0)


def test_an_edited_prompt_file_is_a_new_run(tiny_model, tmp_path):
    store = Store(tmp_path / "s.duckdb")
    path = tmp_path / "mine.jsonl"
    rows = [{"text": f"prompt number {i}"} for i in range(4)]
    first = capture(tiny_model, store, _cfg(_write(path, rows)), progress=False)
    # eight prompts added at the end (ids from line numbers: the first four keep theirs): a new run
    second = capture(tiny_model, store, _cfg(_write(path, rows + [{"text": f"new {i}"} for i in range(8)])),
                     progress=False)
    assert second != first
    counts = run_sql(store, "SELECT run_id, count(*) AS n FROM run_prompts GROUP BY ALL ORDER BY run_id")
    assert counts["n"].tolist() == [4, 12]
    # one text changed under the same id: refused with a one-line message, nothing stored
    rows[2] = {"text": "a different text"}
    with pytest.raises(StoreError, match="prompt 'mine-0003' is already stored with a different text") as e:
        capture(tiny_model, store, _cfg(_write(path, rows)), progress=False)
    assert "\n" not in str(e.value)
    assert run_sql(store, "SELECT count(*) AS n FROM runs")["n"][0] == 2
    assert run_sql(store, "SELECT text FROM prompts WHERE prompt_id = 'mine-0003'")["text"][0] == "prompt number 2"


def _legacy_run(store, loaded, cfg, complete: bool):
    """A cache run as the code before content hashes stored it (identity without prompts_sha256)."""
    prompts = load_prompts(cfg.prompts, cfg.limit, cfg.seed)
    legacy = run_config(loaded, cfg, parse_sites(cfg.hooks, loaded.n_layers))
    with store.connect() as con:
        run = start_run(con, kind="cache", model=loaded.describe(), backend=cfg.backend,
                        config=canonical_json(legacy), config_hash=config_hash(legacy), code_version="old")
        add_prompts(con, prompts)
        con.execute("INSERT INTO run_prompts (run_id, prompt_id, n_tokens, truncated) VALUES (?, ?, 1, 0)",
                    [run.run_id, prompts[0].id])
        if complete:
            for p in prompts[1:]:
                con.execute("INSERT INTO run_prompts (run_id, prompt_id, n_tokens, truncated) VALUES (?, ?, 1, 0)",
                            [run.run_id, p.id])
            finish_run(con, run.run_id)
        else:
            from store.runs import release
            release(con, run.run_id)  # the old process died
    return run.run_id


def test_runs_made_before_content_hashes_are_adopted_when_their_prompts_match(tiny_model, tmp_path):
    store = Store(tmp_path / "old.duckdb")
    path = _write(tmp_path / "p.jsonl", [{"id": f"p{i}", "text": f"text {i}"} for i in range(3)])
    old = _legacy_run(store, tiny_model, _cfg(path), complete=True)
    assert capture(tiny_model, store, _cfg(path), progress=False) == old  # complete: reused as is
    config = json.loads(run_sql(store, "SELECT config FROM runs")["config"][0])
    assert config["prompts_sha256"] and run_sql(store, "SELECT count(*) AS n FROM runs")["n"][0] == 1


def test_an_interrupted_old_run_resumes_and_a_mismatching_one_is_left_alone(tiny_model, tmp_path):
    store = Store(tmp_path / "old.duckdb")
    path = tmp_path / "p.jsonl"
    _write(path, [{"id": f"p{i}", "text": f"text {i}"} for i in range(3)])
    old = _legacy_run(store, tiny_model, _cfg(str(path)), complete=False)
    with store.connect() as con:  # the interrupted run's stored prompt is not what the file now says
        con.execute("UPDATE prompts SET text = 'edited since' WHERE prompt_id = 'p0'")
    with pytest.raises(StoreError, match="already stored with a different text"):
        capture(tiny_model, store, _cfg(str(path)), progress=False)  # not adopted: a new run, refused clearly
    with store.connect() as con:
        con.execute("UPDATE prompts SET text = 'text 0' WHERE prompt_id = 'p0'")
        con.execute("DELETE FROM runs WHERE run_id <> ?", [old])
    assert capture(tiny_model, store, _cfg(str(path)), progress=False) == old  # resumed
    assert run_sql(store, "SELECT count(*) AS n FROM run_prompts")["n"][0] == 3


def test_resaved_weights_of_the_same_size_are_another_model(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "model"
    tiny_model.model.save_pretrained(d)
    tiny_model.tokenizer.save_pretrained(d)
    first = load_model(str(d))
    store = Store(tmp_path / "w.duckdb")
    path = _write(tmp_path / "p.jsonl", [{"id": "a", "text": "hello there"}])
    run1 = capture(first, store, _cfg(path), progress=False)
    weights = d / "model.safetensors"
    size = weights.stat().st_size
    model = first.model
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(2.0)
    model.save_pretrained(d)
    assert weights.stat().st_size == size
    second = load_model(str(d))
    assert second.revision != first.revision and second.name == first.name
    run2 = capture(second, store, _cfg(path), progress=False)
    assert run2 != run1
    a = run_sql(store, f"SELECT vec FROM activations WHERE run_id = {run1}")["vec"][0]
    b = run_sql(store, f"SELECT vec FROM activations WHERE run_id = {run2}")["vec"][0]
    assert list(a) != list(b)  # the new weights' vectors, not the old ones under the same revision


def test_digests_are_cached_by_size_mtime_and_inode(tmp_path, monkeypatch):
    from interp.model import digest

    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "w.bin").write_bytes(b"\1" * 1000)
    calls = []
    real = digest.embedded.sha256_file
    monkeypatch.setattr(digest.embedded, "sha256_file", lambda p, *a: calls.append(p.name) or real(p, *a))
    first = digest.content_digest(d)
    assert sorted(calls) == ["config.json", "w.bin"]
    calls.clear()
    assert digest.content_digest(d) == first and calls == []  # nothing re-read
    (d / "w.bin").write_bytes(b"\2" * 1000)  # same size, new content
    changed = digest.content_digest(d)
    assert changed != first and calls == ["w.bin"]
    import hashlib
    expect = hashlib.sha256()
    for name in ("config.json", "w.bin"):
        expect.update(f"{name}:{hashlib.sha256((d / name).read_bytes()).hexdigest()}\n".encode())
    assert changed == expect.hexdigest()
