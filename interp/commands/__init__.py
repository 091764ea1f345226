"""The commands room: the bodies of the invoke tasks, one module per command
(``interp/commands/<name>.py``), plus ``cli`` (one-line errors, flag parsing, tables).

``tasks.py`` at the repository root imports each command by name, so it reads as the list of
what the suite can do; a new command is a module here and one import line there.
Shared defaults live here so every task agrees on them. Commands sit at the top of the
import order: they may import every room below them, and nothing imports them.
"""

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_STORE = "interp.duckdb"
HELP_COMMON = {
    "model": "smollm2-135m-instruct (embedded default), a local model directory, or a hub id",
    "store": "DuckDB store file (default interp.duckdb in the working directory)",
}
HELP_MORE = {
    "quick": "quick budget (minutes on a laptop CPU); without it the full study runs",
    "dtype": "float32 (default), bfloat16 or float16",
    "device": "cpu, cuda, cuda:1, ...",
    "device_map": "accelerate device map, e.g. auto, for models larger than one device",
    "revision": "hub branch/tag/commit",
    "lm_eval": "lm-evaluation-harness tasks scored at every point too, comma-separated NAME[:Kshot][:sSEED] "
               "(e.g. arc_easy,mmlu:5shot); local data from INTERP_LMEVAL_DATA=DIR; needs pip install "
               "'interp[lmeval]'",
}


def helps(*names: str, **extra: str) -> dict[str, str]:
    """Help texts for a task: model and store always, the named common flags, then extras.

    invoke refuses help for flags a task does not have, so each task names its own.
    """
    return {**HELP_COMMON, **{n: HELP_MORE[n] for n in names}, **extra}
