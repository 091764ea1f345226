"""Fuzz every task with bad input of every class: exit status 2, one line on stderr, no traceback, and
the store left as it was (`invoke check` clean).

The cases are generated from the tasks themselves: every typed flag (CliTask.types) gets values
its spec refuses; every task with --store gets stores that are not ours or cannot be written;
--model gets broken model directories and devices this machine lacks; --prompts gets broken
prompt files. Validation happens before any model loads, so the tasks run in-process (invoke's
Program, as the `invoke` command runs them) and the whole file takes seconds, not minutes.
"""

from __future__ import annotations

import importlib.util
import inspect
import shutil
import sqlite3
from pathlib import Path

import pytest

from interp.commands.cli import CliTask
from interp.validate import Boolean, Choice, ListOf, Number, Optional, Text, Whole
from store import Store
from store.check import check_store

REPO = Path(__file__).resolve().parents[2]
SKIP = {"test"}  # runs pytest itself


def _tasks() -> dict:
    spec = importlib.util.spec_from_file_location("interp_tasks", REPO / "tasks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {t.name: t for t in (getattr(mod, n) for n in mod.__all__) if t.name not in SKIP}


TASKS = _tasks()


def _bad_values(spec) -> list[str]:
    """Values ``spec`` refuses, as a user would type them (text and budgets: none; their configs check them)."""
    from interp.commands.settings import FieldSpec
    from interp.studies.config_file import Counts, Pairs

    if isinstance(spec, FieldSpec):
        return _bad_values(spec.resolve())
    if isinstance(spec, (Text, Counts)):
        return []
    if isinstance(spec, Pairs):
        return ["attn", "attn=x"]
    if isinstance(spec, ListOf) and isinstance(spec.item, Pairs):
        return ["attn=0.2:mlp=0.6,attn", "attn=0.2,attn=2"]
    if isinstance(spec, Optional):
        return _bad_values(spec.inner)
    if isinstance(spec, Whole):
        return ["abc", "1.5", "1e3x"] + ([str(spec.min - 1)] if spec.min is not None else [])
    if isinstance(spec, Number):
        return ["abc", "nan"]
    if isinstance(spec, Boolean):
        return ["ture", "yse", "2"]
    if isinstance(spec, Choice):
        return [spec.choices[0][:-1] + "x", "none-of-these"]
    if isinstance(spec, ListOf):
        return [f"{good},{bad}" for good, bad in [("1", b) for b in _bad_values(spec.item)[:2]]]
    raise AssertionError(f"no bad values for {spec}")


def _required(task) -> list[str]:
    """Positional arguments a task needs to get as far as its flags."""
    params = inspect.signature(task.body).parameters
    return {"query": ["SELECT 1"], "out": ["{tmp}/export-out"]}.get(next(
        (p for p in params if p not in ("c",) and params[p].default is inspect.Parameter.empty), ""), [])


def _flag_cases() -> list[tuple[str, list[str], str]]:
    cases = []
    for name, task in sorted(TASKS.items()):
        assert isinstance(task, CliTask), f"task {name} does not validate its flags (klass=CliTask)"
        for flag, spec in sorted(task.types.items()):
            for value in _bad_values(spec):
                cases.append((name, [f"--{flag.replace('_', '-')}", value], f"--{flag.replace('_', '-')}"))
    return cases


def _has(task_name: str, flag: str) -> bool:
    return flag in inspect.signature(TASKS[task_name].body).parameters


STORE_CASES = ["sqlite", "directory", "under-a-file", "read-only", "missing"]
MODEL_CASES = ["truncated-weights", "no-tokenizer", "vocab-too-large", "no-such-dir", "cuda", "gpu", "float64"]
PROMPT_CASES = ["not-an-object", "list-as-text", "no-such-file", "unknown-set"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A good store to be left alone, and broken model directories and prompt files."""
    from interp.capture.capture import CaptureCfg, capture
    from interp.model.loading import wrap
    from tests.conftest import byte_tokenizer, tiny_llama

    root = tmp_path_factory.mktemp("fuzz")
    tiny = wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")
    good = root / "good-model"
    tiny.model.save_pretrained(good)
    tiny.tokenizer.save_pretrained(good)
    models = {}
    for case in MODEL_CASES[:3]:
        d = shutil.copytree(good, root / case)
        if case == "truncated-weights":
            w = d / "model.safetensors"
            w.write_bytes(w.read_bytes()[:1000])
        elif case == "no-tokenizer":
            for f in d.glob("tokenizer*"):
                f.unlink()
        else:
            tiny.tokenizer.add_tokens([f"<x{i}>" for i in range(5)])
            tiny.tokenizer.save_pretrained(d)
        models[case] = str(d)
    prompts = {"not-an-object": root / "obj.jsonl", "list-as-text": root / "list.jsonl"}
    prompts["not-an-object"].write_text('{"text": "fine"}\n[1, 2]\n')
    prompts["list-as-text"].write_text('{"text": ["a", "b"]}\n')
    victim = Store(root / "victim.duckdb")
    good_prompts = root / "good.jsonl"
    good_prompts.write_text('{"id": "g1", "text": "hello"}\n{"id": "g2", "text": "world"}\n')
    capture(wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0"), victim,
            CaptureCfg(prompts=str(good_prompts), hooks="resid_post:1", backend="torch", flush_mb=0), progress=False)
    sqlite_path = root / "other.duckdb"
    sqlite3.connect(sqlite_path).execute("CREATE TABLE t (x)").connection.commit()
    (root / "a-file").write_text("not a directory")
    return {"root": root, "models": models, "prompts": {k: str(v) for k, v in prompts.items()}, "victim": victim,
            "sqlite": sqlite_path, "good_model": str(good)}


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path, monkeypatch):
    """Run the tasks outside the repository: a case that got past validation must not leave files in it."""
    monkeypatch.chdir(tmp_path)


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    from invoke import Collection, Program

    ns = Collection()
    for t in TASKS.values():
        ns.add_task(t)
    try:
        Program(namespace=ns, binary="invoke").run(["invoke", *argv], exit=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def _refused_leaving_victim(world, capsys, argv: list[str]) -> str:
    """Run ``argv`` against the good store: refused in one line, the store untouched and clean."""
    victim = world["victim"]
    before = _snapshot(victim.path.parent)
    line = _assert_refused(*_run(argv, capsys), argv)
    assert _snapshot(victim.path.parent) == before and check_store(victim).ok
    return line


def _assert_refused(code: int, err: str, argv: list[str]) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, f"{argv}: traceback\n{err}"
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), f"{argv}: exit {code}, stderr:\n{err}"
    return lines[0]


@pytest.mark.parametrize("task,args,flag", _flag_cases(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_flag_values(world, capsys, task, args, flag):
    extra = [a.format(tmp=world["root"]) for a in _required(TASKS[task])]
    store = ["--store", str(world["victim"].path)] if _has(task, "store") else []
    model = ["--model", world["good_model"]] if _has(task, "model") else []
    line = _refused_leaving_victim(world, capsys, [task, *store, *model, *args, *extra])
    assert flag in line and args[1].split(",")[-1][:20] in line, line


def _store_case(case: str, world, monkeypatch) -> str:
    root = world["root"]
    if case == "sqlite":
        return str(world["sqlite"])
    if case == "directory":
        return str(root)
    if case == "under-a-file":
        return str(root / "a-file" / "s.duckdb")
    if case == "missing":
        return str(root / "missing" / "none.duckdb")
    ro = root / "ro-store"
    if not ro.exists():
        shutil.copytree(world["victim"].path.parent, ro)
    target = ro / "victim.duckdb"
    from tests.conftest import read_only_fs

    read_only_fs(monkeypatch, ro)
    return str(target)


STORE_TASKS = sorted(t for t in TASKS if _has(t, "store"))


@pytest.mark.parametrize("case", STORE_CASES)
@pytest.mark.parametrize("task", STORE_TASKS)
def test_bad_stores(world, capsys, monkeypatch, task, case):
    reading = task in ("check", "runs", "sql", "export", "export-model", "report")
    if case == "read-only" and reading:
        pytest.skip("reading a store on a read-only file system works (tested in tests/unit/test_bad_inputs.py)")
    if case == "missing" and not reading:
        pytest.skip("a writing task creates a missing store")
    store = _store_case(case, world, monkeypatch)
    before = _snapshot(world["root"])
    extra = [a.format(tmp=world["root"]) for a in _required(TASKS[task])]
    model = ["--model", world["good_model"]] if _has(task, "model") else []
    budget = ["--budget", "smoke"] if _has(task, "budget") else []
    argv = [task, "--store", store, *model, *budget, *extra]
    line = _assert_refused(*_run(argv, capsys), argv)
    assert any(k in line for k in ("not a readable interp store", "read-only file system", "no store at",
                                   "is a file, not a directory")), line
    monkeypatch.undo()
    assert _snapshot(world["root"]) == before
    assert check_store(world["victim"]).ok


MODEL_TASKS = sorted(t for t in TASKS if _has(t, "model"))


@pytest.mark.parametrize("case", MODEL_CASES)
@pytest.mark.parametrize("task", MODEL_TASKS)
def test_bad_models(world, capsys, task, case):
    model = {"no-such-dir": str(world["root"] / "nope"), "cuda": world["good_model"], "gpu": world["good_model"],
             "float64": world["good_model"]}.get(case) or world["models"][case]
    device = {"cuda": ["--device", "cuda"], "gpu": ["--device", "gpu"], "float64": ["--dtype", "float64"]}.get(case, [])
    if case == "cuda":
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    budget = ["--budget", "smoke"] if _has(task, "budget") else []
    _refused_leaving_victim(world, capsys, [task, "--store", str(world["victim"].path), "--model", model, *device,
                                            *budget])


PROMPT_TASKS = sorted(t for t in TASKS if _has(t, "prompts"))


@pytest.mark.parametrize("case", PROMPT_CASES)
@pytest.mark.parametrize("task", PROMPT_TASKS)
def test_bad_prompt_files(world, capsys, task, case):
    prompts = {"no-such-file": str(world["root"] / "nope.jsonl"), "unknown-set": "harmfull"}.get(case) \
        or world["prompts"][case]
    _refused_leaving_victim(world, capsys, [task, "--store", str(world["victim"].path), "--model", world["good_model"],
                                            "--prompts", prompts, *(["--budget", "smoke"] if _has(task, "budget") else [])])
