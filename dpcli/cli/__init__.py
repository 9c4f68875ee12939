"""The command line: parses options, calls dpcli.stages and dpcli.stages.pipeline, prints, exits.

One module per command (train, influence, prune, retrain, verify); shared options in
:mod:`dpcli.cli.options`; the Typer app, errors, signals and exit codes in :mod:`dpcli.cli.application`.
Importing this package imports no Typer: ``app`` is loaded when first asked for, and the commands import
torch, h5py and the stages only when they run, so ``--help`` costs Typer's own start-up.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code instead of exiting (so tests can call it in-process)."""
    from dpcli.cli.application import main as typer_main

    code = typer_main(list(sys.argv[1:] if argv is None else argv))
    _settle_stderr()
    return code


def _settle_stderr() -> None:
    """A stderr that cannot take its last buffered bytes (a full disk, a gone reader) must not turn the exit
    code into Python's 120 at shutdown: human output never decides the result, so what is left goes nowhere."""
    if sys.stderr is None:  # started with stderr closed
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        except (OSError, ValueError):
            pass


def __getattr__(name: str) -> Any:
    if name == "app":
        from dpcli.cli.application import app

        return app
    raise AttributeError(f"module 'dpcli.cli' has no attribute {name!r}")
