"""The command line: parses options, calls dpcli.stages and dpcli.stages.pipeline, prints, exits.

One module per command (train, influence, prune, retrain, verify); shared options in
:mod:`dpcli.cli.options`; the Typer app, errors, signals and exit codes in :mod:`dpcli.cli.application`.
Importing this package imports no Typer: ``app`` is loaded when first asked for, and the commands import
torch, h5py and the stages only when they run, so ``--help`` costs Typer's own start-up.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code instead of exiting (so tests can call it in-process)."""
    from dpcli.cli.application import main as typer_main

    return typer_main(list(sys.argv[1:] if argv is None else argv))


def __getattr__(name: str) -> Any:
    if name == "app":
        from dpcli.cli.application import app

        return app
    raise AttributeError(f"module 'dpcli.cli' has no attribute {name!r}")
