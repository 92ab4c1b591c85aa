"""The package's layout follows the data's way: no module imports one of a later stage,
so that each stage can be read, tested and replaced on its own."""

from __future__ import annotations

import ast
from pathlib import Path

from support.run import REPO

# The stages in the order data flows through them; a module may import its own stage's
# modules and earlier stages' ones. (The package itself holds ``version`` and the lazy
# exports of the API: anything may ask it for the version.)
STAGES = [
    {"errors", "gcpause", "jsonstream", "jsonfile", "sizes"},  # leaves
    {"closure", "nixinput", "readers"},  # the closure
    {"graph", "strategies", "plan", "fleet", "measure"},  # graph, plan, costs
    {"store", "blobs", "tarwriter", "compression", "output", "cache", "layers", "image",
     "customisation", "runconfig"},  # store → layer tars → image config
    {"formats"},  # the formats
    {"verify", "inspect"},  # images read back
    {"options", "settings", "build", "api"},  # the pipeline and its API
    {"report", "cli"},  # for people
]  # fmt: skip


def _stage(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else module
    return next(n for n, stage in enumerate(STAGES) if top in stage)


def _runtime_imports(path: Path) -> set[str]:
    """The nixlayer modules imported at the top of a module: not those for type checking
    alone, nor those a function imports when it runs (on the path that needs them)."""
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nixlayer."):
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name.startswith("nixlayer.")}
    return imported


def test_no_module_imports_against_the_data_flow() -> None:
    backwards = []
    for path in sorted((REPO / "nixlayer").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts == ("nixlayer", "__init__"):
            continue
        module = ".".join(part for part in parts if part != "__init__")
        for imported in _runtime_imports(path):
            if _stage(imported) > _stage(module):
                backwards.append(f"{module} imports {imported}")
    assert backwards == []
