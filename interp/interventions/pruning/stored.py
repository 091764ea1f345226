"""Wanda norms looked up in the store before they are computed, so any run with the same
calibration identity reuses them. (Storing them, and each point's sparsity report, is the
yielded ``PruneReport``'s job: see interp/interventions/pruning/apply.py.)"""

from __future__ import annotations

import numpy as np
import torch

from interp.interventions.pruning.calibrate import Norms
from interp.interventions.pruning.norms import MemoryNorms
from store import Store
from store.weights import read_norms


class StoreNorms(MemoryNorms):
    """A norms source (``NormSource``) that looks in memory, then in ``store``."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.loaded_from_store: list[str] = []
        """calib ids found in the store (not in memory), in order."""

    def get_norms(self, calib_id: str) -> Norms | None:
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
