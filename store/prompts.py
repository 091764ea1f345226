"""The ``prompts`` table: shared by all runs, inserted idempotently."""

from __future__ import annotations

import duckdb
import pandas as pd

from store.db import StoreError

COLUMNS = ["prompt_id", "dataset", "source", "label", "category", "text"]


def add_prompts(con: duckdb.DuckDBPyConnection, prompts: list) -> int:
    """Insert prompts not yet stored; an id stored with a different text is an error.

    ``prompts`` are objects with id, dataset, source, label, category and text.
    Returns how many were new.
    """
    if not prompts:
        return 0
    df = pd.DataFrame([(p.id, p.dataset, p.source, p.label, p.category, p.text) for p in prompts],
                      columns=COLUMNS)
    con.register("incoming_prompts", df)
    try:
        clash = con.execute(
            "SELECT i.prompt_id FROM incoming_prompts i JOIN prompts p USING (prompt_id) "
            "WHERE i.text <> p.text LIMIT 1"
        ).fetchone()
        if clash:
            raise StoreError(f"prompt '{clash[0]}' is already stored with a different text: "
                             "give your prompts their own ids")
        return con.execute(
            "INSERT INTO prompts SELECT * FROM incoming_prompts "
            "WHERE prompt_id NOT IN (SELECT prompt_id FROM prompts)"
        ).fetchone()[0]
    finally:
        con.unregister("incoming_prompts")


def done_prompt_ids(con: duckdb.DuckDBPyConnection, run_id: int) -> set[str]:
    return {r[0] for r in con.execute("SELECT prompt_id FROM run_prompts WHERE run_id = ?", [run_id]).fetchall()}
