"""lm-eval tasks for the suite: one small task index, local data files, and fast offline failures.

Discovery: lm-eval's ``TaskManager()`` walks its whole task tree (about 14,700 entries, 4.5 s
here) every time it is built. The suite indexes only the directories of the tasks it needs
(``TASK_DIRS``: 91 entries in 0.02 s), plus ``DIR/tasks`` when the data folder has one; a name
outside them falls back to the whole tree, indexed once per process.

Local data: a task reads split S of hub dataset P (config C) from ``DIR/P/C/S.jsonl`` (or
``.parquet``; ``DIR/P/S.jsonl`` when the dataset has no config), in the hub's field names. The
suite writes a one-line override config per task (``include:`` lm-eval's own YAML, then
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
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from interp.evals.config import EvalError
from interp.evals.lmeval_spec import LmEvalTask

TASK_DIRS = ("arc", "hellaswag", "winogrande", "openbookqa", "piqa", "glue/rte", "super_glue/boolq",
             "mmlu/default", "gsm8k", "lambada", "wikitext")
"""Directories under ``lm_eval/tasks`` the suite indexes: the seeds' task list (HellaSwag, ARC-e/c,
WinoGrande, RTE, OpenBookQA, BoolQ, MMLU, GSM8K) and a few common neighbours."""

FIELDS = {
    "allenai/ai2_arc": ("question", "choices", "answerKey"),
    "Rowan/hellaswag": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    "allenai/winogrande": ("sentence", "option1", "option2", "answer"),
    "allenai/openbookqa": ("question_stem", "choices", "answerKey"),
    "baber/piqa": ("goal", "sol1", "sol2", "label"),
    "nyu-mll/glue": ("sentence1", "sentence2", "label"),
    "aps/super_glue": ("question", "passage", "label"),
    "cais/mmlu": ("question", "choices", "answer"),
    "openai/gsm8k": ("question", "answer"),
    "EleutherAI/lambada_openai": ("text",),
    "cimec/lambada": ("text",),
    "EleutherAI/wikitext_document_level": ("page",),
}
"""Hub fields the prompts of the suite's tasks read, per dataset: a local file without them would be
scored silently wrong (a missing field renders as its own name), so it is refused."""

FORMATS = {".jsonl": "json", ".parquet": "parquet"}
"""Local split file suffix -> the ``datasets`` builder that reads it (first match wins)."""

_SPLITS = ("training_split", "validation_split", "test_split", "fewshot_split")


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
def _index(extra: tuple[str, ...] = ()) -> dict:
    from lm_eval.tasks import TaskManager

    root = lm_eval_root()
    return TaskManager(include_defaults=False, include_path=[str(root / d) for d in TASK_DIRS] + list(extra)).task_index


@lru_cache(maxsize=1)
def _full_index() -> dict:
    from lm_eval.tasks import TaskManager

    return TaskManager().task_index


def _find(name: str, extra: tuple[str, ...]) -> tuple[dict, list[str]]:
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


def _members(name: str, index: dict) -> list[str]:
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


def _leaf_names(name: str, index: dict) -> list[str]:
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


def _needed(cfg: dict, shots: int) -> list[str]:
    """Splits a task cannot run without: its evaluation split, and its few-shot source when shots > 0."""
    need = [cfg.get("test_split") or cfg.get("validation_split")]
    if shots > 0 and not (cfg.get("fewshot_config") or {}).get("samples"):
        need.append(cfg.get("fewshot_split") or cfg.get("training_split") or cfg.get("validation_split")
                    or cfg.get("test_split"))
    return [s for s in dict.fromkeys(need) if s]


def _hub_dir(cfg: dict) -> Path:
    path = Path(str(cfg.get("dataset_path")))
    return path / str(cfg["dataset_name"]) if cfg.get("dataset_name") else path


def _describe(cfg: dict) -> str:
    return f"{cfg.get('dataset_path')}" + (f" ({cfg['dataset_name']})" if cfg.get("dataset_name") else "")


def _local_file(data: Path, cfg: dict, split: str) -> Path | None:
    for suffix in FORMATS:
        p = data / _hub_dir(cfg) / f"{split}{suffix}"
        if p.is_file():
            return p
    return None


def _first_row_fields(path: Path) -> list[str] | None:
    """Field names of a local split file (first JSON line, or the Parquet schema); None if it is empty."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    with path.open(encoding="utf-8") as f:
        line = next((x for x in f if x.strip()), None)
    if line is None:
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        raise EvalError(f"{path} is not JSON lines: write one JSON object per line, in the hub's field names") from None
    if not isinstance(row, dict):
        raise EvalError(f"{path} holds {type(row).__name__}s, not JSON objects: one object per line")
    return list(row)


