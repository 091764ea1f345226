"""The quick head study stage by stage: wall and CPU seconds of each stage, for comparing code versions.

Runs on the tree first on ``PYTHONPATH`` (this one, or an older checkout: it also finds the modules
under their names before the layout of issue 19), on the study's own quick data:

- ablation importance of the text and the task sample (every ``--layer-step``-th layer: the others
  cost the same per block, so a step of 3 keeps a third of the time and the same shares);
- gradient importance (per token), the head means, ``--router-steps`` router steps, the held-out loss;
- the sweep: the base and two head masks (one reaching layer 0, one above the middle), evaluated
  with the study's evaluation.

Each stage runs under cProfile when ``--profile N`` is given (its N most expensive functions by own
time are printed). On a busy machine only the CPU seconds and the shares mean anything.

    PYTHONPATH=<tree> python bench/heads_stages.py [--model smollm2-135m-instruct] [--threads 2]
        [--stages text,task,grad,means,router,nll,sweep] [--layer-step 3] [--profile 0]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any


def _module(*names: str) -> Any:
    """The first of ``names`` that imports (module paths moved in issue 19's layout)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise SystemExit(f"none of {', '.join(names)} imports from this tree")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", default="text,task,grad,means,router,nll,sweep")
    ap.add_argument("--layer-step", type=int, default=3, help="ablate every n-th layer")
    ap.add_argument("--router-steps", type=int, default=4)
    ap.add_argument("--profile", type=int, default=0, help="print the n costliest functions of each stage")
    a = ap.parse_args()

    import torch

    loading = _module("interp.model.loading", "interp.models")
    study = _module("interp.studies.heads")
    imp = _module("interp.studies.heads_importance", "interp.heads.importance")
    train = _module("interp.studies.heads_train", "interp.heads.train")
    config = _module("interp.studies.heads_config", "interp.heads.config")
    masks = _module("interp.interventions.heads")
    sweep = _module("interp.studies.sweep", "interp.sweep")
    from analyses import head_pruning
    from store import Store

    torch.set_num_threads(a.threads)
    loaded = loading.load_model(a.model)
    cfg = config.HeadsCfg(budget="quick")
    data = study.prepare(loaded, cfg)
    means = imp.head_means(loaded, data.grad[:1])
    layers = range(0, loaded.n_layers, a.layer_step)
    scratch = tempfile.mkdtemp(prefix="heads-stages-")

    def run_sweep() -> None:
        order = head_pruning.random_order(loaded.n_layers, loaded.n_heads, seed=0)
        deep = tuple((l, h) for l in range(loaded.n_layers // 2 + 1, loaded.n_layers) for h in range(loaded.n_heads // 2))
        points = [masks.HeadMask(head_pruning.least_important(order, loaded.n_layers * 2), name="random0"),
                  masks.HeadMask(deep, name="deep")]
        sweep.run_sweep(loaded, Store(f"{scratch}/s.duckdb"), study="heads", config={"bench": 1}, points=points,
                        eval_cfg=cfg.eval_cfg(), progress=False)

    router = train.RouterCfg(top_k=max(1, loaded.n_heads // 2), steps=a.router_steps, batch_size=4, lr=1e-3,
                             lb_coef=0.01, ckpt_every=a.router_steps, seed=0)
    stages: dict[str, tuple[str, Callable[[], object]]] = {
        "text": (f"ablation, text sample ({len(layers)} layers)",
                 lambda: imp.ablation_importance(loaded, data.text, means, layers=layers)),
        "task": (f"ablation, task sample ({len(layers)} layers)",
                 lambda: imp.ablation_importance(loaded, data.task, means, layers=layers)),
        "grad": ("gradient importance per token", lambda: imp.gradient_importance(loaded, data.grad, "token")),
        "means": ("head means", lambda: imp.head_means(loaded, data.grad)),
        "router": (f"router, {a.router_steps} steps", lambda: train.train_router(loaded, router, data.train)),
        "nll": ("held-out loss", lambda: train.mean_nll(loaded, data.heldout)),
        "sweep": ("sweep: base + 2 head masks", run_sweep),
    }
    print(f"model {loaded.name}, {a.threads} threads")
    try:
        for key in a.stages.split(","):
            name, fn = stages[key]
            prof = cProfile.Profile() if a.profile else None
            c0, w0 = time.process_time(), time.perf_counter()
            if prof:
                prof.enable()
            fn()
            if prof:
                prof.disable()
            print(f"{name}: wall {time.perf_counter() - w0:.2f} s, cpu {time.process_time() - c0:.2f} s", flush=True)
            if prof:
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(a.profile)
                print(out.getvalue())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
