"""Score the model as it is (edits active) on an lm-evaluation-harness task; rows for ``evals``.

``lmeval_scores(loaded, cfg, "lm-eval:mmlu:5shot")`` runs lm-eval's own task (prompts, few-shot
sampling, filters, metrics, group averages) through ``SuiteLM`` and returns one ``Score`` per
metric lm-eval reports, for every task and group it reports:

- metric: lm-eval's name, with the filter after a comma unless it is 'none' (``acc``,
  ``exact_match,strict-match``, ``exact_match,flexible-extract``); stderr as lm-eval reports it
  (None where it reports 'N/A', e.g. a single item);
- task: ``lm-eval:NAME:Kshot[:sSEED]`` (``interp.evals.lmeval_spec``), also in the columns
  ``num_fewshot`` and ``fewshot_seed``; ``harness`` 'lm-eval 0.4.13'; ``task_version`` lm-eval's;
- a group's own row is lm-eval's aggregate (for MMLU: the micro average, weighted by subject size);
  the suite adds ``<metric>_macro``, the unweighted mean over the group's tasks (lm-eval's own
  ``unweighted_mean_stderr`` for its error), labelled in ``dataset.average``;
- dataset: level ('task' | 'group'), the requested name, alias, parent group, source (local
  files with their sha256, or the hub), items scored and available, the average's kind.

The task objects are built once per (request, data folder) and reused by every sweep point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from interp.evals import lmeval_spec
from interp.evals.config import EvalCfg, EvalError, Score

if TYPE_CHECKING:
    from lm_eval.api.task import Task

    from interp.evals.lmeval_tasks import Prepared
    from interp.model.loading import Loaded

_PREPARED: dict[tuple[lmeval_spec.LmEvalTask, str | None], Prepared] = {}
_KEEP = 8  # prepared requests kept per process (each holds its datasets in memory)
_ACCURACY = ("acc", "acc_norm")  # metrics that get a chance level


@dataclass(frozen=True)
class LmEvalRun:
    scores: list[Score]
    samples: dict[str, list[dict]] | None
    """lm-eval's per-item records per task (doc, arguments, responses, metrics) when asked for."""
    results: dict
    """lm-eval's own results dict (results, groups, versions, n-shot, n-samples, configs)."""


def harness() -> str:
    from importlib.metadata import version

    return f"lm-eval {version('lm_eval')}"


def prepare(req: lmeval_spec.LmEvalTask, data_dir: str | None) -> Prepared:
    """lm-eval's task objects for one request, built once per process and data folder."""
    from interp.evals import lmeval_tasks

    key = (req, data_dir)
    if key not in _PREPARED:
        while len(_PREPARED) >= _KEEP:
            _PREPARED.pop(next(iter(_PREPARED)))
        _PREPARED[key] = lmeval_tasks.load(req, data_dir)
    return _PREPARED[key]


def run(loaded: Loaded, cfg: EvalCfg, task: str, log_samples: bool = False) -> LmEvalRun:
    """Evaluate one lm-eval request on the model as it is now."""
    lmeval_spec.require()
    from lm_eval import evaluator

    from interp.evals.lmeval_lm import SuiteLM
    from interp.evals.lmeval_tasks import quiet

    req = lmeval_spec.parse(task)
    prepared = prepare(req, cfg.lmeval_data)
    for name, t in prepared.tasks["tasks"].items():  # what simple_evaluate does before evaluate()
        t.set_config(key="num_fewshot", value=prepared.leaves[name].shots)
        t.set_fewshot_seed(seed=req.seed)
    limit = cfg.count(task)
    t0 = time.perf_counter()
    with quiet():  # lm-eval's generation (stop sequences) keeps 16 prompts a batch unless gen_batch says
        res = evaluator.evaluate(lm=SuiteLM(loaded, cfg.batch_tokens, cfg.gen_batch or 16), task_dict=prepared.tasks,
                                 limit=limit, log_samples=log_samples)
    if res is None:
        raise EvalError(f"lm-eval returned no results for '{task}'")
    return LmEvalRun(to_scores(res, prepared, limit, time.perf_counter() - t0), res.get("samples"), res)


def lmeval_scores(loaded: Loaded, cfg: EvalCfg, task: str) -> list[Score]:
    return run(loaded, cfg, task).scores


