"""lm-eval tasks for the suite: one small task index, local data files, and fast offline failures.

Discovery: lm-eval's ``TaskManager()`` walks its whole task tree (about 14,700 entries, 4.5 s
here) every time it is built. The suite indexes only the directories of the tasks it needs
(``TASK_DIRS``: 91 entries in 0.02 s), plus ``DIR/tasks`` when the data folder has one; a name
outside them falls back to the whole tree, indexed once per process.

Local data (``interp.evals.lmeval_data``): a task reads split S of hub dataset P (config C) from
``DIR/P/C/S.jsonl`` (or ``.parquet``; ``DIR/P/S.jsonl`` without a config), in the hub's field names. The
suite writes a small override config per task (``include:`` lm-eval's own YAML, then
``dataset_path: json`` and ``data_files``) into a temporary task directory indexed after
lm-eval's, so prompts, metrics, filters and groups stay lm-eval's own. Splits the task
configures but the folder lacks are dropped when the task can run without them (a 0-shot
task needs only its evaluation split).

Offline: without a data folder the hub is the default; when it cannot be reached the hub
switches are set offline (Hugging Face's cache still serves), so a task without data fails
at once with a one-line error naming the file to write, not after a stack of HTTP retries.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from interp.evals.config import EvalError
from interp.evals.lmeval_data import (
    FORMATS,
    SPLITS,
    check_fields,
    describe,
    hub_dir,
    local_file,
    needed,
    offline,
    override_yaml,
    sha256,
)
from interp.evals.lmeval_spec import LmEvalTask

if TYPE_CHECKING:
    from lm_eval.tasks._index import Entry

TASK_DIRS = ("arc", "hellaswag", "winogrande", "openbookqa", "piqa", "glue/rte", "super_glue/boolq",
             "mmlu/default", "gsm8k", "lambada", "wikitext")
"""Directories under ``lm_eval/tasks`` the suite indexes: the seeds' task list (HellaSwag, ARC-e/c,
WinoGrande, RTE, OpenBookQA, BoolQ, MMLU, GSM8K) and a few common neighbours."""

@dataclass(frozen=True)
class Leaf:
    """One task lm-eval will score (a group expands to its member tasks)."""

    name: str
    shots: int
    """Shots lm-eval will use (the request's, unless the task's config pins 0)."""
    dataset: str
    """Hub dataset and config it reads, e.g. 'allenai/ai2_arc (ARC-Easy)'."""
    files: dict[str, str] = field(default_factory=dict)
    """Split -> local file (empty: the hub)."""
    sha256: dict[str, str] = field(default_factory=dict)
    """Split -> content hash of the local file."""


@dataclass
class Prepared:
    """What ``load`` built for one request: lm-eval's task dict and where its data came from."""

    request: LmEvalTask
    tasks: dict
    """``TaskManager.load`` result: {'tasks': {name: Task}, 'groups': {name: Group}, 'group_map': ...}."""
    leaves: dict[str, Leaf]
    kind: str
    """'task' or 'group' (a tag counts as a group of its tasks)."""
    source: str
    """'local DIR' or 'hub'."""


def lm_eval_root() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


@lru_cache(maxsize=4)
def _index(extra: tuple[str, ...] = ()) -> dict[str, Entry]:
    from lm_eval.tasks import TaskManager

    root = lm_eval_root()
    return TaskManager(include_defaults=False, include_path=[str(root / d) for d in TASK_DIRS] + list(extra)).task_index


@lru_cache(maxsize=1)
def _full_index() -> dict[str, Entry]:
    from lm_eval.tasks import TaskManager

    return TaskManager().task_index


def _find(name: str, extra: tuple[str, ...]) -> tuple[dict[str, Entry], list[str]]:
    """(index holding ``name``, task directories to include for it)."""
    index = _index(extra)
    if name in index:
        return index, []
    full = _full_index()
    if name not in full:
        raise EvalError(f"lm-eval has no task, group or tag '{name}': see `lm-eval ls tasks` for the names")
    dirs = sorted({str(e.yaml_path.parent) for e in full.values() if e.yaml_path is not None
                   and e.name in {name, *_members(name, full)}})
    return full, dirs


def _members(name: str, index: dict[str, Entry]) -> list[str]:
    """Every name a group or tag reaches (groups, tags and tasks), depth first."""
    from lm_eval.tasks._index import Kind

    entry = index.get(name)
    if entry is None or entry.kind in (Kind.TASK, Kind.PY_TASK):
        return []
    children = sorted(entry.tags) if entry.kind == Kind.TAG else [
        c if isinstance(c, str) else c.get("task") or c.get("group") for c in entry.cfg.get("task", [])]
    out = []
    for c in children:
        if isinstance(c, str):
            out += [c, *_members(c, index)]
    return out


def _leaf_names(name: str, index: dict[str, Entry]) -> list[str]:
    from lm_eval.tasks._index import Kind

    entry = index[name]
    if entry.kind in (Kind.TASK, Kind.PY_TASK):
        return [name]
    return [m for m in dict.fromkeys(_members(name, index))
            if m in index and index[m].kind in (Kind.TASK, Kind.PY_TASK)]


