"""The by-product channel: what apply() yields is a list of things the sweep can save."""

import pandas as pd
import pytest

from interp.interventions import byproducts
from interp.interventions.layers import HealLog
from store import Store


def test_byproducts_are_normalised_and_saved_idempotently(tmp_path):
    log = HealLog(pd.DataFrame({"step": [1, 2], "loss": [3.0, 2.5], "seconds": [0.1, 0.2]}))
    assert byproducts(None) == [] and byproducts(log) == [log] and byproducts((log, log)) == [log, log]
    with pytest.raises(TypeError, match="yielded a dict, which has no save"):
        byproducts({"step": 1})
    with Store(tmp_path / "b.duckdb").connect() as con:
        for _ in range(2):  # a resumed point saves again: one copy
            for product in byproducts(log):
                product.save(con, 4, "drop[1-2]+heal2")
        rows = con.execute("SELECT run_id, point, step, loss FROM layer_heal ORDER BY step").fetchall()
    assert rows == [(4, "drop[1-2]+heal2", 1, 3.0), (4, "drop[1-2]+heal2", 2, 2.5)]
