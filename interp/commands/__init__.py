"""Invoke task definitions, one module per study (``interp/commands/<study>.py``).

``tasks.py`` at the repository root imports every ``Task`` defined in these modules, so a
study adds its command by adding a module here, without touching ``tasks.py``.
Shared defaults live here so every task agrees on them.
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
}


def helps(*names: str, **extra: str) -> dict[str, str]:
    """Help texts for a task: model and store always, the named common flags, then extras.

    invoke refuses help for flags a task does not have, so each task names its own.
    """
    return {**HELP_COMMON, **{n: HELP_MORE[n] for n in names}, **extra}
