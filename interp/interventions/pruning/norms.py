"""Where pruning looks up Wanda input norms before computing them again: an explicit input.

A spec stays a plain value; what applying it makes (the sparsity report, norms it computed) is
yielded as a by-product (``PruneReport``) and stored by the sweep. Finding norms computed earlier
is an input: whoever owns a sweep makes one norms source (``MemoryNorms``; the weights study's
``StoreNorms`` also looks in the store) and passes it to every apply,
``spec.apply(loaded, norms=source)``. With ``norms=None`` norms are computed on every apply.
No global or context variable holds a source between calls.
"""

from __future__ import annotations

from typing import Protocol

from interp.interventions.pruning.calibrate import Norms


class NormSource(Protocol):
    """Norms found by calibration identity, and told the norms an apply computed."""

    def get_norms(self, calib_id: str) -> Norms | None:
        """The norms with this identity, None when none are known (the apply computes them)."""

    def put_norms(self, calib_id: str, norms: Norms) -> None:
        """Norms an apply computed, for the applies after it that share this source."""


class MemoryNorms:
    """Keeps computed norms in memory (tests, notebooks, and the front of ``StoreNorms``)."""

    def __init__(self) -> None:
        self.norms: dict[str, Norms] = {}
        self.computed: list[str] = []
        """calib ids computed (not found) by the applies given this source, in order."""

    def get_norms(self, calib_id: str) -> Norms | None:
        return self.norms.get(calib_id)

    def put_norms(self, calib_id: str, norms: Norms) -> None:
        self.norms[calib_id] = norms
        self.computed.append(calib_id)
