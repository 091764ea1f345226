"""export-model on the real embedded model: a layer-dropped point through `invoke export-model` and a pruned point
from Python (every other kind: tests/unit/test_export_model.py, on tiny models); plain transformers, in a process that never imports interp, reproduces each
point's stored perplexity to 1e-4 relative, and the dropped export holds fewer layers in smaller files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from interp.evals import EvalCfg
from interp.interventions.layers import LayerDrop
from interp.interventions.prune import PruneSpec
from interp.studies.export import export_from_store
from interp.studies.sweep import run_sweep
from store import Store
from tests.unit.test_export_model import PLAIN

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_exports_reproduce_the_stored_perplexity(embedded, tmp_path):
    store = Store(tmp_path / "s.duckdb")
    drop, prune = LayerDrop((20, 21, 22)), PruneSpec("magnitude", 0.3, ("mlp",))
    run = run_sweep(embedded, store, study="layers", config={"test": "export-embedded"}, points=[drop, prune],
                    eval_cfg=EvalCfg(tasks=("ppl",), budget="ppl=256", seed=0), progress=False)
    outs = {p.label(): tmp_path / f"out-{i}" for i, p in enumerate((drop, prune))}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cli = subprocess.run([sys.executable, "-m", "invoke", "export-model", "--store", str(store.path), "--run", str(run),
                          "--point", drop.label(), "--out", str(outs[drop.label()])], cwd=REPO, env=env,
                         capture_output=True, text=True, check=False, timeout=600)
    assert cli.returncode == 0, cli.stderr[-2000:]
    export_from_store(embedded, store, run, prune.label(), outs[prune.label()])
    res = subprocess.run([sys.executable, "-c", PLAIN, *map(str, outs.values())], capture_output=True, text=True,
                         check=False, timeout=600, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for label, out in outs.items():
        stored = json.loads((out / "interp_export.json").read_text())["ppl"]["value"]
        assert abs(got[str(out)]["ppl"] - stored) / stored < 1e-4, (label, got[str(out)], stored)
    assert got[str(outs[drop.label()])]["layers"] == embedded.n_layers - 3

    def size(d: Path) -> int:
        return sum(f.stat().st_size for f in d.glob("*.safetensors"))

    assert size(outs[drop.label()]) < size(outs[prune.label()])
