"""Where pruning keeps its by-products: Wanda input norms (looked up before computing them
again) and the sparsity report of every applied spec.

A spec stays a plain value with ``apply(loaded)``; the study makes these side channels
durable by activating a store-backed session around its sweep (``with using(session):``).
Without one, norms are computed on every apply and reports are only returned.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch


class PruneSession:
    """Default: remembers nothing."""

    def get_norms(self, calib_id: str) -> dict[tuple[int, str], torch.Tensor] | None:
        return None

    def put_norms(self, calib_id: str, info: dict, norms: dict[tuple[int, str], torch.Tensor]) -> None:
        """``info``: mode, spec JSON (sequential), dataset, n_tokens, seconds."""

    def record(self, spec, report) -> None:
        """Called with every applied spec's ``PruneReport`` before the model is used."""


class MemorySession(PruneSession):
    """Keeps norms and reports in memory (tests, notebooks, and the front of the store session)."""

    def __init__(self) -> None:
        self.norms: dict[str, dict[tuple[int, str], torch.Tensor]] = {}
        self.infos: dict[str, dict] = {}
        self.reports: dict[str, object] = {}
        self.computed: list[str] = []
        """calib ids computed (not found) in this session, in order."""

    def get_norms(self, calib_id):
        return self.norms.get(calib_id)

    def put_norms(self, calib_id, info, norms):
        self.norms[calib_id] = norms
        self.infos[calib_id] = info
        self.computed.append(calib_id)

    def record(self, spec, report):
        self.reports[spec.label()] = report


_NONE = PruneSession()
_current: contextvars.ContextVar[PruneSession | None] = contextvars.ContextVar("prune_session", default=None)


def current() -> PruneSession:
    """The active session (the do-nothing default outside ``using``)."""
    return _current.get() or _NONE


@contextlib.contextmanager
def using(session: PruneSession) -> Iterator[PruneSession]:
    token = _current.set(session)
    try:
        yield session
    finally:
        _current.reset(token)
