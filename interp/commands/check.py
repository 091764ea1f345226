"""`invoke check`: integrity check of a store (exit 1 when anything is wrong)."""

from __future__ import annotations

from invoke import Context, task
from invoke.exceptions import Exit

from interp.commands import DEFAULT_STORE, HELP_COMMON
from interp.commands.cli import CliTask, user_errors


@task(klass=CliTask, help={
    "store": HELP_COMMON["store"],
    "repair": "first finish or remove the .tmp shards an interrupted write left and migrate an older store "
              "(which removes result rows stored twice, keeping the first); never deletes other committed data",
    "deep": "also read every byte of every shard and compare it with the checksum recorded at commit",
    "quiet": "print only problems",
})
@user_errors
def check(c: Context, store: str = DEFAULT_STORE, repair: bool = False, deep: bool = False,
          quiet: bool = False) -> None:
    """Check a store: manifest vs shard files, row counts, duplicates, interrupted writes and runs."""
    from store import Store
    from store.check import check_store
    from store.check import repair as repair_store

    s = Store(store)
    if repair:
        done = repair_store(s)
        print(f"repair: {done['renamed']} committed shard(s) renamed, {done['deleted']} uncommitted removed")
        for note in done["notes"]:
            print(f"repair: {note}")
    report = check_store(s, deep=deep)
    if report.writer_pid is not None:
        print(f"note: process {report.writer_pid} is writing this store; its run in progress was not checked")
    for f in report.findings:
        if not quiet or not f.ok:
            print(f"{'ok ' if f.ok else 'BAD'}  {f.check:<11} {f.message}")
    if not report.ok:
        hint = " (`invoke check --repair` fixes the repairable ones)" if any(p.repairable for p in report.problems) else ""
        raise Exit(f"error: store {s.path} has {len(report.problems)} problem(s){hint}", code=1)
    print(f"store {s.path} is consistent")
