"""Ray is an optional extra: the suite imports without it, and `--workers` says how to install it
(checked in a fresh interpreter where ray cannot be imported), before any model is loaded."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = """
import sys

class Hide:  # as if Ray were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Hide())
import tasks, interp.capture.capture, interp.capture.ray_capture, interp.commands.cache
from interp.capture.capture import CaptureCfg
from interp.capture.ray_capture import capture_ray
from interp.capture.ray_session import RayCfg
from interp.model.loading import ModelCfg
from store import Store
try:
    capture_ray(ModelCfg("no-such-model"), Store(sys.argv[1]), CaptureCfg(), RayCfg(workers=2))
except RuntimeError as e:
    print("ERROR", e)
print("ray" in sys.modules)
"""


def test_suite_imports_without_ray_and_names_the_extra(tmp_path):
    r = subprocess.run([sys.executable, "-c", CODE, str(tmp_path / "s.duckdb")], check=False, cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["ERROR --workers needs Ray: pip install 'interp[ray]'", "False"]
    assert not (tmp_path / "s.duckdb").exists()  # nothing stored
