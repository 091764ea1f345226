"""`invoke sql` and `invoke runs`: ask the store directly."""

from __future__ import annotations

from invoke import task

from interp.commands import DEFAULT_STORE, HELP_COMMON
from interp.commands.cli import print_table, user_errors


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
