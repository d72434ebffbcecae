"""The dependency arrows of DESIGN.md, enforced: a package never imports one above it.

interfaces <- trustchain <- stoq <- hypermesh. The check parses every module of every package's
``src/`` (without importing it) and lists each forbidden import it finds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
LAYERS = ["hypermesh_interfaces", "trustchain", "stoq", "hypermesh"]
SOURCES = {
    "hypermesh_interfaces": REPO / "shared/interfaces/src/hypermesh_interfaces",
    "trustchain": REPO / "trustchain/src/trustchain",
    "stoq": REPO / "stoq/src/stoq",
    "hypermesh": REPO / "hypermesh/src/hypermesh",
}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", LAYERS)
def test_no_upward_imports(package: str) -> None:
    above = set(LAYERS[LAYERS.index(package) + 1 :])
    modules = sorted(SOURCES[package].rglob("*.py"))
    assert modules, f"no modules found for {package} under {SOURCES[package]}"
    violations = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in modules
        for name in sorted(imported_top_levels(path) & above)
    ]
    assert violations == []


def test_checker_sees_imports() -> None:
    # The checker itself must be able to fail: it finds the imports of this very file.
    assert {"ast", "pathlib", "pytest"} <= imported_top_levels(Path(__file__))
