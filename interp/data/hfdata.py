"""Hugging Face datasets in their real formats: WikiText-2, C4, MMLU, GSM8K, BoolQ; and the user's own
text corpus (``text``: a .txt file, one document per line, or a table with a ``text`` column).

Each loader takes ``path=None`` (the hub, through ``datasets.load_dataset``) or a local
file/directory in the same format (parquet, json/jsonl[.gz], csv, or a ``save_to_disk``
folder), so the same parsing code is exercised offline.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp.model.loading import _hub_reachable


class DatasetError(ValueError):
    """Unknown, unreachable or malformed dataset."""


@dataclass(frozen=True)
class MCItem:
    """Multiple choice: score each choice by log-likelihood after the question."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str | None = None


@dataclass(frozen=True)
class GenItem:
    """Short generated answer checked by exact match on ``target``."""

    id: str
    question: str
    target: str
    solution: str | None = None


HUB = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "test"),
    "c4": ("allenai/c4", "en", "validation"),
    "mmlu": ("cais/mmlu", "all", "test"),
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "boolq": ("google/boolq", None, "validation"),
}
"""Our name -> (hub id, config, split) of the canonical copy."""

_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".gz": "json", ".csv": "csv"}


def _load(name: str, path: str | Path | None, limit: int | None, streaming: bool = False) -> list[dict[str, Any]]:
    import datasets

    if path is not None:
        path = Path(path).expanduser()
        if not path.exists():
            raise DatasetError(f"dataset file '{path}' does not exist")
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                split = HUB[name][2] if name in HUB else "train"
                ds = ds[split] if split in ds else next(iter(ds.values()))
        else:
            builder = _BUILDERS.get(path.suffix)
            if builder is None:
                raise DatasetError(f"cannot read '{path}': use parquet, json, jsonl, jsonl.gz or csv")
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        rows = ds if limit is None else ds.select(range(min(limit, len(ds))))
        return list(rows)
    hub_id, config, split = HUB[name]
    if not _hub_reachable():
        raise DatasetError(
            f"cannot reach the Hugging Face hub to load '{hub_id}' (offline?): use the embedded "
            f"offline data or pass a local file in the same format with --data-path"
        )
    ds = datasets.load_dataset(hub_id, config, split=split, streaming=streaming)
    if streaming:
        return list(ds.take(limit or 1000))
    return list(ds if limit is None else ds.select(range(min(limit, len(ds)))))


def _require(rows: list[dict[str, Any]], fields: tuple[str, ...], name: str) -> None:
    if not rows:
        raise DatasetError(f"dataset '{name}' is empty")
    missing = [f for f in fields if f not in rows[0]]
    if missing:
        raise DatasetError(f"dataset '{name}' lacks field(s) {missing}; found {list(rows[0])}")


def wikitext2(path: str | Path | None = None, limit: int | None = None) -> list[str]:
    """WikiText-2 raw: one line per row, joined back into the article stream."""
    rows = _load("wikitext2", path, limit)
    _require(rows, ("text",), "wikitext2")
    text = "".join(r["text"] for r in rows)
    return [text] if text.strip() else []


def c4(path: str | Path | None = None, limit: int | None = 256) -> list[str]:
    """C4 English validation documents (streamed from the hub: never the whole split)."""
    rows = _load("c4", path, limit, streaming=True)
    _require(rows, ("text",), "c4")
    return [r["text"] for r in rows if r["text"].strip()]


TABLE_SUFFIXES = tuple(_BUILDERS)
"""File types the hub-format loaders read (or a ``save_to_disk`` folder)."""
TEXT_SUFFIXES = (".txt", *TABLE_SUFFIXES)
"""File types of a local ``text`` corpus (or a ``save_to_disk`` folder)."""


def text(path: str | Path | None = None, limit: int | None = None) -> list[str]:
    """The user's own corpus: a .txt file (one document per non-blank line) or a JSONL/CSV/parquet file
    or saved folder with a ``text`` column (one document per row)."""
    if path is None:
        raise DatasetError("the 'text' corpus is a local file: give its path (one document per line, "
                           "or JSONL with a 'text' field)")
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"dataset file '{p}' does not exist")
    if p.is_file() and p.suffix not in TEXT_SUFFIXES:
        raise DatasetError(f"cannot read text corpus '{p}': use .txt (one document per line), .jsonl/.json/.csv/"
                           ".parquet with a 'text' column")
    if p.suffix == ".txt":
        docs = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        return docs if limit is None else docs[:limit]
    rows = _load("text", p, limit)
    _require(rows, ("text",), "text")
    return [str(r["text"]) for r in rows if r["text"] and str(r["text"]).strip()]


def mmlu(path: str | Path | None = None, limit: int | None = None) -> list[MCItem]:
    rows = _load("mmlu", path, limit)
    _require(rows, ("question", "choices", "answer"), "mmlu")
    return [MCItem(f"mmlu-{i:05d}", r["question"], tuple(r["choices"]), int(r["answer"]), r.get("subject"))
            for i, r in enumerate(rows)]


def boolq(path: str | Path | None = None, limit: int | None = None) -> list[MCItem]:
    """BoolQ as two-way multiple choice (no / yes) over passage + question."""
    rows = _load("boolq", path, limit)
    _require(rows, ("question", "answer", "passage"), "boolq")
    return [MCItem(f"boolq-{i:05d}", f"{r['passage']}\nQuestion: {r['question']}?", ("no", "yes"),
                   int(bool(r["answer"]))) for i, r in enumerate(rows)]


_GSM_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def gsm8k_target(answer: str) -> str:
    """The final number after '####', without thousands separators."""
    m = _GSM_FINAL.search(answer)
    if not m:
        raise DatasetError(f"GSM8K answer lacks '#### <number>': {answer[-60:]!r}")
    return m.group(1).replace(",", "").strip()


def gsm8k(path: str | Path | None = None, limit: int | None = None) -> list[GenItem]:
    rows = _load("gsm8k", path, limit)
    _require(rows, ("question", "answer"), "gsm8k")
    return [GenItem(f"gsm8k-{i:05d}", r["question"], gsm8k_target(r["answer"]), r["answer"])
            for i, r in enumerate(rows)]


LOADERS: dict[str, Callable[..., list[str] | list[MCItem] | list[GenItem]]] = {
    "wikitext2": wikitext2, "c4": c4, "text": text, "mmlu": mmlu, "boolq": boolq, "gsm8k": gsm8k}
