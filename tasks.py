"""interp tasks. Every task takes --model (default: the embedded SmolLM2-135M-Instruct) and
--store (default: interp.duckdb in the working directory). `invoke --list` shows them all;
`invoke --help TASK` shows one task's flags."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

from invoke import Task, task

from interp.cli import opt_bool, opt_int, print_table, user_errors

from interp.commands import DEFAULT_MODEL, DEFAULT_STORE, HELP_COMMON


@task(help={
    **HELP_COMMON,
    "prompts": "prompt sets or files, comma-separated: harmful, harmbench, donotanswer, toxic, neutral, "
               "stereotypes, path.jsonl/.csv",
    "hooks": "resid_pre, resid_post, attn_out, mlp_out, z (optionally name:layer or name:lo-hi), comma-separated",
    "positions": "last, mean and/or all (every token), comma-separated",
    "backend": "nnsight (default), tl (TransformerLens TransformerBridge: the same vectors, slower), "
               "or torch (plain hooks)",
    "batch_size": "prompts per forward pass (does not change results)",
    "limit": "at most this many prompts per set (fixed seeded subset)",
    "chat": "wrap prompts in the chat template: true/false (default: when the model has one)",
    "dtype": "float32 (default), bfloat16 or float16",
    "device": "cpu, cuda, cuda:1, ...",
    "device_map": "accelerate device map, e.g. auto, for models larger than one device",
    "revision": "hub branch/tag/commit",
    "flush_mb": "commit to the store every N MB of vectors (smaller: finer-grained resume)",
})
@user_errors
def cache(c, model=DEFAULT_MODEL, store=DEFAULT_STORE, prompts="harmful,neutral", hooks="resid_post",
          positions="last", backend="nnsight", batch_size=8, limit=None, chat=None, dtype="float32",
          device="cpu", device_map=None, revision=None, flush_mb=128):
    """Run prompts through the model and store activations (resumes an interrupted run)."""
    from interp.capture import CaptureCfg, capture
    from interp.models import ModelCfg, load_model
    from store import Store

    cfg = CaptureCfg(prompts=prompts, hooks=hooks, positions=positions, backend=backend,
                     batch_size=int(batch_size), limit=opt_int(limit), chat=opt_bool(chat),
                     flush_mb=int(flush_mb))
    loaded = load_model(ModelCfg(model, revision=revision, dtype=dtype, device=device, device_map=device_map))
    run_id = capture(loaded, Store(store), cfg)
    print(f"run {run_id}: cached into {Store(store).path}")


@task(help={"store": HELP_COMMON["store"], "write": "allow statements that modify the store",
            "format": "table (default), csv or json"})
@user_errors
def sql(c, query, store=DEFAULT_STORE, write=False, format="table"):
    """Run SQL on the store (read-only unless --write) and print the result."""
    from store import Store
    from store.sql import run_sql

    df = run_sql(Store(store), query, write=write)
    if df.empty and not len(df.columns):
        print("ok")
    else:
        print_table(df, fmt=format)


@task(help={"store": HELP_COMMON["store"]})
@user_errors
def runs(c, store=DEFAULT_STORE):
    """List the runs in the store with their provenance."""
    from store import Store
    from store.runs import list_runs

    with Store(store).connect(read_only=True) as con:
        df = list_runs(con)
    if df.empty:
        print(f"no runs in {Store(store).path} yet: `invoke cache` makes one")
    else:
        print_table(df, title=f"runs in {Store(store).path}")


@task(help={"quick": "unit tests only (tiny models, no embedded model)", "k": "pytest -k expression"})
def test(c, quick=False, k=None):
    """Run the test suite (what CI runs)."""
    args = [sys.executable, "-m", "pytest", "-q"]
    if quick:
        args += ["-m", "not integration"]
    if k:
        args += ["-k", k]
    c.run(" ".join(args), pty=False, env={"PYTHONUNBUFFERED": "1", **os.environ})


def _load_study_commands() -> None:
    """Expose every Task defined in interp/commands/*.py as a top-level task."""
    import interp.commands as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"interp.commands.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, Task):
                globals()[name] = obj


_load_study_commands()
