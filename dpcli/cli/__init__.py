"""The command line: parses options, calls dpcli.stages and dpcli.stages.pipeline, prints, exits.

One module per command (train, influence, prune, retrain, verify); shared options in
:mod:`dpcli.cli.options`; the Typer app, errors, signals and exit codes in :mod:`dpcli.cli.app`.
"""

from dpcli.cli.app import app, main

__all__ = ["app", "main"]
