"""store.tables: columns from the schema, inserting frames, replacing a key's rows in one transaction."""

import pandas as pd
import pytest

from store import Store, StoreError
from store.tables import columns, insert, replace_rows


@pytest.fixture()
def con(tmp_path):
    with Store(tmp_path / "t.duckdb").connect() as c:
        yield c


def _heal(steps, loss):
    return pd.DataFrame({"step": steps, "loss": loss, "seconds": [0.5] * len(steps)})


def test_columns_are_the_schema_scripts(con):
    assert columns(con, "layer_heal") == ["run_id", "point", "step", "loss", "seconds"]
    with pytest.raises(StoreError, match="no table 'nope'"):
        columns(con, "nope")


def test_replace_rows_replaces_only_its_key_and_writes_the_key(con):
    replace_rows(con, {"layer_heal": _heal([0, 1], [3.0, 2.0])}, run_id=1, point="a")
    replace_rows(con, {"layer_heal": _heal([0], [9.0])}, run_id=1, point="b")
    replace_rows(con, {"layer_heal": _heal([0, 5], [4.0, 1.0])}, run_id=1, point="a")  # twice: one copy
    rows = con.execute("SELECT point, step, loss FROM layer_heal ORDER BY ALL").fetchall()
    assert rows == [("a", 0, 4.0), ("a", 5, 1.0), ("b", 0, 9.0)]


def test_a_failing_table_leaves_every_table_as_it_was(con):
    replace_rows(con, {"layer_heal": _heal([0], [1.0])}, run_id=2, point="a")
    bad = pd.DataFrame({"step": [0]})  # heads_points needs kind, method, ...: NOT NULL
    with pytest.raises(StoreError, match=r"rows for heads_points lack columns \[.kind."):
        replace_rows(con, {"layer_heal": _heal([7], [7.0]), "heads_points": bad}, run_id=2, point="a")
    assert con.execute("SELECT step, loss FROM layer_heal").fetchall() == [(0, 1.0)]


def test_insert_ignores_extra_columns_and_nulls_missing_nullable_ones(con):
    df = _heal([0], [1.0]).assign(run_id=3, point="p", note="not a column")
    insert(con, "layer_heal", df)
    insert(con, "layer_heal", df.assign(loss=2.0), replace=True)  # by the primary key
    assert con.execute("SELECT run_id, point, step, loss FROM layer_heal").fetchall() == [(3, "p", 0, 2.0)]
