"""The Typer application: command registration, one-line errors, signals, exit codes.

Exit codes: 0 success; 2 a user error or a command-line usage error (one line ``dpcli: error: ...``
on stderr); 1 out of memory; 74 an output (the ``--json`` report on stdout included) could not be written;
129 hung up (SIGHUP: the terminal or ssh session closed); 130 interrupted (Ctrl-C, SIGINT); 141 the reader
of stdout went away (as git: quiet, the artifacts complete); 143 terminated (SIGTERM, as sent by cron,
``timeout`` and systemd).  After 129, 130 or 143 every completed artifact is kept and no partial one is left
under an artifact's name, so rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import warnings
from typing import Any, Callable, Iterator

import typer

from dpcli import __version__, console, interrupts
from dpcli.cli import influence, options, prune, retrain, train, verify
from dpcli.cli.options import NoArgsIsHelpError, UsageError
from dpcli.env import progress_interval
from dpcli.errors import DpcliError, ReaderGone

EXIT_USER = 2
EXIT_MEMORY = 1
EXIT_HANGUP = 129
EXIT_INTERRUPTED = 130
EXIT_READER_GONE = 141  # 128 + SIGPIPE, what a shell reports for git and other tools a closed pipe stopped
EXIT_TERMINATED = 143

app = typer.Typer(
    name="dpcli",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    help=(
        "Prune training sets with a proven, small effect on the trained model (Yang et al., ICLR 2023). "
        "Stages: train -> influence -> prune -> retrain / verify-bound; each reads and writes HDF5 artifacts. "
        "Masks mark KEPT samples (keep=True trains); pruned_indices are the dropped ones."
    ),
)


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        typer.echo(f"dpcli {__version__}")
        raise typer.Exit()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so every writer cleans up the same way."""

    signal_name, exit_code = "SIGTERM", EXIT_TERMINATED


class HungUp(Terminated):
    """SIGHUP (the terminal or ssh session went away): stopped like SIGTERM, with its own exit code."""

    signal_name, exit_code = "SIGHUP", EXIT_HANGUP


_STOPS: dict[int, type[KeyboardInterrupt]] = {signal.SIGTERM: Terminated, signal.SIGHUP: HungUp}


