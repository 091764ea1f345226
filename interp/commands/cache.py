"""`invoke cache`: run prompt sets through the model and store their activations."""

from __future__ import annotations

from invoke import Context, task

from interp.commands import DEFAULT_MODEL, DEFAULT_STORE, HELP_COMMON
from interp.commands.cli import CliTask, user_errors
from interp.validate import Boolean, Choice, Optional, Whole


@task(klass=CliTask, types={
    "batch_size": Whole(min=1), "limit": Optional(Whole(min=1)), "chat": Optional(Boolean()),
    "flush_mb": Whole(min=0), "workers": Optional(Whole(min=1)), "sync": Choice(("commit", "end", "off")),
}, help={
    **HELP_COMMON,
    "prompts": "prompt sets or files, comma-separated: harmful, harmbench, donotanswer, toxic, neutral, "
               "stereotypes, path.jsonl/.csv",
    "hooks": "resid_pre, resid_post, attn_out, mlp_out, z (optionally name:layer or name:lo-hi), comma-separated",
    "positions": "last, mean and/or all (every token), comma-separated",
    "backend": "nnsight (default), tl (TransformerLens TransformerBridge: the same vectors, slower), "
               "or torch (plain hooks)",
    "batch_size": "prompts per forward pass (does not change results)",
    "limit": "at most this many prompts per set (fixed seeded subset)",
    "chat": "wrap prompts in the chat template: true/false (default: when the model has one)",
    "dtype": "float32 (default), bfloat16 or float16",
    "device": "cpu, cuda, cuda:1, ...",
    "device_map": "accelerate device map, e.g. auto, for models larger than one device",
    "revision": "hub branch/tag/commit",
    "flush_mb": "commit to the store every N MB of vectors (smaller: finer-grained resume)",
    "workers": "run the model on N Ray actors (one model copy each; needs interp[ray]); the same run as one process",
    "ray_address": "with --workers: a running Ray cluster (default: RAY_ADDRESS, else a private local Ray)",
    "sync": "when shards are fsynced: commit (default: before each commit, safe against power loss), "
            "end (once when the run ends) or off (page cache only; a killed process still loses nothing)",
})
@user_errors
def cache(c: Context, model: str = DEFAULT_MODEL, store: str = DEFAULT_STORE, prompts: str = "harmful,neutral",
          hooks: str = "resid_post", positions: str = "last", backend: str = "nnsight", batch_size: int = 8,
          limit: int | None = None, chat: bool | None = None, dtype: str = "float32", device: str = "cpu",
          device_map: str | None = None, revision: str | None = None, flush_mb: int = 128,
          workers: int | None = None, ray_address: str | None = None, sync: str = "commit") -> None:
    """Run prompts through the model and store activations (resumes an interrupted run)."""
    from interp.capture.capture import CaptureCfg, capture
    from interp.commands.cli import model_cfg as flags_model
    from interp.model.loading import load_model
    from store import Store

    cfg = CaptureCfg(prompts=prompts, hooks=hooks, positions=positions, backend=backend,
                     batch_size=batch_size, limit=limit, chat=chat, flush_mb=flush_mb, sync=sync)
    Store(store).preflight()
    model_cfg = flags_model(model, revision=revision, dtype=dtype, device=device, device_map=device_map)
    if workers is None and ray_address is None:
        run_id = capture(load_model(model_cfg), Store(store), cfg)
    else:
        from interp.capture.ray_capture import RayCfg, capture_ray

        run_id = capture_ray(model_cfg, Store(store), cfg, RayCfg(workers=workers or 1, address=ray_address))
    print(f"run {run_id}: cached into {Store(store).path}")
