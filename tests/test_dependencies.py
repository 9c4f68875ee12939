"""Every third-party package imported under dpcli/ is declared in pyproject.toml, and every declared
runtime dependency is imported: a new import without its declaration fails here, not on a user's machine."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level_imports(source: str) -> set[str]:
    """The top-level module names a Python source imports (absolute imports only; relative ones are its own)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party(names: set[str]) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("__future__", "dpcli")}


_PROVIDERS = packages_distributions()  # import name -> distributions, from every installed package's metadata


def distributions(module: str) -> set[str]:
    """The distributions that provide ``module``; a package that is not installed here (an optional extra)
    is taken to be distributed under its own name."""
    return {_normal(d) for d in _PROVIDERS.get(module, [module])}


def declared() -> tuple[set[str], set[str]]:
    """(runtime dependencies, optional extras' dependencies), as normalized distribution names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {_normal(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in reqs}

    extras = set().union(*(names(v) for k, v in project.get("optional-dependencies", {}).items() if k != "dev"))
    return names(project["dependencies"]), extras


def undeclared(files: dict[str, str]) -> dict[str, set[str]]:
    """module -> the files importing it, for third-party modules no declared distribution provides."""
    runtime, extras = declared()
    missing: dict[str, set[str]] = {}
    for path, source in files.items():
        for module in third_party(top_level_imports(source)):
            if not distributions(module) & (runtime | extras):
                missing.setdefault(module, set()).add(path)
    return missing


def _package_sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "dpcli").rglob("*.py"))}


def test_every_imported_package_is_declared():
    assert undeclared(_package_sources()) == {}


def test_every_declared_dependency_is_imported():
    runtime, _ = declared()
    imported = set().union(
        *(distributions(m) for src in _package_sources().values() for m in third_party(top_level_imports(src)))
    )
    assert runtime - imported == set()


def test_the_check_sees_a_new_undeclared_import():
    """What the test above would report for a module that imports a package nobody declared (here a fake
    one and a real one that dpcli does not use), at any depth of the code, including lazy imports."""
    source = "import numpy\n\ndef f():\n    import yaml.loader\n    from notapackage_xyz import thing\n"
    assert undeclared({"dpcli/new.py": source}) == {"yaml": {"dpcli/new.py"}, "notapackage_xyz": {"dpcli/new.py"}}
    assert undeclared({"dpcli/ok.py": "from PIL import Image\nimport sklearn.datasets\nfrom . import x\n"}) == {}
