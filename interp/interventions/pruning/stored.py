"""A pruning session backed by the store: Wanda norms are looked up there before they are
computed (so any run with the same calibration identity reuses them) and every applied
spec's sparsity report becomes ``prune_points`` / ``prune_stats`` rows of the run."""

from __future__ import annotations

import numpy as np
import torch

from interp.interventions import to_json
from interp.interventions.pruning.session import MemorySession
from interp.interventions.pruning.targets import all_targets
from store import Store
from store.weights import read_norms, write_norms, write_prune_point


def total_params(loaded) -> int:
    """Weights in every prunable projection of the model (the denominator of 'pruned fraction')."""
    return sum(t.n_params for t in all_targets(loaded.model, loaded.arch))


def point_row(run_id: int, spec, report, total: int) -> dict:
    """The ``prune_points`` row of an applied spec (or of the base model: spec None, nothing pruned)."""
    tot = report.totals()
    frame = report.frame()
    target = float((frame["rate"] * frame["n_params"]).sum() / tot["n_params"]) if tot["n_params"] else 0.0
    if spec is None:
        return {"run_id": run_id, "point": "base", "intervention": '{"kind":"base"}', "method": "base",
                "calibration": None, "grp": "row", "structure": "unstructured", "modules": "all",
                "target_rate": 0.0, **tot, "total_params": total, "calib_id": None, "seconds": report.seconds}
    return {"run_id": run_id, "point": spec.label(), "intervention": to_json(spec), "method": spec.method,
            "calibration": spec.calibration, "grp": spec.group, "structure": spec.structure,
            "modules": ",".join(spec.modules), "target_rate": target, **tot, "total_params": total,
            "calib_id": report.calib_id, "seconds": report.seconds}


class StoreSession(MemorySession):
    def __init__(self, store: Store, run_id: int, loaded):
        super().__init__()
        self.store, self.run_id, self.loaded = store, run_id, loaded
        self.total = total_params(loaded)
        self.loaded_from_store: list[str] = []

    def get_norms(self, calib_id):
        if calib_id in self.norms:
            return self.norms[calib_id]
        with self.store.connect() as con:
            stored = read_norms(con, calib_id)
        if stored is None:
            return None
        norms = {k: torch.from_numpy(np.asarray(v)) for k, v in stored.items()}
        self.norms[calib_id] = norms
        self.loaded_from_store.append(calib_id)
        return norms

    def put_norms(self, calib_id, info, norms):
        super().put_norms(calib_id, info, norms)
        arrays = {k: v.detach().cpu().numpy() for k, v in norms.items()}
        with self.store.connect() as con:
            write_norms(con, calib_id=calib_id, run_id=self.run_id, model=self.loaded.name,
                        revision=self.loaded.revision, info=info, norms=arrays)

    def record(self, spec, report):
        super().record(spec, report)
        stats = report.frame().assign(run_id=self.run_id, point=spec.label())
        with self.store.connect() as con:
            write_prune_point(con, point_row(self.run_id, spec, report, self.total), stats)
