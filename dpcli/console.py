"""Terminal output: human text and progress on stderr, one JSON document on stdout.

Scripts read stdout (``--json``); people read stderr.  Keeping them apart lets
``dpcli prune --json ... | jq`` work while progress bars still draw.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

err = Console(stderr=True, highlight=False, soft_wrap=True)  # log lines never hard-wrap paths

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def info(message: str) -> None:
    if not _quiet:
        err.print(message)


def table(renderable: Any) -> None:
    """Print a table in full width even off a terminal, where rich would assume 80 columns."""
    if _quiet:
        return
    target = err if err.is_terminal else Console(stderr=True, highlight=False, width=160)
    target.print(renderable)


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def progress_bar(description: str, total: float | None = None, transient: bool = False) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields ``update(completed, total=None, status=None)``.

    Off a terminal (cron, pipes, CI logs) a bar is noise: one line is printed when the step
    finishes, with its last status, and nothing at all if it fails.
    """
    if _quiet or not err.is_terminal:
        state = {"status": "", "t0": time.perf_counter()}

        def record(completed: float, total: float | None = None, status: str | None = None) -> None:
            if status is not None:
                state["status"] = status

        yield record
        if not _quiet and time.perf_counter() - state["t0"] > 2.0:
            err.print(f"{description}: done in {time.perf_counter() - state['t0']:.1f}s {state['status']}".rstrip(),
                      markup=False)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=transient) as prog:
        task = prog.add_task(description, total=total, status="")

        def update(completed: float, total: float | None = None, status: str | None = None) -> None:
            kwargs: dict[str, Any] = {"completed": completed}
            if total is not None:
                kwargs["total"] = total
            if status is not None:
                kwargs["status"] = status
            prog.update(task, **kwargs)

        try:
            yield update
        except BaseException:
            prog.live.transient = True  # an error message alone reads better than a dead bar above it
            raise


__all__ = ["err", "info", "emit_json", "progress_bar", "set_quiet", "MofNCompleteColumn"]
