"""Where pruning looks up Wanda input norms before computing them again.

A spec stays a plain value with ``apply(loaded)``; what applying it makes (the sparsity report,
norms it computed) is yielded as a by-product (``PruneReport``) and stored by the sweep. Finding
norms computed earlier is an input, not a by-product: a study activates a store-backed lookup
around its sweep (``with using(session):``). Without one, norms are computed on every apply.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch


class PruneSession:
    """Default: finds nothing, remembers nothing."""

    def get_norms(self, calib_id: str) -> dict[tuple[int, str], torch.Tensor] | None:
        return None

    def put_norms(self, calib_id: str, norms: dict[tuple[int, str], torch.Tensor]) -> None:
        """Norms computed by an apply, for the applies after it in this session."""


class MemorySession(PruneSession):
    """Keeps computed norms in memory (tests, notebooks, and the front of the store session)."""

    def __init__(self) -> None:
        self.norms: dict[str, dict[tuple[int, str], torch.Tensor]] = {}
        self.computed: list[str] = []
        """calib ids computed (not found) in this session, in order."""

    def get_norms(self, calib_id):
        return self.norms.get(calib_id)

    def put_norms(self, calib_id, norms):
        self.norms[calib_id] = norms
        self.computed.append(calib_id)


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
