"""Every DPCLI_* variable is read in dpcli/env.py, through one typed, documented function, and listed in the
reference's one table; no other module reads one."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from dpcli import env
from dpcli.errors import DpcliError

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"DPCLI_[A-Z_]+")


def _table() -> set[str]:
    text = (ROOT / "docs" / "reference-cli.md").read_text()
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| `(DPCLI_[A-Z_]+)` \|", section, re.M)}


def _accessors() -> dict[str, str]:
    """variable -> the public env.py function whose docstring names it."""
    found: dict[str, str] = {}
    for name, fn in inspect.getmembers(env, inspect.isfunction):
        if name.startswith("_") or fn.__module__ != env.__name__ or name == "parse_size":
            continue
        names = set(NAME.findall(inspect.getdoc(fn) or ""))
        assert len(names) == 1, f"env.{name} must document exactly one variable, names {sorted(names)}"
        assert inspect.signature(fn).return_annotation != inspect.Signature.empty, f"env.{name} is untyped"
        (var,) = names
        assert var not in found, f"{var} has two accessors: {found[var]} and {name}"
        found[var] = name
    return found


def test_the_table_and_env_py_list_the_same_variables_one_accessor_each():
    read = set(NAME.findall(inspect.getsource(env)))
    assert _table() == read == set(_accessors())


def _env_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, variable) of every os.environ[...] / os.environ.get(...) / os.getenv(...) of a DPCLI_ name, the
    name given literally or through a module constant."""
    consts = {
        t.id: n.value.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }

    def value(node: ast.AST) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return consts.get(node.id, "") if isinstance(node, ast.Name) else ""

    def is_environ(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    hits = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and is_environ(node.value):
            key = node.slice
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.args
            and (
                (node.func.attr in ("get", "pop", "setdefault") and is_environ(node.func.value))
                or node.func.attr == "getenv"
            )
        ):
            key = node.args[0]
        if key is not None and value(key).startswith("DPCLI_"):
            hits.append((node.lineno, value(key)))
    return hits


def test_no_module_but_env_py_reads_a_dpcli_variable():
    offenders = []
    for path in sorted((ROOT / "dpcli").rglob("*.py")):
        if path.name == "env.py" and path.parent.name == "dpcli":
            continue
        offenders += [f"{path.relative_to(ROOT)}:{line} {var}" for line, var in _env_reads(ast.parse(path.read_text()))]
    assert offenders == []
    assert _env_reads(
        ast.parse(
            'import os\nV = "DPCLI_X"\nos.environ.get(V)\nos.getenv("DPCLI_Y")\n'
            'os.environ["DPCLI_Z"]\nos.environ.get("HOME")'
        )
    ) == [(3, "DPCLI_X"), (4, "DPCLI_Y"), (5, "DPCLI_Z")]


@pytest.mark.parametrize(
    "accessor, variable, bad",
    [
        (env.solve_budget, "DPCLI_SOLVE_BUDGET", "lots"),
        (env.memory_budget, "DPCLI_MEMORY_BUDGET", "1X"),
        (env.probs_budget, "DPCLI_PROBS_BUDGET", "-1"),
        (env.progress_interval, "DPCLI_PROGRESS_INTERVAL", "0"),
        (env.dist_timeout, "DPCLI_DIST_TIMEOUT", "soon"),
        (env.loader_workers, "DPCLI_LOADER_WORKERS", "many"),
        (env.cache_workers, "DPCLI_CACHE_WORKERS", "-2"),
        (env.jpeg_decode, "DPCLI_JPEG_DECODE", "gpu"),
    ],
)
def test_a_malformed_value_is_one_line_naming_the_variable(monkeypatch, accessor, variable, bad):
    monkeypatch.setenv(variable, bad)
    with pytest.raises(DpcliError, match=f"^{variable} must ") as err:
        accessor()
    assert "\n" not in str(err.value)


def test_values_and_defaults(monkeypatch, tmp_path):
    for var in (
        "DPCLI_SOLVE_BUDGET",
        "DPCLI_DIST_TIMEOUT",
        "DPCLI_CACHE_WORKERS",
        "DPCLI_NO_WAIT",
        "DPCLI_RUNS",
        "DPCLI_DATA",
        "DPCLI_JPEG_DECODE",
    ):
        monkeypatch.delenv(var, raising=False)
    assert env.solve_budget() == 4 << 30 and env.dist_timeout() == 1800.0 and env.jpeg_decode() == "auto"
    assert not env.no_wait() and env.runs_root() == Path("dpcli-runs") and 1 <= env.cache_workers() <= 16
    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", "1.5G")
    monkeypatch.setenv("DPCLI_DIST_TIMEOUT", "5")
    monkeypatch.setenv("DPCLI_CACHE_WORKERS", "3")
    monkeypatch.setenv("DPCLI_NO_WAIT", "yes")
    monkeypatch.setenv("DPCLI_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("DPCLI_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DPCLI_JPEG_DECODE", " PIL ")
    assert env.solve_budget() == 3 << 29 and env.dist_timeout() == 5.0 and env.cache_workers() == 3
    assert env.no_wait() and env.runs_root() == tmp_path / "runs" and env.data_root() == tmp_path / "data"
    assert env.jpeg_decode() == "pil"
