"""Reading the Hugging Face-format datasets through ``interp.data.hfdata`` with one clear error
for every way a local file can be unusable (missing, empty, wrong format)."""

from __future__ import annotations

from pathlib import Path

from interp.evals.config import EvalError


def load_hf(name: str, path: str | None, limit: int | None = None) -> tuple[list, str]:
    """(rows parsed by ``hfdata.LOADERS[name]``, source) or an ``EvalError`` naming the problem."""
    from interp.data import hfdata

    if name not in hfdata.LOADERS:
        raise EvalError(f"unknown dataset '{name}': use one of {', '.join(hfdata.LOADERS)}")
    source = path or (f"hub {hfdata.HUB[name][0]}" if name in hfdata.HUB else "no file given")
    if path is not None and Path(path).is_file() and Path(path).stat().st_size == 0:
        raise EvalError(f"dataset '{name}' file '{path}' is empty")
    kwargs = {} if limit is None and name == "c4" else {"limit": limit}
    from datasets.exceptions import DatasetsError

    try:
        rows = hfdata.LOADERS[name](path, **kwargs)
    except hfdata.DatasetError as e:
        raise EvalError(str(e)) from None
    except (DatasetsError, StopIteration, OSError, ValueError) as e:  # datasets' own, e.g. zero-row parquet
        raise EvalError(f"could not read dataset '{name}' from '{source}': it is empty or not in the "
                        f"{name} format ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no rows'})") from None
    if not rows:
        raise EvalError(f"dataset '{name}' from '{source}' is empty")
    return rows, source