def _check_fields(name: str, cfg: dict, path: Path) -> None:
    fields = _first_row_fields(path)
    if fields is None:
        raise EvalError(f"lm-eval task '{name}': {path} is empty")
    missing = [f for f in FIELDS.get(str(cfg.get("dataset_path")), ()) if f not in fields]
    if missing:
        raise EvalError(f"lm-eval task '{name}': {path} lacks the hub's field(s) {', '.join(missing)} "
                        f"(it has {', '.join(fields[:8]) or 'none'}): write the rows in {_describe(cfg)}'s format")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _leaves(req: LmEvalTask, index: dict, data: Path | None) -> dict[str, Leaf]:
    from lm_eval.tasks._index import Kind

    leaves, missing = {}, []
    for name in _leaf_names(req.name, index):
        entry = index[name]
        cfg = entry.cfg or {}
        shots = _shots(req, cfg)
        if data is None:
            leaves[name] = Leaf(name, shots, _describe(cfg))
            continue
        if entry.kind == Kind.PY_TASK or not cfg.get("dataset_path") or cfg.get("custom_dataset"):
            raise EvalError(f"lm-eval task '{name}' is defined in Python and cannot read local data files: "
                            f"run it from the hub (leave out --lm-eval-data)")
        files = {s: f for s in {cfg.get(k) for k in _SPLITS} - {None} if (f := _local_file(data, cfg, s))}
        for f in files.values():
            _check_fields(name, cfg, f)
        missing += [data / _hub_dir(cfg) / f"{s}.jsonl" for s in _needed(cfg, shots) if s not in files]
        if len({f.suffix for f in files.values()}) > 1:
            raise EvalError(f"lm-eval task '{name}' mixes file formats in {data / _hub_dir(cfg)}: "
                            f"use one of {', '.join(FORMATS)} for every split")
        leaves[name] = Leaf(name, shots, _describe(cfg), {s: str(f) for s, f in files.items()},
                            {s: _sha256(f) for s, f in files.items()})
    if missing:
        more = f" (and {len(missing) - 1} more files)" if len(missing) > 1 else ""
        raise EvalError(f"lm-eval task '{req.name}' has no local data at {missing[0]}{more}: write each split "
                        f"as JSON lines in the hub's field names there, or leave out --lm-eval-data to use the hub")
    return leaves


def _override(entry, leaf: Leaf) -> str:
    """A task config that is lm-eval's own with the data read from local files."""
    import yaml

    cfg = entry.cfg or {}
    builder = FORMATS[Path(next(iter(leaf.files.values()))).suffix]
    over = {"include": str(entry.yaml_path), "task": leaf.name, "tag": [], "dataset_path": builder,
            "dataset_name": None, "dataset_kwargs": {"data_files": dict(sorted(leaf.files.items()))}}
    for key in _SPLITS:  # a configured split without a file: the task runs without it (see _needed)
        if cfg.get(key) and cfg[key] not in leaf.files:
            over[key] = None
    return yaml.safe_dump(over, sort_keys=False)


@contextlib.contextmanager
def quiet():
    """lm-eval's logger at ERROR: its per-task notices (our overrides replacing its configs, default
    aggregations) are expected here and would bury the sweep's own progress."""
    log = logging.getLogger("lm_eval")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def offline():
    """Hugging Face hub and datasets in offline mode (their module switches and environment), restored on exit."""
    import datasets.config
    import huggingface_hub.constants as hub

    saved = (datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE,
             {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")})
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved[0], saved[1]
        for k, v in saved[2].items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
                (Path(tmp) / f"{leaf.name}.yaml").write_text(_override(index[leaf.name], leaf))
            include.append(tmp)
        try:
            with quiet(), contextlib.nullcontext() if hub_ok else offline():
                tasks = TaskManager(include_defaults=False, include_path=include).load([req.name])
        except (OSError, DatasetsError, ValueError, KeyError, TypeError, IndexError, TemplateError) as e:
            # OSError covers ConnectionError and FileNotFoundError; the others are rows lm-eval's prompt
            # templates cannot use (an answer key not among the labels, a field of the wrong type)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            if data is not None:
                raise EvalError(f"lm-eval task '{req.name}' could not use its local data under {data} "
                                f"({first}): check the rows against the hub's format") from None
            if not isinstance(e, (OSError, DatasetsError)):
                raise
            first = next(iter(leaves.values()))
            cfg = index[first.name].cfg or {}
            split = _needed(cfg, first.shots)[0]
            raise EvalError(
                f"lm-eval task '{req.name}' reads {first.dataset} from the Hugging Face hub, which is unreachable "
                f"and not cached here: save its {split} split as DIR/{_hub_dir(cfg)}/{split}.jsonl (the hub's "
                f"field names; likewise for its other tasks and splits) and pass --lm-eval-data DIR") from None
    return Prepared(req, tasks, leaves, kind, f"local {data}" if data is not None else "hub")