def _metrics(row: dict) -> dict[tuple[str, str], tuple[float, float | None]]:
    """{(metric, filter): (value, stderr)} of one lm-eval results row."""
    out = {}
    for key, value in row.items():
        if "," not in key or "_stderr," in key or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        se = row.get(f"{metric}_stderr,{filt}")
        out[(metric, filt)] = (float(value), float(se) if isinstance(se, (int, float)) else None)
    return out


def _name(metric: str, filt: str) -> str:
    return metric if filt == "none" else f"{metric},{filt}"


def _chance(task: Task, limit: int | None) -> float | None:
    """Mean of 1 / number of choices over the scored items of a multiple-choice task."""
    if task.get_config("output_type") != "multiple_choice":
        return None
    docs = list(task.eval_docs)
    docs = docs[:limit] if limit else docs
    return sum(1 / len(task.doc_to_choice(d)) for d in docs) / len(docs) if docs else None


def to_scores(res: dict, prepared: Prepared, limit: int | None, seconds: float) -> list[Score]:
    from lm_eval.api.metrics import aggregate_subtask_metrics, unweighted_mean_stderr

    req, tasks, groups = prepared.request, prepared.tasks["tasks"], prepared.tasks.get("groups", {})
    parent = {c: g for g, children in prepared.tasks.get("group_map", {}).items() for c in children}
    n_of = {t: int(res["n-samples"][t]["effective"]) for t in tasks}
    chance = {t: _chance(tasks[t], limit) for t in tasks}
    per_task = {t: _metrics(res["results"][t]) for t in tasks}
    h = harness()
    out: list[Score] = []

    def add(name: str, metric: str, filt: str, value: float, se: float | None, n: int, chn: float | None,
            shots: int, dataset: dict) -> None:
        version = res["versions"].get(name)
        out.append(Score(lmeval_spec.stored_name(name, shots, req.seed), _name(metric, filt), value, se, n,
                         chn if metric.removesuffix("_macro") in _ACCURACY else None,
                         {"name": name, "harness": h, "requested": req.name, "parent": parent.get(name),
                          "source": prepared.source, "limit": limit, "chat_template": False, "filter": filt,
                          **dataset},
                         round(seconds, 4), h, None if version is None else str(version), shots, req.seed))

    for name in tasks:
        leaf = prepared.leaves[name]
        ds = {"level": "task", "alias": res["results"][name].get("alias", name), "data": leaf.dataset,
              "docs": int(res["n-samples"][name]["original"]),
              "files": {s: {"path": leaf.files[s], "sha256": leaf.sha256[s]} for s in sorted(leaf.files)}}
        for (metric, filt), (value, se) in per_task[name].items():
            add(name, metric, filt, value, se, n_of[name], chance[name], leaf.shots, ds)

    for gname, group in groups.items():
        members = [t.task_name for t in group.get_all_tasks()]
        shots = max(prepared.leaves[m].shots for m in members)
        n = sum(n_of[m] for m in members)
        ds = {"level": "group", "alias": group.alias or gname, "tasks": len(members),
              "task_shots": sorted({prepared.leaves[m].shots for m in members})}
        chn = [c for m in members if (c := chance[m]) is not None]
        every = len(chn) == len(members)  # a chance level for every member task
        weighted = {a.metric: a.weight_by_size for a in group.aggregate_metric_list or []}
        micro_chance = sum(c * n_of[m] for c, m in zip(chn, members)) / n if every and n else None
        for (metric, filt), (value, se) in _metrics(res.get("groups", {}).get(gname, {})).items():
            how = "weighted by task size (micro)" if weighted.get(metric, True) else "unweighted over tasks"
            add(gname, metric, filt, value, se, n, micro_chance, shots,
                {**ds, "average": f"lm-eval's group aggregate, {how}"})
        for metric, filt in sorted(set.intersection(*(set(per_task[m]) for m in members))):
            values, ses = zip(*(per_task[m][(metric, filt)] for m in members))
            macro = aggregate_subtask_metrics(list(values), [n_of[m] for m in members], False)
            se = unweighted_mean_stderr(list(ses)) if None not in ses else None
            add(gname, f"{metric}_macro", filt, float(macro), se, n, sum(chn) / len(chn) if every else None,
                shots, {**ds, "average": f"macro: unweighted mean over the group's {len(members)} tasks "
                                         "(computed by the suite, not lm-eval)"})
    return out
