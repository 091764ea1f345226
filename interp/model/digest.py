"""Content digests of local files and directories, for run identity (docs/DESIGN.md).

``content_digest(path)`` is the sha256 of a file's bytes, or for a directory of every file in
it (relative names and their digests). Hashing a model's weights takes about a second per
500 MB, so each file's digest is cached by (size, mtime_ns, inode) in
``<cache>/digests.json``: a second load of unchanged files reads nothing but their ``stat``.
A file rewritten in place gets a new mtime, a file replaced by another gets a new inode, so a
re-saved model (even with the same size) is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from interp.model import embedded
from interp.model.embedded import cache_dir

_LOCK = threading.Lock()
_CACHE_NAME = "digests.json"


def _cache_file() -> Path:
    return cache_dir() / _CACHE_NAME


def _load() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _save(entries: dict) -> None:
    """Best effort: a cache that cannot be written only costs a rehash next time."""
    path = _cache_file()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entries, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def file_digest(path: str | Path, cache: dict | None = None) -> str:
    """sha256 of one file, from the cache when its size, mtime and inode are unchanged."""
    path = Path(path).resolve()
    st = path.stat()
    key = [st.st_size, st.st_mtime_ns, st.st_ino]
    own = cache is None
    entries = _load() if cache is None else cache
    hit = entries.get(str(path))
    if hit and hit[:3] == key:
        return hit[3]
    digest = embedded.sha256_file(path)
    entries[str(path)] = [*key, digest]
    if own:
        with _LOCK:
            merged = {**_load(), str(path): entries[str(path)]}
            _save(merged)
    return digest


def content_digest(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (hidden ones skipped), order-independent."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        return file_digest(path)
    entries = _load()
    before = dict(entries)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(path).parts)):
        h.update(f"{f.relative_to(path).as_posix()}:{file_digest(f, entries)}\n".encode())
    if entries != before:
        with _LOCK:
            _save({**_load(), **{k: v for k, v in entries.items() if before.get(k) != v}})
    return h.hexdigest()
