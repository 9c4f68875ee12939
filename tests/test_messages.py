"""Every message and docstring in dpcli/ names only flags the CLI has and modules that exist."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import typer

from dpcli.cli import app

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?![\w])")
MODULE = re.compile(r"\bdpcli(?:\.[A-Za-z_]\w*)+")
# flags of other programs that dpcli's text quotes (torchrun's launcher option)
OTHERS = {
    "--nproc_per_node",
    "--nproc-per-node",  # torchrun's
    "--write",  # python -m dpcli.cli.reference, the generator of docs/reference-cli.md's tables
    "--prior",
}  # benchmarks/auto_evidence.py, which writes auto's tie table


def cli_flags() -> set[str]:
    """Every option name of every command (and the root), read from the Click commands Typer builds."""
    root = typer.main.get_command(app)
    flags = {"--help-all"}  # dpcli's own spelling of help with every panel unfolded
    for command in (root, *root.commands.values()):
        ctx = command.context_class(command, info_name="dpcli")
        for param in command.get_params(ctx):
            flags.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return flags


def texts(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string literal: messages, help, f-string parts and docstrings."""
    return [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _sources() -> list[Path]:
    return sorted((ROOT / "dpcli").rglob("*.py"))


def unknown_flags(flags: set[str]) -> list[str]:
    bad = []
    for path in _sources():
        for line, text in texts(ast.parse(path.read_text())):
            bad += [f"{path.relative_to(ROOT)}:{line} {f}" for f in FLAG.findall(text) if f not in flags | OTHERS]
    return bad


CHOICE = re.compile(r"--(method|estimator|solver)[ =]([a-z][\w-]*)")


def registered() -> dict[str, set[str]]:
    """The names each registry-backed flag accepts."""
    from dpcli.influence.base import ESTIMATORS
    from dpcli.select.registry import SELECTORS, SOLVERS

    return {"method": set(SELECTORS.names()), "estimator": set(ESTIMATORS.names()), "solver": set(SOLVERS)}


def wrong_choices(text: str, names: dict[str, set[str]]) -> list[str]:
    """``--method lissa`` and the like: a registry flag given a name it does not take."""
    return [
        f"--{flag} {value}"
        for flag, value in CHOICE.findall(text)
        if value not in names[flag] and value not in ("name", "x")
    ]  # placeholders in prose


def test_every_method_estimator_and_solver_named_in_dpcli_is_registered():
    names = registered()
    bad = []
    for path in _sources():
        for line, text in texts(ast.parse(path.read_text())):
            bad += [f"{path.relative_to(ROOT)}:{line} {c}" for c in wrong_choices(text, names)]
    assert bad == []
    assert wrong_choices("use --method lissa, --estimator cg or --solver=swap", names) == ["--method lissa"]


def _exists(dotted: str) -> bool:
    """A module, or an attribute of one (a class, a function), by its dotted name."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            obj = importlib.import_module(name)
            for attr in parts[cut:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


def test_every_flag_named_in_dpcli_is_one_the_cli_has():
    flags = cli_flags()
    assert {"--estimator", "--method", "--epsilon", "--no-wait", "--no-augment", "--help"} <= flags
    assert unknown_flags(flags) == []
    # the scan itself: flags in f-string parts and docstrings are found, a lookalike inside a word is not
    sample = ast.parse('"""Use --lissa-depth."""\nx = f"no --methods {y}, only --estimator or a--b"')
    assert [f for _, t in texts(sample) for f in FLAG.findall(t)] == ["--lissa-depth", "--methods", "--estimator"]


def test_every_dpcli_module_named_in_dpcli_exists():
    bad = []
    for path in _sources():
        for line, text in texts(ast.parse(path.read_text())):
            bad += [f"{path.relative_to(ROOT)}:{line} {m}" for m in MODULE.findall(text) if not _exists(m.rstrip("."))]
    assert bad == []
    assert _exists("dpcli.select.coverage.allocate") and not _exists("dpcli.influence_scale")
