"""The by-product channel: what apply() yields is a list of things the sweep can save."""

import numpy as np
import pandas as pd
import pytest

from interp.interventions import byproducts
from interp.interventions.heal import HealLog
from store import Store
from store.layers import heal_adapters


def test_byproducts_are_normalised_and_saved_idempotently(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    log = HealLog(pd.DataFrame({"step": [1, 2], "loss": [3.0, 2.5], "seconds": [0.1, 0.2]}),
                  {"layers.0.mlp.up_proj.lora_A.default.weight": a})
    assert byproducts(None) == [] and byproducts(log) == [log] and byproducts((log, log)) == [log, log]
    with pytest.raises(TypeError, match="yielded a dict, which has no save"):
        byproducts({"step": 1})
    with Store(tmp_path / "b.duckdb").connect() as con:
        for _ in range(2):  # a resumed point saves again: one copy
            for product in byproducts(log):
                product.save(con, 4, "drop[1-2]+heal2")
        rows = con.execute("SELECT run_id, point, step, loss FROM layer_heal ORDER BY step").fetchall()
        adapters = heal_adapters(con, 4, "drop[1-2]+heal2")
        n_adapters = con.execute("SELECT count(*) FROM layer_heal_adapters").fetchone()[0]
    assert n_adapters == 1 and np.array_equal(adapters["layers.0.mlp.up_proj.lora_A.default.weight"], a)
    assert rows == [(4, "drop[1-2]+heal2", 1, 3.0), (4, "drop[1-2]+heal2", 2, 2.5)]
