"""`invoke demo`: every study on one model in numbered steps, then the report and headline findings.

One numbered step per study, its phases as sub-steps (2.1 cache, 2.2 analyses, 2.3 sweep +
evaluation, ...), then a line with the rows the study's run holds per table. Each study resumes from the store (cached activations, stored analyses and finished sweep
points are reused), so running the demo again only does what is missing.
"""

from __future__ import annotations

import importlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from invoke import Context, task

from interp.commands import DEFAULT_MODEL, DEFAULT_STORE, helps
from interp.commands.cli import CliTask, user_errors
from interp.validate import Choice, Optional

if TYPE_CHECKING:
    from store import Store

BUDGETS = ("smoke", "quick", "full")


@dataclass(frozen=True)
class Study:
    """How the demo runs one study: its config class and its ``run_<study>(loaded, store, cfg)``."""

    name: str
    what: str
    cfg: str
    """module:Class of the study's frozen config; built as Class(budget=..., seed=...)."""
    runner: str
    """module:function called as function(loaded, store, cfg, on_phase=...)."""
    phases: tuple[tuple[str, str], ...] = ()
    """(phase name the runner passes to ``on_phase``, what the demo prints for it as a numbered
    sub-step the first time the runner starts it)."""

    def load(self) -> tuple[type[Any], Callable[..., Any]]:
        """(config class, runner); import errors surface, nothing is skipped quietly."""
        cfg_mod, cfg_cls = self.cfg.split(":")
        run_mod, run_fn = self.runner.split(":")
        return getattr(importlib.import_module(cfg_mod), cfg_cls), getattr(importlib.import_module(run_mod), run_fn)


SWEEP = ("sweep", "sweep + evaluation (base model in the same run)")
STUDIES = (
    Study("layers", "residual-stream cache, layer similarity and angular distance, layer-dropping sweeps",
          "interp.studies.layers_config:LayersCfg", "interp.studies.layers:run_layers",
          (("capture", "cache (residual stream)"), ("analyse", "analyses (similarity, angular distance)"),
           SWEEP)),
    Study("weights", "magnitude and Wanda pruning: rates, module groups, sparsity reached",
          "interp.studies.weights:WeightsCfg", "interp.studies.weights:run_weights",
          (("plan", "plan the pruning points"), ("dense", "analyses (dense weights)"),
           ("sweep", "sweep: calibration, pruning and evaluation (base model in the same run)"))),
    Study("heads", "head importance (ablation, gradient), head pruning, Mixture-of-Head routers",
          "interp.studies.heads_config:HeadsCfg", "interp.studies.heads:run_heads",
          (("prepare", "data (text sample, task items)"), ("importance", "analyses (head importance)"),
           ("routers", "router training"), SWEEP)),
    Study("safety", "probes per layer, harmful directions, ablation / orthogonalisation / activation addition",
          "interp.studies.safety:SafetyCfg", "interp.studies.safety:run_safety",
          (("capture", "cache (labelled prompts)"), ("analyse", "analyses (probes, directions)"),
           ("select", "choosing the direction (candidates ablated)"), SWEEP)),
)


def pick(names: str | None) -> list[Study]:
    """The studies named (comma-separated), in the demo's order; all when None."""
    if names in (None, "", "all"):
        return list(STUDIES)
    known = {s.name: s for s in STUDIES}
    wanted = [n.strip() for n in str(names).split(",") if n.strip()]
    for n in wanted:
        if n not in known:
            raise ValueError(f"unknown study '{n}': use some of {', '.join(known)}")
    return [s for s in STUDIES if s.name in wanted]


def stored_summary(st: Store, run_id: int) -> str:
    """Rows the run (and the cache run it read) holds per table, for the line after each study."""
    from store.queries import cache_run_of, stored_rows

    with st.connect(read_only=True) as con:
        parts = [f"{t} {n}" for t, n in stored_rows(con, run_id)]
        cache = cache_run_of(con, run_id)
        if cache is not None:
            parts += [f"cache run {cache}: " + ", ".join(f"{t} {n}" for t, n in stored_rows(con, cache))]
    return "; ".join(parts) if parts else "nothing"


