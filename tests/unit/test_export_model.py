"""Every exportable kind of point, on tiny models: the checkpoint, loaded by plain transformers in a
process that never imports interp, reproduces the perplexity the sweep stored for that point
(to 1e-4 relative); the model is left as it was; points with no exact weight form are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

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
    """Every case exported (the model checked unchanged after each), then one plain process reads them all.
    Healing is never run again: a healed point's export merges the adapters the sweep stored."""
    from unittest import mock

    found = {}
    never = mock.patch("interp.interventions.heal.healed", side_effect=AssertionError("export healed again"))
    with never:
        _export_all(swept, found)
    res = subprocess.run([sys.executable, "-c", PLAIN, *(str(v[1]) for v in found.values())], capture_output=True,
                         text=True, check=False, timeout=600, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    plain = json.loads(res.stdout.strip().splitlines()[-1])
    return {k: (*v, plain[str(v[1])]) for k, v in found.items()}


def _export_all(swept, found: dict) -> None:
    for model, i in CASES:
        loaded = swept["loaded"][model]
        spec = Base() if i is None else swept["points"][model][i]
        before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
        out = swept["root"] / f"ckpt-{model}-{i}"
        done = export_from_store(loaded, swept["store"], swept["runs"][model], spec.label(), out)
        after = loaded.model.state_dict()
        unchanged = before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        found[(model, i)] = (spec, out, done, unchanged)


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
    if spec.kind == "layer_drop_healed":
        from store.layers import stored_adapters

        with swept["store"].connect(read_only=True) as con:
            adapters, digest = stored_adapters(con, swept["runs"][model], spec.label())
        assert done["lora_source"] == "store" and done["lora_digest"] == digest and adapters
        assert done["lora_merged"] == len(adapters) // 2  # one A and one B per adapted projection


def test_dropped_layers_make_smaller_files(swept, tmp_path):
    loaded, run = swept["loaded"]["llama"], swept["runs"]["llama"]
    base, drop = tmp_path / "base", tmp_path / "drop"
    export_from_store(loaded, swept["store"], run, "base", base)
    export_from_store(loaded, swept["store"], run, LayerDrop((1, 2)).label(), drop)
    def size(d: Path) -> int:
        return sum(f.stat().st_size for f in d.glob("*.safetensors"))

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


def test_a_store_without_adapters_heals_again_and_says_so(swept, tmp_path):
    """Stores from before adapters were kept: the healed point is healed again (deterministic for its seed),
    reproducing the merge from the stored adapters, and interp_export.json says which happened."""
    from store.layers import add_heal_log, stored_adapters

    loaded, store, run = swept["loaded"]["llama"], swept["store"], swept["runs"]["llama"]
    spec = swept["points"]["llama"][5]
    with store.connect() as con:
        adapters, _ = stored_adapters(con, run, spec.label())
        log = con.execute("SELECT step, loss, seconds FROM layer_heal WHERE run_id = ? AND point = ?",
                          [run, spec.label()]).df()
        con.execute("DELETE FROM layer_heal_adapters WHERE run_id = ? AND point = ?", [run, spec.label()])
    try:
        done = export_from_store(loaded, store, run, spec.label(), tmp_path / "again")
    finally:
        with store.connect() as con:
            add_heal_log(con, run, spec.label(), log, adapters)
    assert done["lora_source"].startswith("healed again")
    meta = json.loads((tmp_path / "again" / "interp_export.json").read_text())
    assert meta["export"]["lora_source"] == done["lora_source"]
    from safetensors.torch import load_file

    again = load_file(tmp_path / "again" / "model.safetensors")
    stored = load_file(next(p for p in swept["root"].glob("ckpt-llama-5") if p.is_dir()) / "model.safetensors")
    assert again.keys() == stored.keys()
    assert max(float((again[k] - stored[k]).abs().max()) for k in again) < 1e-6


def test_altered_adapters_are_refused(swept, tmp_path):
    from store.layers import StoreError, stored_adapters

    store, run, spec = swept["store"], swept["runs"]["llama"], swept["points"]["llama"][5]
    with store.connect() as con:
        before, digest = stored_adapters(con, run, spec.label())
        name = min(before)
        con.execute("UPDATE layer_heal_adapters SET weights = list_transform(weights, x -> x * 2) "
                    "WHERE run_id = ? AND point = ? AND name = ?", [run, spec.label(), name])
    try:
        with pytest.raises(StoreError, match="do not match their stored digest"):
            export_from_store(swept["loaded"]["llama"], store, run, spec.label(), tmp_path / "x")
    finally:
        with store.connect() as con:
            con.execute("UPDATE layer_heal_adapters SET weights = ? WHERE run_id = ? AND point = ? AND name = ?",
                        [before[name].reshape(-1).tolist(), run, spec.label(), name])
            assert stored_adapters(con, run, spec.label())[1] == digest
