"""`invoke sql` and `invoke runs`: ask the store directly."""

from __future__ import annotations

from invoke import Context, task

from interp.commands import DEFAULT_STORE, HELP_COMMON
from interp.commands.cli import FORMATS, CliTask, print_table, user_errors


@task(klass=CliTask, types={"format": FORMATS},
      help={"store": HELP_COMMON["store"],
            "write": "run any SQL on a writable connection (no statement check, no file sandbox; under the "
                     "store's write lock): tables can be changed or dropped, COPY may write any file",
            "format": "table (default; NULL shown as NULL), csv (NULL empty) or json (NULL null)"})
@user_errors
def sql(c: Context, query: str, store: str = DEFAULT_STORE, write: bool = False, format: str = "table") -> None:
    """Run SQL on the store (read-only unless --write) and print the result."""
    import pandas as pd

    from store import Store
    from store.sql import query_table

    table = query_table(Store(store), query, write=write)
    if table is None:
        print("ok")
    else:  # Arrow-backed columns: a SQL NULL stays NULL (pd.NA), apart from a float NaN
        print_table(table.to_pandas(types_mapper=pd.ArrowDtype), fmt=format)


@task(klass=CliTask, help={"store": HELP_COMMON["store"]})
@user_errors
def runs(c: Context, store: str = DEFAULT_STORE) -> None:
    """List the runs in the store with their provenance."""
    from store import Store
    from store.runs import list_runs

    with Store(store).connect(read_only=True) as con:
        df = list_runs(con)
    if df.empty:
        print(f"no runs in {Store(store).path} yet: `invoke cache` makes one")
    else:
        print_table(df, title=f"runs in {Store(store).path}")
