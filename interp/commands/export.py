"""`invoke export`: the store as plain hive-partitioned Parquet for other engines."""

from __future__ import annotations

from invoke import Context, task

from interp.commands import DEFAULT_STORE, HELP_COMMON
from interp.commands.cli import CliTask, user_errors
from interp.validate import ListOf, Optional, Whole


@task(klass=CliTask, types={"run": Optional(ListOf(Whole(min=1)))}, help={
    "store": HELP_COMMON["store"],
    "out": "output directory or s3://bucket/prefix (must not hold an export yet)",
    "run": "only these run ids, comma-separated (default: all)",
    "hook": "only these hooks, comma-separated (default: all)",
    "tables": "also export the tables (runs, prompts, tokens, evals, study tables) to tables/*.parquet",
    "link": "hard-link shards instead of copying them (same file system; shards are never modified)",
})
@user_errors
def export(c: Context, out: str, store: str = DEFAULT_STORE, run: tuple[int, ...] | None = None,
           hook: str | None = None, tables: bool = True, link: bool = False) -> None:
    """Export activations as Parquet partitioned by run/hook/layer (plus the tables) for DuckDB, Polars, Spark."""
    from store import Store
    from store.export import export_store

    runs = list(run) if run else None
    hooks = [h.strip() for h in str(hook).split(",") if h.strip()] if hook else None
    n = export_store(Store(store), out, runs=runs, hooks=hooks, tables=tables, link=link)
    print(f"exported {n['shards']} shard(s), {n['rows']} vector row(s) and {n['tables']} table(s) to {out}")
    print(f"read it with e.g. pyarrow.dataset.dataset('{out}/activations', partitioning='hive') or "
          f"duckdb: SELECT * FROM read_parquet('{out}/activations/**/*.parquet', hive_partitioning = true)")
