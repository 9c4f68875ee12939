"""Messages and progress for the three places people and programs look, and one JSON document on stdout.

* A terminal (stderr is a TTY): rich bars, fed per batch and redrawn by rich at most 10 times a second.
* A pipeline (stderr is a file or a pipe: cron, ``> log``, CI): plain lines, one when a stage starts, one
  every ``$DPCLI_PROGRESS_INTERVAL`` seconds (default 30) with done/total, rate and ETA, one when it ends.
* The Python API (inside :func:`library`): nothing on stderr; the same lines go to the ``logging`` logger
  ``"dpcli"`` at INFO, and every update to the caller's optional callback as a :class:`ProgressEvent`.

Scripts read stdout (``--json``); people read stderr.  Keeping them apart lets ``dpcli prune --json ... | jq``
work while the bars draw.  No write to stderr can decide a result: a closed or full stderr, or a reader that
went away, silences the messages and the work goes on.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

from dpcli.env import progress_interval


class _StderrConsole(Console):
    """rich's Console, except that a reader gone away (EPIPE) silences it instead of exiting the process
    (rich's default raises SystemExit(1) from inside whatever write hit it, losing the job's result)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True


err = _StderrConsole(stderr=True, highlight=False, soft_wrap=True)  # log lines never hard-wrap paths
log = logging.getLogger("dpcli")
log.addHandler(logging.NullHandler())  # a library logs nothing until its user configures logging

_quiet = False
MINOR_STAGE_SECONDS = 2.0  # off a terminal, a minor (transient) step gets its end line only past this


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


# ------------------------------------------------------------------------------------------ events
@dataclass(frozen=True)
class ProgressEvent:
    """Where one stage stands: what the API's ``progress`` callback receives at each update.

    ``done`` and ``total`` are in the stage's own unit (training: samples over all epochs; influence: rows
    of S; prune: a fraction of 1); ``total`` is None where the stage cannot know it."""

    stage: str
    done: float
    total: float | None
    elapsed: float  # seconds since the stage started
    status: str = ""
    finished: bool = False

    @property
    def rate(self) -> float | None:
        """Units per second so far (None before the first unit)."""
        return self.done / self.elapsed if self.done > 0 and self.elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None without a total or a rate)."""
        rate = self.rate
        return None if rate is None or self.total is None else max(self.total - self.done, 0.0) / rate

    def line(self) -> str:
        """The plain line written off a terminal and to the logger."""
        if self.finished:
            return f"{self.stage}: done in {self.elapsed:.1f}s {self.status}".rstrip()
        parts = [f"{self.stage}:{self._done()} {_duration(self.elapsed)} elapsed"]
        if self._counted() and self.rate is not None:
            parts.append(f"{self.rate:.4g}/s")
        if self.eta is not None:
            parts.append(f"ETA {_duration(self.eta)}")
        return ", ".join(parts) + (f" | {self.status}" if self.status else "")

    def start_line(self) -> str:
        return f"{self.stage}: started" + (f",{self._done()}".rstrip(",") if self.total is not None else "")

    def _counted(self) -> bool:
        """A count of units (samples, rows), as opposed to a fraction of 1."""
        return self.total is not None and float(self.total).is_integer() and self.total > 1

    def _done(self) -> str:
        if self.total is None:
            return f" {_number(self.done)} done," if self.done else ""
        if self._counted():
            return f" {_number(self.done)}/{_number(self.total)} ({100 * self.done / self.total:.1f}%),"
        return f" {100 * self.done / self.total:.1f}%,"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.4g}"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class _Stage:
    """One stage's progress; read by the thread that writes the periodic lines."""

    def __init__(self, description: str, total: float | None) -> None:
        self.description, self.total = description, total
        self.done, self.status = 0.0, ""
        self.t0 = time.perf_counter()

    def update(self, completed: float, total: float | None = None, status: str | None = None) -> None:
        self.done = completed
        if total is not None:
            self.total = total
        if status is not None:
            self.status = status

    def event(self, finished: bool = False) -> ProgressEvent:
        return ProgressEvent(
            self.description, self.done, self.total, time.perf_counter() - self.t0, self.status, finished
        )


# ------------------------------------------------------------------------------------------ the API's listener
@dataclass(frozen=True)
class _Listener:
    callback: Callable[[ProgressEvent], None] | None


_listener: contextvars.ContextVar[_Listener | None] = contextvars.ContextVar("dpcli_listener", default=None)


@contextlib.contextmanager
def library(callback: Callable[[ProgressEvent], None] | None = None) -> Iterator[None]:
    """Route messages and progress of the enclosed calls to the ``dpcli`` logger and ``callback`` (the API's
    mode): nothing is written to stderr.  An exception raised by ``callback`` stops the call."""
    token = _listener.set(_Listener(callback))
    try:
        yield
    finally:
        _listener.reset(token)


# ------------------------------------------------------------------------------------------ writing
def _write(print_: Callable[[], None]) -> None:
    """Run one write to stderr; a stream that refuses it (closed, full disk, EIO) silences the console
    for the rest of the run instead of stopping the job."""
    if err.quiet:
        return
    try:
        print_()
    except (OSError, ValueError) as exc:  # ValueError: "I/O operation on closed file"
        if isinstance(exc, ValueError) and "closed file" not in str(exc):
            raise
        err.quiet = True


def _plain(line: str) -> None:
    _write(lambda: err.print(line, markup=False, highlight=False))


