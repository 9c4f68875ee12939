"""The package's layering and module sizes, read from the source (every import, at any depth of a function)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dpcli"
MAX_LINES = 600


def imported_modules(source: str, package: str) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``source`` names; relative imports resolved
    against ``package`` (the dotted package the module lives in)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _package_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])


def test_the_import_scan_sees_imports_inside_functions_and_relative_ones():
    src = (
        "import numpy\n\ndef f():\n    if True:\n        from ..stages import core\n"
        "    import dpcli.stages.embeddings as e\n"
    )
    names = imported_modules(src, "dpcli.select")
    assert {"numpy", "dpcli.stages", "dpcli.stages.core", "dpcli.stages.embeddings"} <= names
    assert "dpcli.select.methods.base" in imported_modules("from .base import X\n", "dpcli.select.methods")


def test_select_does_not_import_stages():
    """Selection is a library under the stages: a selector that reaches into a stage inverts the layering."""
    bad = {}
    for path in (PACKAGE / "select").rglob("*.py"):
        names = sorted(m for m in imported_modules(path.read_text(), _package_of(path)) if m.startswith("dpcli.stages"))
        if names:
            bad[str(path.relative_to(PACKAGE))] = names
    assert bad == {}


def test_no_module_is_over_600_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}
