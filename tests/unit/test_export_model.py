"""Every exportable kind of point, on tiny models: the checkpoint, loaded by plain transformers in a
process that never imports interp, reproduces the perplexity the sweep stored for that point
(to 1e-4 relative); the model is left as it was; points with no exact weight form are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from interp.evals import EvalCfg
from interp.interventions import Base
from interp.interventions.directions import (
    ActivationAddition,
    DirectionalAblation,
    OrthogonalizedWeights,
)
from interp.interventions.heads import HeadMask
from interp.interventions.heal import HealCfg
from interp.interventions.layers import HealedDrop, LayerDrop
from interp.interventions.prune import PruneSpec
from interp.model.loading import wrap
from interp.studies.export import ExportError, export_from_store
from interp.studies.sweep import run_sweep
from store import Store
from tests.conftest import byte_tokenizer, tiny_gpt2, tiny_llama

EVAL = EvalCfg(tasks=("ppl",), budget="ppl=256", seed=0, window=64)

# A plain process: transformers only. It prints the perplexity of each exported checkpoint on the windows
# the manifest lists, computed as interp.evals.ppl does (exp of the mean token NLL over all windows).
PLAIN = textwrap.dedent("""
    import json, math, sys
    import torch
    from transformers import AutoModelForCausalLM
    results = {}
    for out in sys.argv[1:]:
        meta = json.load(open(out + "/interp_export.json"))
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for w in meta["ppl"]["windows"]:
                ids = torch.tensor([w])
                lp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0, :-1]
                total += float(lp.gather(-1, ids[0, 1:, None]).double().sum())
                n += len(w) - 1
        results[out] = {"ppl": math.exp(-total / n), "layers": model.config.num_hidden_layers,
                        "zeros": sum(int((p == 0).sum()) for p in model.parameters())}
    assert not any(m == "interp" or m.startswith("interp.") for m in sys.modules), "imported interp"
    print(json.dumps(results))
""")


def _direction(d: int, seed: int) -> tuple[float, ...]:
    return tuple(torch.randn(d, generator=torch.Generator().manual_seed(seed)).tolist())


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep per tiny model holding every exportable kind, evaluated (ppl) into one store."""
    root = tmp_path_factory.mktemp("export")
    store = Store(root / "s.duckdb")
    llama = wrap(tiny_llama(), byte_tokenizer(chat=False), name="tiny-llama", revision="seed0")
    gpt = wrap(tiny_gpt2(), byte_tokenizer(chat=False), name="tiny-gpt2", revision="seed0")
    r = _direction(64, 1)
    heal = HealCfg(steps=2, rank=2, batch=1, holdout_tokens=256, window=64, schedule="cosine", warmup=1)
    points = {
        "llama": [LayerDrop((1, 2)), PruneSpec("magnitude", 0.5), PruneSpec("wanda", None, structure="2:4"),
                  OrthogonalizedWeights(r), HeadMask(heads=((0, 1), (1, 0), (1, 2))), HealedDrop((2,), heal),
                  ActivationAddition(r, layer=1, alpha=2.0), DirectionalAblation(r)],
        "gpt": [ActivationAddition(r, layer=1, alpha=2.0), ActivationAddition(r, layer=2, alpha=-1.0, hook="attn_out"),
                LayerDrop((0,)), OrthogonalizedWeights(r), ActivationAddition(r, layer=1, alpha=1.5, more_layers=(2,)),
                ActivationAddition(r, layer=1, alpha=1.0, positions="generated")],
    }
    runs = {}
    for name, loaded in (("llama", llama), ("gpt", gpt)):
        runs[name] = run_sweep(loaded, store, study="layers", config={"test": "export", "model": name},
                               points=points[name], eval_cfg=EVAL, progress=False)
    return {"store": store, "root": root, "loaded": {"llama": llama, "gpt": gpt}, "runs": runs, "points": points}


CASES = [("llama", 0), ("llama", 1), ("llama", 2), ("llama", 3), ("llama", 4), ("llama", 5), ("gpt", 0), ("gpt", 1),
         ("gpt", 2), ("gpt", 3), ("gpt", 4), ("llama", None)]


@pytest.fixture(scope="module")
def exported(swept):
    """Every case exported (the model checked unchanged after each), then one plain process reads them all."""
    found = {}
    for model, i in CASES:
        loaded = swept["loaded"][model]
        spec = Base() if i is None else swept["points"][model][i]
        before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
        out = swept["root"] / f"ckpt-{model}-{i}"
        done = export_from_store(loaded, swept["store"], swept["runs"][model], spec.label(), out)
        after = loaded.model.state_dict()
        unchanged = before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        found[(model, i)] = (spec, out, done, unchanged)
    res = subprocess.run([sys.executable, "-c", PLAIN, *(str(v[1]) for v in found.values())], capture_output=True,
                         text=True, check=False, timeout=600, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    plain = json.loads(res.stdout.strip().splitlines()[-1])
    return {k: (*v, plain[str(v[1])]) for k, v in found.items()}


@pytest.mark.parametrize("model,i", CASES, ids=lambda v: str(v))
def test_export_reproduces_the_stored_perplexity(swept, exported, model, i):
    spec, out, done, unchanged, got = exported[(model, i)]
    assert unchanged, f"{spec.label()}: exporting changed the model"
    stored = json.loads((out / "interp_export.json").read_text())["ppl"]["value"]
    assert abs(got["ppl"] - stored) / stored < 1e-4, (spec.label(), got, stored)
    dropped = spec.layers if spec.kind in ("layer_drop", "layer_drop_healed") else ()
    assert got["layers"] == swept["loaded"][model].n_layers - len(dropped)
    if spec.kind == "prune":
        assert done["pruned"]["n_zero"] > 0 and got["zeros"] >= done["pruned"]["n_zero"]


def test_dropped_layers_make_smaller_files(swept, tmp_path):
    loaded, run = swept["loaded"]["llama"], swept["runs"]["llama"]
    base, drop = tmp_path / "base", tmp_path / "drop"
    export_from_store(loaded, swept["store"], run, "base", base)
    export_from_store(loaded, swept["store"], run, LayerDrop((1, 2)).label(), drop)
    size = lambda d: sum(f.stat().st_size for f in d.glob("*.safetensors"))
    assert size(drop) < size(base)


@pytest.mark.parametrize("model,i,match", [
    ("llama", 6, "no bias"),                       # Llama's down_proj has no bias
    ("llama", 7, "orthogonalised-weights point"),  # directional ablation acts on activations
    ("gpt", 5, "no weight form"),                  # steering only the generated tokens
])
def test_points_without_an_exact_checkpoint_are_refused(swept, tmp_path, model, i, match):
    spec = swept["points"][model][i]
    out = tmp_path / "refused"
    with pytest.raises(ExportError, match=match):
        export_from_store(swept["loaded"][model], swept["store"], swept["runs"][model], spec.label(), out)
    assert not out.exists() or not any(out.iterdir())


def test_unknown_point_and_wrong_model_are_refused(swept, tmp_path):
    store, run = swept["store"], swept["runs"]["llama"]
    with pytest.raises(KeyError, match="has no evaluated point 'drop\\[9\\]'"):
        export_from_store(swept["loaded"]["llama"], store, run, "drop[9]", tmp_path / "a")
    with pytest.raises(ExportError, match="pass the run's model"):
        export_from_store(swept["loaded"]["gpt"], store, run, "base", tmp_path / "b")
