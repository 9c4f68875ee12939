"""User-facing errors.

Anything a user can cause (a bad path, a wrong artifact, an out-of-range option)
is raised as :class:`DpcliError`; the CLI turns it into one line on stderr and a
non-zero exit code instead of a traceback.

Exit codes (docs/reliability.md): 0 success, 1 an unexpected failure (out of memory),
2 a user error, 74 an output could not be written (EX_IOERR: read-only or full file
system, permissions, a directory in the way), 75 an artifact is locked by another job
and waiting was declined (EX_TEMPFAIL: ``--no-wait`` / ``DPCLI_NO_WAIT=1``), 129 SIGHUP, 130 Ctrl-C,
141 the reader of stdout went away (SIGPIPE, as git), 143 SIGTERM.
"""

from __future__ import annotations


class DpcliError(Exception):
    """An error caused by the user's input, reported as one line."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ArtifactWriteError(DpcliError):
    """An output could not be written (no space, read-only, permissions); nothing was left behind."""

    exit_code = 74


class ArtifactBusy(DpcliError):
    """Another job holds an artifact's lock and this one was told not to wait."""

    exit_code = 75


class ReportLost(DpcliError):
    """stdout refused the ``--json`` report after the work was done (closed, full); the artifacts are complete."""

    exit_code = 74


class ReaderGone(Exception):
    """The reader of stdout went away (EPIPE): the command exits quietly with 141, as git does on SIGPIPE."""