@contextlib.contextmanager
def _stops_as_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated`, Ctrl-C ``KeyboardInterrupt``, in the main thread; both are also
    recorded, so a stop whose raise lands in a ``__del__`` or weakref callback (where Python only prints it)
    still stops training at the next batch, and is not printed.  A SIGINT the parent ignores (a background
    job of a non-interactive shell) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        stop = _STOPS.get(signum, KeyboardInterrupt)
        interrupts.record(stop)
        raise stop()

    default_hook = sys.unraisablehook

    def unraisable(info: Any) -> None:
        if not isinstance(info.exc_value, KeyboardInterrupt):  # a lost stop is re-raised, not printed
            default_hook(info)

    stops = [signal.SIGTERM] + [
        s
        for s, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGHUP, signal.SIG_DFL))
        if signal.getsignal(s) is default
    ]
    previous = {s: signal.signal(s, handler) for s in stops}
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sys.unraisablehook = default_hook
        interrupts.clear()


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """dpcli's own warnings (they start with "dpcli:") print as the line they are, without Python's file,
    line number and source line; other libraries' keep Python's format."""
    default = warnings.formatwarning

    def fmt(message: Any, category: Any, filename: str, lineno: int, line: str | None = None) -> str:
        text = str(message)
        return f"{text}\n" if text.startswith("dpcli:") else default(message, category, filename, lineno, line)

    warnings.formatwarning = fmt
    try:
        yield
    finally:
        warnings.formatwarning = default


@contextlib.contextmanager
def _no_wait(enabled: bool) -> Iterator[None]:
    """``--no-wait``: the artifact locks fail at once instead of waiting, for this command only."""
    from dpcli.artifacts.lock import set_no_wait

    if enabled:
        set_no_wait(True)
    try:
        yield
    finally:
        if enabled:
            set_no_wait(None)


def _error(message: str) -> None:
    console.error_line(f"dpcli: error: {message}")


def _guard(func: Callable[..., None]) -> Callable[..., None]:
    """Turn what a user can cause into one stderr line and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            with _no_wait(bool(kwargs.get("no_wait"))):
                progress_interval()  # a bad DPCLI_PROGRESS_INTERVAL fails now, not at the first stage
                func(*args, **kwargs)
        except DpcliError as exc:
            _error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # an I/O failure no stage turned into a DpcliError: still one line (exit 74)
            if exc.filename is None:
                raise
            _error(f"{exc.filename}: {exc.strerror or exc}")
            raise typer.Exit(74) from None
        except ReaderGone:  # git's way: no message (nobody reads it), the artifacts are complete
            _silence_stdout()
            raise typer.Exit(EXIT_READER_GONE) from None
        except KeyboardInterrupt as exc:
            raise _stopped(exc) from None
        except MemoryError as exc:
            detail = f" ({str(exc).rstrip('.')})" if str(exc) else ""
            _error(
                f"out of memory{detail}; if an input file declares that size, it is damaged; else run on a machine "
                "with more memory (training and retraining need less with a smaller --batch-size)"
            )
            raise typer.Exit(EXIT_MEMORY) from None
        except Exception as exc:  # a stop raised inside a C callback (h5py's visits) comes back wrapped
            stop = _stop_behind(exc)
            if stop is None:
                raise
            raise _stopped(stop) from None

    return wrapper


def _stop_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The stop signal's exception that caused ``exc``, if one did."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _stopped(exc: KeyboardInterrupt) -> typer.Exit:
    """Say how the job was stopped (one line) and give its exit code."""
    if isinstance(exc, Terminated):
        what = "hung up" if isinstance(exc, HungUp) else "terminated"
        console.error_line(
            f"dpcli: {what} ({exc.signal_name}); completed artifacts are kept, rerun the same command to resume"
        )
        return typer.Exit(exc.exit_code)
    console.error_line("dpcli: interrupted; completed artifacts are kept, rerun the same command to resume")
    return typer.Exit(EXIT_INTERRUPTED)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of a broken pipe prints nothing."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _paragraphs(doc: str | None) -> str:
    """A docstring as help text: paragraphs kept, line breaks inside a paragraph joined (rich keeps them)."""
    return "\n\n".join(" ".join(p.split()) for p in (doc or "").split("\n\n") if p.strip())


for _module, _name in (
    (train, "train"),
    (influence, "influence"),
    (prune, "prune"),
    (retrain, "retrain"),
    (verify, "verify-bound"),
):
    app.command(_name, help=_paragraphs(_module.command.__doc__), epilog=getattr(_module, "EPILOG", None))(
        _guard(_module.command)
    )

_TYPE_NAMES = {"<int>": "INTEGER", "<float>": "FLOAT", "<str>": "TEXT", "<bool>": "", "<Path>": "PATH"}


def _tidy(command: Any, unfold: bool) -> None:
    """Help as a user reads it: registered names filled in, no Python type names, folded panels
    hidden unless --help-all.  Runs only when help is asked for.

    Typer prints ``<float>``, ``<bool>`` and ``{ARG}``; options get Click's classic metavars (none for
    flags) and arguments their bare name.  Only help rendering changes; parsing is untouched.
    """
    for name, sub in [("", command), *command.commands.items()]:
        folded = options.FOLDED.get(name, ())
        with contextlib.suppress(Exception):  # Typer makes --help lazily; show it flag-like, with the output options
            help_option = sub.get_help_option(sub.context_class(sub, info_name=name or "dpcli"))
            help_option.metavar = ""
            help_option.rich_help_panel = options.P_OUTPUT if name else None
        for param in sub.params:
            if getattr(param, "rich_help_panel", None) in folded:
                param.hidden = not unfold
            if getattr(param, "param_type_name", "") == "argument" and hasattr(param, "display_name_raw"):
                label = param.display_name_raw + ("" if param.nargs == 1 else "...")
                param.display_type_rich = lambda ctx: None
                param._usage_display_name = lambda label=label: label
            elif param.metavar is None and hasattr(param, "display_type"):
                shown = param.display_type(None)
                param.metavar = _TYPE_NAMES.get(shown, shown.strip("<>").upper())
            if getattr(param, "help", None):
                param.help = options.fill_names(param.help)


def _usage_error(exc: Any) -> int:
    """A Click usage error as one line (Click's own text, suggestions included) and exit 2."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    _error(f"{message}{hint}")
    return exc.exit_code


def main(argv: list[str] | None = None) -> int:
    """Run one command line through Typer; the exit code (usage errors: one line, code 2)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_group(app)
    unfold = "--help-all" in args
    args = ["--help" if a == "--help-all" else a for a in args]
    if unfold or "--help" in args:
        _tidy(command, unfold)
    with _stops_as_interrupts(), _one_line_warnings():
        try:
            code = command.main(args=args, prog_name="dpcli", standalone_mode=False)
        except NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help())
            return EXIT_USER
        except UsageError as exc:
            return _usage_error(exc)
        except typer.TyperException as exc:
            _error(" ".join(exc.format_message().split()))
            return getattr(exc, "exit_code", 1)
        except typer.Exit as exc:  # Click's own Exit and Abort before Typer 0.29 vendored Click
            return exc.exit_code
        except typer.Abort:
            return EXIT_INTERRUPTED
        except SystemExit as exc:
            code = exc.code
            return code if isinstance(code, int) else (0 if code is None else 1)
    return code if isinstance(code, int) else 0
