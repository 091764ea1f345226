"""Exclusive claims on a store: one ``flock`` mechanism for the shard writer and for runs.

A claim is an exclusive ``flock`` on a small file holding the owner's pid. The kernel drops it
when the owner exits, SIGKILL included, so a crashed run never leaves a stale claim behind.
Claims held by this process are remembered here: claiming the same file again from the same
process returns the one already held (``flock`` on a second descriptor would conflict with it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path
from typing import TextIO

from store.errors import StoreError

_HELD: dict[str, TextIO] = {}
_GUARD = threading.Lock()

READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def read_only_message(path: Path, e: OSError) -> str:
    why = "a read-only file system" if e.errno == errno.EROFS else "a location this user cannot write"
    return (f"store {path} is on {why} ({os.strerror(e.errno or 0)}): reading tasks (sql, check, report, "
            "runs) work; copy the store with its .shards directory somewhere writable to add to it")


def claim_path(store_path: Path, run_id: int) -> Path:
    """The lock file a process holds while it computes run ``run_id`` of the store at ``store_path``."""
    return store_path.with_name(store_path.name + ".claims") / f"run-{run_id}.lock"


def _open_lock_file(path: Path, store_path: Path) -> TextIO:
    """``path`` opened for appending (created if needed, never modified); a one-line StoreError
    when the store's location cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+")
    except OSError as e:
        if e.errno in READ_ONLY_ERRNOS:
            raise StoreError(read_only_message(store_path, e)) from None
        blocker = next((p for p in path.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise StoreError(f"cannot use the store {store_path}: {blocker} is a file, not a directory") from None
        raise StoreError(f"cannot create the lock file {path}: {e.strerror}") from None


def check_writable(path: Path, store_path: Path) -> None:
    """Fail now, in one line, if the lock file ``path`` could not be created or opened for writing."""
    _open_lock_file(path, store_path).close()


def try_lock(path: Path, store_path: Path) -> object | None:
    """Take the exclusive lock on ``path`` (created if needed); None if another process holds it."""
    key = str(path)
    with _GUARD:
        if key in _HELD:
            return _HELD[key]
        fh = _open_lock_file(path, store_path)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        _HELD[key] = fh
        return fh


def release(path: Path) -> None:
    """Drop this process's lock on ``path`` (nothing if it holds none)."""
    with _GUARD:
        fh = _HELD.pop(str(path), None)
    if fh is not None:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def holds(path: Path) -> bool:
    return str(path) in _HELD


def holder(path: Path) -> int | None:
    """The pid holding the lock on ``path`` (-1 if unknown), None when nobody holds it.

    Never writes: works on a read-only file system (a lock file it cannot open is free)."""
    if str(path) in _HELD:
        return os.getpid()
    try:
        fh = open(path)
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = fh.read().strip()
            return int(text) if text.isdigit() else -1
        except OSError:
            return None
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None
