"""Local data for lm-eval tasks: where each split's file lives, whether its rows are in the hub's
format, lm-eval's own task config pointed at it, and the hub's offline switches.

Split S of hub dataset P (config C) lives at ``DIR/P/C/S.jsonl`` (or ``.parquet``; ``DIR/P/S.jsonl``
when the dataset has no config), in the hub's field names (``FIELDS`` names those the suite's tasks
read). A task needs its evaluation split, and its few-shot split when it has shots (``needed``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interp.evals.config import EvalError

if TYPE_CHECKING:
    from lm_eval.tasks._index import Entry

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

SPLITS = ("training_split", "validation_split", "test_split", "fewshot_split")
"""The split keys of an lm-eval task config."""


def needed(cfg: dict, shots: int) -> list[str]:
    """Splits a task cannot run without: its evaluation split, and its few-shot source when shots > 0."""
    need = [cfg.get("test_split") or cfg.get("validation_split")]
    if shots > 0 and not (cfg.get("fewshot_config") or {}).get("samples"):
        need.append(cfg.get("fewshot_split") or cfg.get("training_split") or cfg.get("validation_split")
                    or cfg.get("test_split"))
    return [s for s in dict.fromkeys(need) if s]


def hub_dir(cfg: dict) -> Path:
    """The task's dataset as a relative folder: P/C, or P without a config."""
    path = Path(str(cfg.get("dataset_path")))
    return path / str(cfg["dataset_name"]) if cfg.get("dataset_name") else path


def describe(cfg: dict) -> str:
    """'allenai/ai2_arc (ARC-Easy)'."""
    return f"{cfg.get('dataset_path')}" + (f" ({cfg['dataset_name']})" if cfg.get("dataset_name") else "")


def local_file(data: Path, cfg: dict, split: str) -> Path | None:
    for suffix in FORMATS:
        p = data / hub_dir(cfg) / f"{split}{suffix}"
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


def check_fields(name: str, cfg: dict, path: Path) -> None:
    """One-line EvalError unless the file's rows carry the hub fields the task's prompts read."""
    fields = _first_row_fields(path)
    if fields is None:
        raise EvalError(f"lm-eval task '{name}': {path} is empty")
    missing = [f for f in FIELDS.get(str(cfg.get("dataset_path")), ()) if f not in fields]
    if missing:
        raise EvalError(f"lm-eval task '{name}': {path} lacks the hub's field(s) {', '.join(missing)} "
                        f"(it has {', '.join(fields[:8]) or 'none'}): write the rows in {describe(cfg)}'s format")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def override_yaml(entry: Entry, name: str, files: dict[str, str]) -> str:
    """A task config that is lm-eval's own (``include:`` its YAML) with the data read from ``files``
    (split -> local file); splits the task configures but ``files`` lacks are turned off (see ``needed``)."""
    import yaml

    cfg = entry.cfg or {}
    builder = FORMATS[Path(next(iter(files.values()))).suffix]
    over: dict[str, Any] = {"include": str(entry.yaml_path), "task": name, "tag": [], "dataset_path": builder,
            "dataset_name": None, "dataset_kwargs": {"data_files": dict(sorted(files.items()))}}
    for key in SPLITS:
        if cfg.get(key) and cfg[key] not in files:
            over[key] = None
    return yaml.safe_dump(over, sort_keys=False)


@contextlib.contextmanager
def offline() -> Iterator[None]:
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
