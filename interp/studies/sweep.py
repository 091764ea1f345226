"""Sweeps: evaluate the base model and a list of interventions in one run, resumably.

Every study's sweep goes through ``run_sweep``: the base model is always evaluated in the
same run, each point's scores land in ``evals`` in one transaction together with its per-item
scores (``eval_items``) and its paired comparison with the base on the same items
(``eval_deltas``: delta, 95% interval, p; analyses/stats.py), and re-running the same sweep
skips the points already stored.

Every point's forward passes on fixed inputs start at the first block its edit changes: the
blocks below come from a per-sweep cache of the unedited model's residual stream
(``interp.evals.prefix``), so results are the full forward's and only the compute is saved.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from analyses.stats import compare_items
from interp.evals import EvalCfg, Score, evaluate, make_reference
from interp.evals.prefix import PrefixCache, PrefixCfg, reuse
from interp.interventions import Base, Intervention, byproducts, describe, first_layer, to_json
from interp.model.loading import Loaded
from interp.provenance import canonical_json, code_version, config_hash
from store import Store
from store.evals import done_points, point_items, write_evals
from store.runs import finish_run, start_run

Phase = Callable[[str], None]
"""A study's progress callback: called with a phase's name (capture, analyse, sweep, ...) as the
study starts it; the demo prints them as numbered sub-steps."""


Apply = Callable[[Intervention], contextlib.AbstractContextManager[object]]
"""How a sweep applies a point (default ``spec.apply(loaded)``): a study that owns inputs of a kind
passes them here, e.g. the weights study's store-backed Wanda norms (``PruneSpec.apply(loaded, norms=)``)."""


def no_phase(_name: str) -> None:
    """The default progress callback: nothing."""


DEFAULT_PREFIX = PrefixCfg()
"""Prefix reuse of every sweep unless told otherwise (1 GiB in memory, then a scratch directory)."""


def start_study_run(loaded: Loaded, store: Store, study: str, config: dict) -> tuple[int, str]:
    """Create (or find, for resume) the run of a study with this model and config.

    Runs stored before generation was batched by memory (2026-11-29) held ``gen_batch: 16`` in their
    evaluation config and are not adopted: a greedy near-tie can break another way in another batch
    (one of the full safety study's 7,200 toxicity texts did, ``BENCHMARKS.md`` section 10), so their
    points and today's would mix two batchings under one config. The same command makes a new run;
    the old one stays as it was stored (a sweep with ``EvalCfg(gen_batch=16)`` resumes it)."""
    with store.connect() as con:
        run = start_run(con, kind=study, model=loaded.describe(), backend=None,
                        config=canonical_json(config), config_hash=config_hash(config),
                        code_version=code_version())
    return run.run_id, run.status


def score_rows(run_id: int, study: str, spec: Intervention, scores: Sequence[Score]) -> list[dict]:
    return [{
        "run_id": run_id, "study": study, "point": spec.label(), "intervention": to_json(spec),
        "task": s.task, "metric": s.metric, "value": s.value, "stderr": s.stderr, "n": s.n,
        "chance": s.chance, "dataset": canonical_json(s.dataset), "seconds": s.seconds,
        "harness": s.harness, "task_version": s.task_version, "num_fewshot": s.num_fewshot,
        "fewshot_seed": s.fewshot_seed,
    } for s in scores]


def item_frame(scores: Sequence[Score]) -> pd.DataFrame:
    """(task, metric, item, value) of every per-item score of one point."""
    return pd.DataFrame([(s.task, s.metric, i, v) for s in scores for i, v in s.items],
                        columns=["task", "metric", "item", "value"])


def item_rows(run_id: int, spec: Intervention, items: pd.DataFrame) -> list[dict]:
    return [{"run_id": run_id, "point": spec.label(), **r} for r in items.to_dict("records")]


def delta_rows(run_id: int, spec: Intervention, base: pd.DataFrame, items: pd.DataFrame) -> list[dict]:
    """The point against the base model item by item (nothing when either kept no per-item scores)."""
    if isinstance(spec, Base) or base.empty or items.empty:
        return []
    return [{"run_id": run_id, "point": spec.label(), **r} for r in compare_items(base, items).to_dict("records")]


def run_sweep(loaded: Loaded, store: Store, *, study: str, config: dict, points: Sequence[Intervention],
              eval_cfg: EvalCfg, progress: bool = True, run_id: int | None = None,
              on_point: Callable[[Intervention, list[Score]], None] | None = None,
              prefix: PrefixCfg | None = DEFAULT_PREFIX, apply: Apply | None = None) -> int:
    """Evaluate ``Base()`` then every point; returns the run id.

    ``config`` is the study's own config (it becomes the run's identity together with
    the points and the evaluation config). Pass ``run_id`` to add points to a run the
    study already started. ``prefix`` bounds the cache of unedited block outputs (None: every
    point runs its forward passes in full; stored values are the same either way). ``apply``: how
    each point is applied (``Apply``; default ``spec.apply(loaded)``).
    """
    specs: list[Intervention] = [Base(), *[p for p in points if not isinstance(p, Base)]]
    labels = [s.label() for s in specs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:  # evals' key is (run, point, task, metric): the second would overwrite the first's scores
        raise ValueError(f"two different points of the {study} sweep are both labelled '{twice[0]}': "
                         "give each point its own label")
    if run_id is None:
        full = {**config, "eval": eval_cfg.describe(), "points": [describe(p) for p in specs]}
        run_id, status = start_study_run(loaded, store, study, full)
        if status == "complete":
            return run_id
    with store.connect() as con:
        done = done_points(con, run_id)
    todo = [p for p in specs if to_json(p) not in done]
    if not todo:
        with store.connect() as con:
            finish_run(con, run_id)
        return run_id
    reference = make_reference(loaded, eval_cfg)  # unedited model, for KL; None if not asked
    with store.connect() as con:
        base_items = point_items(con, run_id, Base().label())  # empty until the base is evaluated
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), unit="point",
               desc=f"{study} run {run_id}", disable=not progress)
    # The cache keeps only the blocks that some point still to run can take from it: those below the
    # deepest first layer among them (the base point would record every block). Measured on the full
    # safety study, whose edits start at block 4 at most: a resumed segment that filled no cache peaked
    # at 1.91 GB, the run whose base point filled all 30 blocks at 3.96 GB (BENCHMARKS.md section 10).
    # A sweep whose edits all start at block 0 (the weight study's) keeps no cache at all.
    need = max((first_layer(p, loaded.n_layers) for p in todo if not isinstance(p, Base)), default=0)
    with contextlib.ExitStack() as stack:
        cache = None if prefix is None or need == 0 else stack.enter_context(PrefixCache(prefix))
        for spec in todo:
            t0 = time.perf_counter()
            applying = spec.apply(loaded) if apply is None else apply(spec)
            with applying as made, reuse(loaded, cache, min(need, first_layer(spec, loaded.n_layers))):
                scores = evaluate(loaded, eval_cfg, reference=reference)
            items = item_frame(scores)
            if isinstance(spec, Base):
                base_items = items
            with store.connect() as con:
                for product in byproducts(made):  # first: a point whose scores are stored has its by-products
                    product.save(con, run_id, spec.label())
                write_evals(con, score_rows(run_id, study, spec, scores), item_rows(run_id, spec, items),
                            delta_rows(run_id, spec, base_items, items))
            if on_point is not None:
                on_point(spec, scores)
            bar.set_postfix_str(f"{spec.label()} {time.perf_counter() - t0:.0f}s")
            bar.update(1)
    bar.close()
    with store.connect() as con:
        finish_run(con, run_id)
    return run_id
