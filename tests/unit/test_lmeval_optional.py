"""lm-eval is an optional extra: the suite imports and runs without it, and an lm-eval task says how
to install it (checked in a fresh interpreter where lm_eval cannot be imported)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = """
import sys

class Hide:  # as if lm-eval were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Hide())
import interp.evals, interp.evals.runner, interp.evals.lmeval, interp.studies.sweep, interp.commands.eval
import reports.build, store.queries.lmeval
from interp.evals import EvalCfg, EvalError
EvalCfg(tasks=("ppl", "facts"))
try:
    EvalCfg(tasks=("ppl", "lm-eval:arc_easy"))
except EvalError as e:
    print("ERROR", e)
print("lm_eval" in sys.modules)
"""


def test_suite_imports_without_lm_eval_and_names_the_extra():
    r = subprocess.run([sys.executable, "-c", CODE], check=False, cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    assert out[0] == "ERROR lm-eval tasks need the lm-evaluation-harness: pip install 'interp[lmeval]' (lm-eval==0.4.13)"
    assert out[1] == "False"
