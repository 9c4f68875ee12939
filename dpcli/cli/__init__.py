"""The command line: parses options, calls the stages, prints, exits."""

from dpcli.cli.commands import app, main

__all__ = ["app", "main"]
