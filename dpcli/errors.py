"""User-facing errors.

Anything a user can cause (a bad path, a wrong artifact, an out-of-range option)
is raised as :class:`DpcliError`; the CLI turns it into one line on stderr and a
non-zero exit code instead of a traceback.
"""

from __future__ import annotations


class DpcliError(Exception):
    """An error caused by the user's input, reported as one line."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
