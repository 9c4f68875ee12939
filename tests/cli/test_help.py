"""Help as a new user reads it: fast to start, one screen for prune, no Python types, true defaults."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dpcli.cli import app, main
from dpcli.config import default_train_config
from dpcli.select.base import SELECTORS

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("train", "influence", "prune", "retrain", "verify-bound")
HEAVY = ("torch", "h5py", "torchvision", "matplotlib", "sklearn")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100", "PYTHONWARNINGS": "ignore", **extra}


def _help(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dpcli", *args], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_cli_import_loads_no_heavy_library():
    code = "import sys, dpcli.cli; print(','.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported at CLI start-up: {proc.stdout.strip()}"


def test_prune_help_fits_one_screen_and_help_all_shows_the_rest():
    short, full = _help("prune", "--help"), _help("prune", "--help-all")
    assert len(short.splitlines()) <= 55, len(short.splitlines())
    for common in ("--epsilon", "--prune-ratio", "--prune-count", "--method", "--solver", "--out", "--indices-out"):
        assert common in short
    for folded in ("--arch", "--estimator", "--lissa-depth", "--strata", "--train-seed"):
        assert folded not in short and folded in full
    assert "Pruning target (give exactly one)" in short and "--help-all" in short
    assert all(name in short for name in SELECTORS.names())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_leaks_no_python_types_and_prints_each_default_once(command):
    text = _help(command, "--help-all")
    assert not re.search(r"<(int|float|str|bool|Path|list\[[^\]]*\])>", text), text
    assert "{" not in text.split("\n", 3)[1]  # the usage line: DATASET, not {DATASET}
    for line in text.splitlines():
        assert line.count("[default") <= 1, line


def test_every_option_has_help_and_one_meaning():
    import typer

    command = typer.main.get_command(app)
    meaning: dict[str, set[str]] = {}
    for name, sub in command.commands.items():
        for param in sub.params:
            if param.param_type_name == "option":
                assert param.help, f"{name} {param.opts} has no help"
                meaning.setdefault(param.opts[0], set()).add(param.help.split(".")[0])
    assert "--seed" not in meaning and "--influence-method" not in meaning
    assert meaning["--method"] == {next(iter(meaning["--method"]))} and "Selector" in next(iter(meaning["--method"]))
    assert all("Influence estimator" in h for h in meaning["--estimator"])


def test_training_defaults_shown_are_the_ones_used():
    text = " ".join(_help("train", "--help").replace("│", " ").split())
    for dataset, key in (("digits", "digits"), ("cifar10", "cifar")):
        used = default_train_config(dataset, augment=False)
        for option, value in (
            ("--lr", used.lr),
            ("--batch-size", used.batch_size),
            ("--epochs", used.epochs),
            ("--arch", used.arch),
            ("--depth", used.depth),
        ):
            section = text[text.index(option + " ") :]
            section = section[: section.index("]")]
            assert re.search(rf"\b{key}\w*(, \w+)* {re.escape(str(value))}\b", section), (option, section)


def test_version_and_bare_command(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("dpcli ")
    assert main([]) == 2
    assert "Usage: dpcli" in capsys.readouterr().out
