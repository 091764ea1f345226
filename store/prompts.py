"""The ``prompts`` table: shared by all runs, inserted idempotently."""

from __future__ import annotations

import duckdb
import pandas as pd

from store.db import StoreError
from store.rows import first_row

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
            "SELECT i.prompt_id, i.text <> p.text FROM incoming_prompts i JOIN prompts p USING (prompt_id) "
            "WHERE i.text <> p.text OR i.label <> p.label ORDER BY i.prompt_id LIMIT 1"
        ).fetchone()
        if clash:
            what = "text" if clash[1] else "label"
            raise StoreError(f"prompt '{clash[0]}' is already stored with a different {what} (an earlier run used "
                             "it): give changed prompts new ids, or use another --store")
        return first_row(con.execute(
            "INSERT INTO prompts SELECT * FROM incoming_prompts "
            "WHERE prompt_id NOT IN (SELECT prompt_id FROM prompts)"
        ))[0]
    finally:
        con.unregister("incoming_prompts")


def done_prompt_ids(con: duckdb.DuckDBPyConnection, run_id: int) -> set[str]:
    return {r[0] for r in con.execute("SELECT prompt_id FROM run_prompts WHERE run_id = ?", [run_id]).fetchall()}


def stored_prompts_match(con: duckdb.DuckDBPyConnection, run_id: int, prompts: list, whole: bool) -> bool:
    """Whether every prompt run ``run_id`` finished is among ``prompts`` with the same text and label
    (and, with ``whole``, the run finished exactly these prompts)."""
    stored = {r[0]: (r[1], r[2]) for r in con.execute(
        "SELECT p.prompt_id, p.text, p.label FROM run_prompts r JOIN prompts p USING (prompt_id) WHERE r.run_id = ?",
        [run_id]).fetchall()}
    given = {p.id: (p.text, p.label) for p in prompts}
    if whole and set(stored) != set(given):
        return False
    return all(given.get(pid) == value for pid, value in stored.items())
