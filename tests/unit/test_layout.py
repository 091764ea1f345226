"""The layout's import rule: imports only point down.

Top to bottom: commands -> studies -> interventions -> evals -> capture -> data -> model ->
(interp.provenance) -> store. ``analyses`` and ``reports`` read the store and import nothing
from ``interp``; only studies and commands use analyses, only commands use reports; ``store``
imports none of the others. Every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOMS = ["base", "model", "data", "capture", "evals", "interventions", "studies", "commands"]
"""interp's rooms, bottom to top; ``base`` is the package root and ``interp.provenance``."""
RANK = {name: i for i, name in enumerate(ROOMS)}
PACKAGES = ("interp", "analyses", "store", "reports")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth. ``from m
    import x`` counts as importing m and m.x (x may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = (name or module_name(path)).split(".")
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            # `from interp import model` imports the submodule interp.model
            found += [(node.lineno, f"{mod}.{alias.name}") for alias in node.names]
    return found


def place(module: str) -> tuple[str, str | None]:
    """(top-level package, interp room or None) of a module name."""
    parts = module.split(".")
    if parts[0] != "interp":
        return parts[0], None
    if len(parts) == 1 or parts[1] in ("provenance", "__version__"):
        return "interp", "base"
    return "interp", parts[1] if parts[1] in RANK else "base"


def violation(importer: str, imported: str) -> str | None:
    src_pkg, src_room = place(importer)
    dst_pkg, dst_room = place(imported)
    if dst_pkg not in PACKAGES or src_pkg == dst_pkg == "store":
        return None
    if src_pkg == "store":
        return "store imports none of interp, analyses, reports"
    if src_pkg in ("analyses", "reports"):
        if dst_pkg in ("store", src_pkg):
            return None
        return f"{src_pkg} may import only store (and itself)"
    if src_pkg == "tasks":
        return None if dst_room == "commands" else "tasks.py imports commands only"
    assert src_pkg == "interp"
    if dst_pkg == "store":
        return None
    if dst_pkg == "analyses":
        return None if RANK[src_room] >= RANK["studies"] else "only studies and commands use analyses"
    if dst_pkg == "reports":
        return None if src_room == "commands" else "only commands use reports"
    if RANK[dst_room] > RANK[src_room]:
        return f"{src_room} is below {dst_room}: imports point down"
    return None


def source_files() -> list[Path]:
    files = [REPO / "tasks.py"]
    for pkg in PACKAGES:
        files += sorted((REPO / pkg).rglob("*.py"))
    return files


def test_every_import_points_down():
    bad = []
    for path in source_files():
        importer = "tasks" if path.name == "tasks.py" and path.parent == REPO else module_name(path)
        for line, imported in imported_modules(path):
            why = violation(importer, imported)
            if why:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {imported}: {why}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("importer, imported, ok", [
    ("interp.model.sites", "interp.capture.batching", False),
    ("interp.capture.capture", "interp.model.sites", True),
    ("interp.evals.kl", "interp.data.prompts", True),
    ("interp.data.prompts", "interp.evals.config", False),
    ("interp.interventions.heal", "interp.evals", True),
    ("interp.evals.ppl", "interp.interventions", False),
    ("interp.studies.sweep", "analyses.probes", True),
    ("interp.interventions.prune", "analyses.probes", False),
    ("interp.studies.layers", "reports.build", False),
    ("analyses.probes", "interp.model.loading", False),
    ("reports.charts", "store.queries", True),
    ("store.db", "interp.provenance", False),
    ("interp.model.loading", "interp.provenance", True),
    ("interp.provenance", "interp.model.sites", False),
])
def test_the_rule_itself(importer, imported, ok):
    assert (violation(importer, imported) is None) == ok


def test_relative_imports_inside_functions_are_found(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..studies import sweep\n    from . import ops\n")
    found = [m for _, m in imported_modules(probe, "interp.model.probe")]
    assert found == ["interp.studies", "interp.studies.sweep", "interp.model", "interp.model.ops"]
    assert violation("interp.model.probe", found[1])


def test_interp_is_rooms_not_loose_modules():
    loose = sorted(p.name for p in (REPO / "interp").glob("*.py"))
    assert len(loose) <= 3, loose
    rooms = sorted(p.name for p in (REPO / "interp").iterdir() if (p / "__init__.py").exists())
    assert rooms == sorted(ROOMS[1:]), rooms
    assert not (REPO / "store" / "reports").exists()


def test_tasks_py_names_every_task():
    """tasks.py imports each command by name (no globals() wiring), and every Task in
    interp/commands is one of them."""
    import importlib
    import pkgutil

    from invoke import Task

    import interp.commands as pkg

    text = (REPO / "tasks.py").read_text()
    assert "globals()" not in text
    tree = ast.parse(text)
    named = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    defined = set()
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"interp.commands.{info.name}")
        defined |= {name for name, obj in vars(mod).items() if isinstance(obj, Task) and obj.__module__ == mod.__name__}
    assert defined and defined <= named, sorted(defined - named)
