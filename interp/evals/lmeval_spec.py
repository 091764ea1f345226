"""Names of lm-evaluation-harness tasks in the suite: what a user asks for and what the store keeps.

A user asks for ``lm-eval:NAME[:Kshot][:sSEED]`` (in ``EvalCfg.tasks``, ``--tasks``) or
``NAME[:Kshot][:sSEED]`` (``invoke eval --lm-eval``). NAME is an lm-eval task or group
(``arc_easy``, ``mmlu``, ``gsm8k_cot``, ``mmlu_anatomy``); K is the number of few-shot
examples (default: the task's own, and 5 for the MMLU family: the Hendrycks protocol);
SEED orders the shots (default 1234, lm-eval's own default).

Every stored row names the task with the few-shot settings that produced it, because
published figures differ by them: ``lm-eval:arc_easy:0shot``, ``lm-eval:mmlu:5shot:s1234``,
``lm-eval:mmlu_anatomy:5shot:s1234``, ``lm-eval:gsm8k_cot:8shot:s1234``. With 0 shots the
seed changes nothing and is left out. The same numbers are in the ``evals`` columns
``num_fewshot`` and ``fewshot_seed``; ``harness`` says the row is lm-eval's.

Nothing here imports lm-eval: the core suite parses and validates task names without it.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass

PREFIX = "lm-eval:"
"""Task names starting with this are lm-eval tasks."""

BUDGET_KEY = "lm-eval"
"""The budget entry that counts items per lm-eval task (each subject of a group counts alone)."""

DEFAULT_SEED = 1234
"""lm-eval's default few-shot seed (``simple_evaluate(fewshot_random_seed=1234)``)."""

DEFAULT_SHOTS = {"mmlu": 5}
"""Shots where the published protocol differs from lm-eval's task default (MMLU: 5 from the dev
split, Hendrycks et al.); the key also covers its subgroups and subjects (``mmlu_*``)."""

INSTALL = "pip install 'interp[lmeval]' (lm-eval==0.4.13)"

_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?::(?P<shots>\d+)shot)?(?::s(?P<seed>\d+))?$")


@dataclass(frozen=True)
class LmEvalTask:
    """One requested lm-eval task or group with its few-shot settings."""

    name: str
    """lm-eval task, group or tag name (``arc_easy``, ``mmlu``, ``gsm8k_cot``)."""
    shots: int | None = None
    """Few-shot examples; None: the task's default (``DEFAULT_SHOTS``, else lm-eval's config)."""
    seed: int = DEFAULT_SEED
    """Seed of lm-eval's few-shot sampler (which examples, in which order)."""

    def default_shots(self) -> int | None:
        """The suite's default for this name (None: lm-eval's task config decides)."""
        for family, k in DEFAULT_SHOTS.items():
            if self.name == family or self.name.startswith(family + "_"):
                return k
        return None

    @property
    def spec(self) -> str:
        """How the user wrote it, normalised (``lm-eval:mmlu:5shot``)."""
        return PREFIX + self.name + (f":{self.shots}shot" if self.shots is not None else "") + \
            (f":s{self.seed}" if self.seed != DEFAULT_SEED else "")


def is_lmeval(task: str) -> bool:
    return task.startswith(PREFIX)


def parse(task: str) -> LmEvalTask:
    """``lm-eval:NAME[:Kshot][:sSEED]`` (the prefix is optional) -> ``LmEvalTask``; ValueError if malformed."""
    body = task[len(PREFIX):] if is_lmeval(task) else task
    m = _SPEC.match(body.strip())
    if not m:
        raise ValueError(f"malformed lm-eval task '{task}': write lm-eval:NAME, lm-eval:NAME:5shot or "
                         f"lm-eval:NAME:5shot:s1234 (NAME an lm-eval task or group such as arc_easy or mmlu)")
    shots = int(m["shots"]) if m["shots"] is not None else None
    return LmEvalTask(m["name"], shots, int(m["seed"]) if m["seed"] is not None else DEFAULT_SEED)


def stored_name(name: str, shots: int, seed: int) -> str:
    """The ``evals.task`` value of one lm-eval task or group scored with these few-shot settings."""
    return f"{PREFIX}{name}:{shots}shot" + (f":s{seed}" if shots > 0 else "")


def installed() -> bool:
    try:
        return importlib.util.find_spec("lm_eval") is not None
    except (ImportError, ValueError):  # a broken or blocked installation counts as missing
        return False


def require() -> None:
    """Raise a one-line ValueError naming the extra to install when lm-eval is missing."""
    if not installed():
        raise ValueError(f"lm-eval tasks need the lm-evaluation-harness: {INSTALL}")
