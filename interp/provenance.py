"""Where a number came from: code version and a stable hash of the config that made it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from interp import __version__


@lru_cache(maxsize=1)
def code_version() -> str:
    """``interp <version>`` plus the git commit (and ``+dirty``) when run from a checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return f"interp {__version__}" + (f" {sha}{'+dirty' if dirty else ''}" if sha else "")


LATER = {"omit_default": True}
"""``field(metadata=LATER)``: a field added after runs were stored with its dataclass; at its default it
stays out of the JSON (and so out of the run identity), so those runs keep their identity."""


def to_jsonable(obj: object) -> Any:  # noqa: ANN401 (a JSON value: dict, list or scalar)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_default") and getattr(obj, f.name) == f.default)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def canonical_json(obj: object) -> str:
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))


def config_hash(obj: object) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]
