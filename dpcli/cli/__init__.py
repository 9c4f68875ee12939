"""The command line: parses options, calls dpcli.stages and dpcli.stages.pipeline, prints, exits.

One module per command (train, influence, prune, retrain, verify); shared options in
:mod:`dpcli.cli.options`; the Typer app, errors, signals and exit codes in :mod:`dpcli.cli.application`;
help, --version and option errors replayed without Typer in :mod:`dpcli.cli.fast`.  Importing this
package imports no Typer: ``app`` is loaded when first asked for.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code instead of exiting (so tests can call it in-process)."""
    from dpcli import __version__
    from dpcli.cli import fast

    args = list(sys.argv[1:] if argv is None else argv)
    code = fast.answer(args, __version__)
    if code is not None:
        return code
    from dpcli.cli.application import main as typer_main

    return typer_main(args)


def __getattr__(name: str) -> Any:
    if name == "app":
        from dpcli.cli.application import app

        return app
    raise AttributeError(f"module 'dpcli.cli' has no attribute {name!r}")