def info(message: str) -> None:
    """A human message (rich markup allowed): stderr for the CLI, an INFO record inside :func:`library`."""
    if _listener.get() is not None:
        log.info(Text.from_markup(message).plain)
    elif not _quiet:
        _write(lambda: err.print(message))


def error_line(message: str) -> None:
    """The CLI's last word (``dpcli: error: ...``, interruptions): printed even under --quiet."""
    _plain(message)


def table(renderable: Any) -> None:
    """Print a table in full width even off a terminal, where rich would assume 80 columns."""
    if _quiet or _listener.get() is not None:
        return
    target = err if err.is_terminal else _StderrConsole(stderr=True, highlight=False, width=160)
    _write(lambda: target.print(renderable))
    if target.quiet:
        err.quiet = True


def emit_json(payload: dict[str, Any]) -> None:
    """The ``--json`` report, the last thing a command does: a reader gone away (EPIPE) is ReaderGone, any other
    refusal (stdout closed or full) one ReportLost line; the artifacts are complete either way."""
    from dpcli.errors import ReaderGone, ReportLost

    try:
        if sys.stdout is None:  # started with stdout closed (>&-)
            raise OSError(errno.EBADF, "stdout is closed")
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise ReaderGone() from None
    except (OSError, ValueError) as exc:  # ValueError: a closed file object
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ReportLost(f"stdout: cannot write the --json report ({reason}); the artifacts are complete") from None


# ------------------------------------------------------------------------------------------ progress
@contextlib.contextmanager
def progress_bar(
    description: str, total: float | None = None, transient: bool = False
) -> Iterator[Callable[..., None]]:
    """Report one stage's progress; yields ``update(completed, total=None, status=None)``, cheap enough to
    call per batch.

    Where the reports go is the module's business (its docstring).  Off a terminal the start line waits
    for the stage's first update, so input that a stage refuses at once still ends in one line, the error.
    ``transient`` marks a minor step (loading a dataset): its bar vanishes when done, and off a terminal it
    gets no start line and an end line only when it took longer than :data:`MINOR_STAGE_SECONDS`."""
    listener = _listener.get()
    if listener is None and _quiet:
        yield _ignore
        return
    stage = _Stage(description, total)
    if listener is None and err.is_terminal:
        with _bar(stage, transient) as update:
            yield update
        return
    callback = listener.callback if listener is not None else None
    lines = _Lines(stage, _plain if listener is None else log.info, announce=not transient)
    if callback is not None:
        callback(stage.event())
    with lines.ticking():
        yield lines.update if callback is None else _also(lines.update, stage, callback)
    if callback is not None:
        callback(stage.event(finished=True))


def _ignore(completed: float, total: float | None = None, status: str | None = None) -> None:
    return None


def _also(update: Callable[..., None], stage: _Stage, callback: Callable[[ProgressEvent], None]) -> Callable[..., None]:
    def both(completed: float, total: float | None = None, status: str | None = None) -> None:
        update(completed, total, status)
        callback(stage.event())

    return both


class _Lines:
    """Plain lines for a stage: a start line at its first update (none when that update finishes it), a line
    every interval from a helper thread (so a long step without updates, a factorization say, still shows it
    is alive), and an end line on success when it did work or took a while (a stage that only found its
    artifact cached stays quiet)."""

    def __init__(self, stage: _Stage, emit: Callable[[str], None], announce: bool) -> None:
        self.stage, self.emit = stage, emit
        self.pending = announce  # the start line is still to be written
        self.worked = False

    def update(self, completed: float, total: float | None = None, status: str | None = None) -> None:
        self.stage.update(completed, total, status)
        self.worked = True
        if self.pending:
            self.pending = False
            if self.stage.total is None or completed < self.stage.total:
                self.emit(self.stage.event().start_line())

    @contextlib.contextmanager
    def ticking(self) -> Iterator[None]:
        interval = progress_interval()
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(interval):
                self.pending = False
                self.emit(self.stage.event().line())

        ticker = threading.Thread(target=tick, name="dpcli-progress", daemon=True)
        announce = self.pending
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
        end = self.stage.event(finished=True)
        if (announce and self.worked) or end.elapsed > MINOR_STAGE_SECONDS:
            self.emit(end.line())


@contextlib.contextmanager
def _bar(stage: _Stage, transient: bool) -> Iterator[Callable[..., None]]:
    # the status last, cut with an ellipsis on a narrow terminal, so the bar and the times keep their width
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=30),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
    ]
    prog = Progress(*columns, console=err, transient=transient, expand=True)
    task = prog.add_task(escape(stage.description), total=stage.total, status="")

    def update(completed: float, total: float | None = None, status: str | None = None) -> None:
        kwargs: dict[str, Any] = {"completed": completed}  # stored only; rich's refresh thread draws
        if total is not None:
            kwargs["total"] = total
        if status is not None:
            kwargs["status"] = status
        prog.update(task, **kwargs)

    _write(prog.start)
    try:
        yield update
    except BaseException:
        prog.live.transient = True  # an error message alone reads better than a dead bar above it
        raise
    finally:
        _write(prog.stop)


__all__ = [
    "ProgressEvent",
    "err",
    "info",
    "error_line",
    "emit_json",
    "library",
    "log",
    "progress_bar",
    "set_quiet",
    "table",
    "MofNCompleteColumn",
]
