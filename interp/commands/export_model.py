"""`invoke export-model`: any evaluated point of a study run as a plain transformers checkpoint."""

from __future__ import annotations

from invoke import Context, task

from interp.commands import DEFAULT_STORE, HELP_COMMON
from interp.commands.cli import CliTask, user_errors
from interp.validate import Optional, Text, Whole


@task(klass=CliTask, name="export-model", types={
    "run": Optional(Whole(min=1)), "point": Optional(Text(empty=False)), "model": Optional(Text()),
    "dtype": Optional(Text()), "device": Optional(Text()), "out": Optional(Text())}, help={
    "store": HELP_COMMON["store"],
    "run": "run id of the study run (invoke runs lists them)",
    "point": "the point's label as stored (evals.point), e.g. 'drop[20-23]' or 'base'",
    "out": "new directory for the checkpoint (config.json, model.safetensors, tokenizer, interp_export.json)",
    "model": "load the run's model from here instead (default: the model the run names); must be the same model",
    "dtype": "load in this dtype (default: the run's)",
    "device": "load on this device (default cpu)",
})
@user_errors
def export_model(c: Context, out: str | None = None, run: int | None = None, point: str | None = None,
                 store: str = DEFAULT_STORE, model: str | None = None, dtype: str | None = None,
                 device: str | None = None) -> None:
    """Write a plain transformers checkpoint of one evaluated point: dropped layers removed, pruned weights
    zero, orthogonalised weights, zeroed heads, steering as an existing bias, healed LoRA merged.
    AutoModelForCausalLM.from_pretrained(OUT) reproduces the point's stored perplexity."""
    from dataclasses import replace

    from interp.model.loading import load_model
    from interp.studies.export import check_out, export_from_store, find_point, run_model
    from store import Store

    st = Store(store)
    with st.connect(read_only=True):  # a store that is not ours is refused first
        pass
    if run is None or point is None or out is None:
        raise ValueError("export-model needs --run, --point and --out DIR: `invoke runs` lists the runs, "
                         "`invoke sql \"SELECT DISTINCT point FROM evals WHERE run_id = R\"` their points")
    found, spec, _ = find_point(st, run, point)  # refused here, before the model loads
    check_out(out)
    cfg = run_model(found)
    cfg = replace(cfg, **{k: v for k, v in {"spec": model, "dtype": dtype, "device": device}.items() if v})
    loaded = load_model(cfg)
    done = export_from_store(loaded, st, run, point, out)
    extra = "; ".join(f"{k}: {v}" for k, v in done.items() if k not in ("parameters",))
    print(f"exported {spec.kind} point '{point}' of run {run} to {out} ({extra})")