def _shots(req: LmEvalTask, cfg: dict) -> int:
    """lm-eval's rule (simple_evaluate): a config that pins 0 shots wins, else the request, else the config."""
    if cfg.get("num_fewshot") == 0:
        return 0
    asked = req.shots if req.shots is not None else req.default_shots()
    return int(asked if asked is not None else cfg.get("num_fewshot") or 0)


def _leaves(req: LmEvalTask, index: dict[str, Entry], data: Path | None) -> dict[str, Leaf]:
    from lm_eval.tasks._index import Kind

    leaves, missing = {}, []
    for name in _leaf_names(req.name, index):
        entry = index[name]
        cfg = entry.cfg or {}
        shots = _shots(req, cfg)
        if data is None:
            leaves[name] = Leaf(name, shots, describe(cfg))
            continue
        if entry.kind == Kind.PY_TASK or not cfg.get("dataset_path") or cfg.get("custom_dataset"):
            raise EvalError(f"lm-eval task '{name}' is defined in Python and cannot read local data files: "
                            f"run it from the hub (leave out --lm-eval-data)")
        splits: set[str] = {cfg[k] for k in SPLITS if cfg.get(k) is not None}
        files = {s: f for s in splits if (f := local_file(data, cfg, s))}
        for f in files.values():
            check_fields(name, cfg, f)
        missing += [data / hub_dir(cfg) / f"{s}.jsonl" for s in needed(cfg, shots) if s not in files]
        if len({f.suffix for f in files.values()}) > 1:
            raise EvalError(f"lm-eval task '{name}' mixes file formats in {data / hub_dir(cfg)}: "
                            f"use one of {', '.join(FORMATS)} for every split")
        leaves[name] = Leaf(name, shots, describe(cfg), {s: str(f) for s, f in files.items()},
                            {s: sha256(f) for s, f in files.items()})
    if missing:
        more = f" (and {len(missing) - 1} more files)" if len(missing) > 1 else ""
        raise EvalError(f"lm-eval task '{req.name}' has no local data at {missing[0]}{more}: write each split "
                        f"as JSON lines in the hub's field names there, or leave out --lm-eval-data to use the hub")
    return leaves


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """lm-eval's logger at ERROR: its per-task notices (our overrides replacing its configs, default
    aggregations) are expected here and would bury the sweep's own progress."""
    log = logging.getLogger("lm_eval")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def load(req: LmEvalTask, data_dir: str | None) -> Prepared:
    """Build lm-eval's tasks for one request, reading local files under ``data_dir`` (or the hub)."""
    from datasets.exceptions import DatasetsError
    from jinja2.exceptions import TemplateError
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind

    from interp.model.loading import _hub_reachable

    data = Path(data_dir).expanduser().resolve() if data_dir else None
    extra = (str(data / "tasks"),) if data is not None and (data / "tasks").is_dir() else ()
    index, dirs = _find(req.name, extra)
    leaves = _leaves(req, index, data)
    kind = "task" if index[req.name].kind in (Kind.TASK, Kind.PY_TASK) else "group"
    include = [str(lm_eval_root() / d) for d in TASK_DIRS] + list(extra) + dirs
    hub_ok = data is None and _hub_reachable()
    with tempfile.TemporaryDirectory(prefix="interp-lmeval-") as tmp:
        if data is not None:
            for leaf in leaves.values():
                (Path(tmp) / f"{leaf.name}.yaml").write_text(override_yaml(index[leaf.name], leaf.name, leaf.files))
            include.append(tmp)
        try:
            with quiet(), contextlib.nullcontext() if hub_ok else offline():
                tasks = TaskManager(include_defaults=False, include_path=include).load([req.name])
        except (OSError, DatasetsError, ValueError, KeyError, TypeError, IndexError, TemplateError) as e:
            # OSError covers ConnectionError and FileNotFoundError; the others are rows lm-eval's prompt
            # templates cannot use (an answer key not among the labels, a field of the wrong type)
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            if data is not None:
                raise EvalError(f"lm-eval task '{req.name}' could not use its local data under {data} "
                                f"({why}): check the rows against the hub's format") from None
            if not isinstance(e, (OSError, DatasetsError)):
                raise
            leaf = next(iter(leaves.values()))
            cfg = index[leaf.name].cfg or {}
            split = needed(cfg, leaf.shots)[0]
            where = f"failed ({why})" if hub_ok else "is unreachable and not cached here"
            raise EvalError(
                f"lm-eval task '{req.name}' reads {leaf.dataset} from the Hugging Face hub, which {where}: save its "
                f"{split} split as DIR/{hub_dir(cfg)}/{split}.jsonl (the hub's field names; likewise for its other "
                f"tasks and splits) and pass --lm-eval-data DIR") from None
    return Prepared(req, tasks, leaves, kind, f"local {data}" if data is not None else "hub")