def _step(i: int, n: int, text: str) -> float:
    print(f"\n[{i}/{n}] {text}", flush=True)
    return time.perf_counter()


def _sub_step(i: int, study: Study) -> Callable[[str], None]:
    """The study's progress callback: prints each phase it starts as i.1, i.2, ... (once each)."""
    count = itertools.count(1)
    texts, seen = dict(study.phases), set()

    def on_phase(phase: str) -> None:
        if phase not in seen:
            seen.add(phase)
            print(f"  {i}.{next(count)} {texts.get(phase, phase)}", flush=True)
    return on_phase


def _done(t0: float, text: str = "done") -> None:
    print(f"      {text} in {time.perf_counter() - t0:.0f}s", flush=True)


@task(klass=CliTask, types={"budget": Optional(Choice(BUDGETS))}, help=helps(
    "dtype", "device", "device_map", "revision",
    full="run the complete sweeps (hours on a CPU) instead of the quick ones",
    budget="smoke (seconds per study, for tests), quick (default) or full; --full is --budget full",
    out="directory for the HTML report (default ./report)",
    seed="seed passed to every study",
    studies="comma-separated subset of the studies to run (default: all of " + ", ".join(s.name for s in STUDIES) + ")",
))
@user_errors
def demo(c: Context, model: str = DEFAULT_MODEL, store: str = DEFAULT_STORE, full: bool = False,
         budget: str | None = None, out: str = "report", seed: int = 0, studies: str | None = None,
         dtype: str = "float32", device: str = "cpu", device_map: str | None = None,
         revision: str | None = None) -> None:
    """Run every study in quick mode (--full: complete sweeps), render the report, print headline findings."""
    budget = budget or ("full" if full else "quick")
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget '{budget}': use smoke, quick or full")
    if full and budget != "full":
        raise ValueError(f"--full and --budget {budget} disagree: pass one of them")
    chosen = [(s, *s.load()) for s in pick(studies)]  # fail on a broken study before loading the model
    configs = [(s, cls(budget=budget, seed=seed), fn) for s, cls, fn in chosen]
    from interp.commands.cli import load
    from reports.build import build_report, detectable_effects, headline_findings
    from store import Store

    st = Store(store)
    st.preflight()
    n = len(configs) + 3
    start = time.perf_counter()
    t0 = _step(1, n, f"load {model}")
    loaded = load(model, revision=revision, dtype=dtype, device=device, device_map=device_map)
    _done(t0, f"{loaded.name}: {loaded.n_layers} layers, d_model {loaded.d_model}, loaded")
    for i, (study, cfg, fn) in enumerate(configs, start=2):
        t0 = _step(i, n, f"{study.name} ({budget}): {study.what}")
        result = fn(loaded, st, cfg, on_phase=_sub_step(i, study))
        run_id = getattr(result, "run_id", result)
        _done(t0, f"run {run_id} complete")
        print(f"      stored: {stored_summary(st, run_id)}", flush=True)
    t0 = _step(n - 1, n, "report")
    rep = build_report(st, out, store_arg=store)
    _done(t0, f"{len(rep.pages)} pages written")
    _step(n, n, "headline findings")
    for line in headline_findings(st):
        print(f"  - {line}")
    detectable = detectable_effects(st)
    if detectable:
        print("  what each budget can detect (smaller changes read 'no detectable change at this budget'):")
        for line in detectable:
            print(f"    {line}")
    if rep.missing:
        print(f"  (this store holds no run of: {', '.join(rep.missing)})")
    print(f"\nreport: {rep.index}")
    print(f"store:  {st.path} (query it with `invoke sql --store {store} \"SELECT * FROM runs\"`)")
    print(f"total:  {time.perf_counter() - start:.0f}s")
