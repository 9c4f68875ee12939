"""The front door through Typer itself: option errors are one line with exit code 2, help and --version
answer, and no help screen writes a file anywhere (no replay caches)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpcli import __version__
from dpcli.cli import main

ROOT = Path(__file__).resolve().parents[2]

ERRORS = [  # (argv, the one line Click words; Typer prints it, dpcli adds where to look)
    (
        ["prune", "x.h5", "--epsilom", "1"],
        "No such option: --epsilom (Possible options: --epsilon, --estimator, --precision) (see 'dpcli prune --help')",
    ),
    (
        ["prune", "x.h5", "--buckts", "2"],
        "No such option: --buckts (Possible options: --buckets, --out) (see 'dpcli prune --help')",
    ),
    (["prune", "x.h5", "--epsilon"], "Option '--epsilon' requires an argument."),
    (["prune", "x.h5", "--json=yes"], "Option '--json' does not take a value."),
    (["prnue", "x.h5"], "No such command 'prnue'. Did you mean 'prune'? (see 'dpcli --help')"),
    (["--versoin"], "No such option: --versoin (Possible options: --version) (see 'dpcli --help')"),
    (["train", "digits", "--lr"], "Option '--lr' requires an argument."),
    (
        ["prune", "x.h5", "--epsilon", "abc"],
        "Invalid value for '--epsilon': Input should be a valid number, unable to parse string as a number "
        "(see 'dpcli prune --help')",
    ),
    (["prune"], "Missing argument 'SOURCE'. (see 'dpcli prune --help')"),
]


@pytest.mark.parametrize("args, line", ERRORS, ids=lambda a: "_".join(a) if isinstance(a, list) else "")
def test_an_option_error_is_one_line_and_exit_code_2(capsys, args, line):
    code = main(list(args))
    out, err = capsys.readouterr()
    assert (code, out, err) == (2, "", f"dpcli: error: {line}\n")


def test_help_and_version_answer(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["--version"]) == 0 and capsys.readouterr().out == f"dpcli {__version__}\n"
    for args in (["--help"], ["prune", "--help"], ["prune", "x.h5", "--epsilon", "1", "--help"]):
        assert main(args) == 0
        out, err = capsys.readouterr()
        assert out.lstrip().startswith("Usage: dpcli") and err == "", args
    assert main(["prune", "x.h5", "--out", "--help"]) == 2  # --help is the value of --out: no help
    assert "Usage:" not in capsys.readouterr().out


def test_help_writes_no_file(tmp_path):
    """A CLI must not keep caches to print help: HOME and XDG_CACHE_HOME stay empty, and so does the cwd."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "COLUMNS": "100",
    }
    for args in (["--help"], ["prune", "--help-all"], ["--version"], ["prune", "x.h5", "--epsilom", "1"]):
        proc = subprocess.run([sys.executable, "-m", "dpcli", *args], capture_output=True, text=True, env=env, cwd=cwd)
        assert proc.returncode in (0, 2), proc.stderr
    assert list(home.rglob("*")) == [] and list(cwd.rglob("*")) == []
