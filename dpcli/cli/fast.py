"""The command line's front door: ``--help``, ``--version`` and misspelt options without Typer.

Typer imports rich, pydantic and markdown-it and builds a validator per option: about 0.6 s before a
help screen or an option error appears, three times Python's own start-up.  So, like ``__pycache__``
for bytecode, dpcli keeps records of what Typer did: the option table of every command (written by
any run that loads Typer) and each help screen exactly as Typer printed it (written the first time
it is asked for).  Later calls replay them with the standard library alone.

A record is keyed on everything that shapes it: the path, size and mtime of every dpcli source file
(options, defaults and registered names all live there), the Typer, Click and rich installs, the
Python version, and the terminal (which standard streams are terminals, its size, stdout's
encoding, and every environment variable rich and Typer read).  Any change makes a new key, so a
record cannot go stale; tests/cli/test_fast.py checks replayed output against Typer's own.

Replayed: help screens; ``--version``; and the parse errors of Click's option parser (an unknown
option or command, with the same suggestions; an option without its value).  Everything else,
including any argument list this module is not sure of, goes to Typer.  ``DPCLI_CLI_CACHE`` names
the folder (default ``$XDG_CACHE_HOME/dpcli/cli``, else ``~/.cache/dpcli/cli``); ``off`` turns
records off.  A folder that cannot be written only costs speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

EXIT_USAGE = 2
MAX_RECORDS = 256  # help screens kept; the oldest go first
_ENV_WORDS = ("COLOR", "TERM", "TTY", "COLUMNS", "LINES", "WIDTH", "TYPER", "RICH", "JUPYTER", "DATABRICKS",
              "GITHUB_ACTIONS", "PYTHONIO", "LANG", "LC_")  # what rich / Typer read to lay out and colour
_PACKAGE = Path(__file__).resolve().parent.parent


class _Unsure(Exception):
    """Click would print this name in a way not replayed here (rich reads ``:name:`` as an emoji)."""


def _closest(name: str, names: list[str]) -> list[str]:
    if ":" in name:
        raise _Unsure(name)
    import difflib

    return difflib.get_close_matches(name, names)


class Usage(Exception):
    """A parse error, worded as Click words it."""

    def __init__(self, message: str, path: Optional[str]) -> None:  # path: Click gives no context to some
        super().__init__(message)
        self.message, self.path = message, path


# ------------------------------------------------------------------ keys
def cache_dir() -> Optional[Path]:
    value = os.environ.get("DPCLI_CLI_CACHE", "").strip()
    if value.lower() == "off":
        return None
    if value:
        return Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dpcli" / "cli"


def _fingerprint() -> str:
    """dpcli's sources and the libraries that render help, by path, size and mtime (as pyc files are)."""
    lines = [sys.version]
    for top, dirs, files in os.walk(_PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            st = os.stat(os.path.join(top, name))
            lines.append(f"{top}/{name} {st.st_size} {st.st_mtime_ns}")
    for lib in ("typer", "click", "rich"):
        for entry in sys.path:
            init = os.path.join(entry or ".", lib, "__init__.py")
            if os.path.isfile(init):
                st = os.stat(init)
                lines.append(f"{init} {st.st_size} {st.st_mtime_ns}")
                break
    return "\n".join(lines)


def _terminal() -> str:
    """What rich and Typer look at to lay out and colour a help screen."""
    env = sorted((k, v) for k, v in os.environ.items() if any(w in k for w in _ENV_WORDS))
    size = None
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError, ValueError):
            size = tuple(os.get_terminal_size(fd))
            break
    ttys = []
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            ttys.append(bool(stream.isatty()))
        except (AttributeError, ValueError):
            ttys.append(None)
    return json.dumps([env, size, ttys, getattr(sys.stdout, "encoding", None), sys.platform])


def _record_path(folder: Path, kind: str, key: str) -> Path:
    """A record's file; the name is a short hash, the full key is stored inside and compared on reading."""
    return folder / f"{kind}-{zlib.crc32(key.encode()):08x}.json"


def _key(fingerprint: str, request: Any = None) -> str:
    return fingerprint if request is None else json.dumps([fingerprint, _terminal(), request])


def _read(path: Path, key: str) -> Any:
    """The record's payload if its key is ``key``; None if missing, unreadable or another key's."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("payload") if isinstance(record, dict) and record.get("key") == key else None


def _write(path: Path, key: str, payload: Any) -> None:
    """Atomically (a reader never sees half a record); silently not at all where it cannot."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "payload": payload}), encoding="utf-8")
        os.replace(tmp, path)


def _trim(folder: Path) -> None:
    with contextlib.suppress(OSError):
        records = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for path in records[:max(0, len(records) - MAX_RECORDS)]:
            path.unlink()


# ------------------------------------------------------------------ Click's parser, replayed
class _Parser:
    """Click's option parser (typer._click.parser._OptionParser), on a recorded option table.

    Only what decides between "help", "a parse error" and "fine so far" is kept: values are
    skipped, not converted (a bad value is Typer's to report)."""

    def __init__(self, table: dict[str, Any], path: str, interspersed: bool) -> None:
        self.long, self.short = table["long"], table["short"]
        self.prefixes = set(table["prefixes"])
        self.path, self.interspersed = path, interspersed
        self.seen: list[str] = []

    def parse(self, args: list[str]) -> list[str]:
        """The positional arguments left (for a group: the command and its arguments)."""
        rargs, largs = list(args), []
        while rargs:
            arg = rargs.pop(0)
            if arg == "--":
                break
            if arg[:1] in self.prefixes and len(arg) > 1:
                self._opts(arg, rargs)
            elif self.interspersed:
                largs.append(arg)
            else:
                rargs.insert(0, arg)
                break
        return largs + rargs

    def _opts(self, arg: str, rargs: list[str]) -> None:
        name, explicit = arg.split("=", 1) if "=" in arg else (arg, None)
        if name in self.long:
            self._take(name, self.long[name], explicit, rargs)
        elif arg[:2] not in self.prefixes:
            self._short(arg, rargs)
        else:
            close = _closest(name, list(self.long))
            hint = f" (Possible options: {', '.join(sorted(close))})" if close else ""
            raise Usage(f"No such option: {name}{hint}", self.path)

    def _take(self, name: str, option: list[int], explicit: Optional[str], rargs: list[str]) -> None:
        takes_value, nargs = option
        if takes_value:
            if explicit is not None:
                rargs.insert(0, explicit)
            self._value(name, nargs, rargs)
        elif explicit is not None:
            raise Usage(f"Option {name!r} does not take a value.", None)
        self.seen.append(name)

    def _short(self, arg: str, rargs: list[str]) -> None:
        for i, ch in enumerate(arg[1:], start=2):
            name = arg[0] + ch
            if name not in self.short:
                _closest(name, [])
                raise Usage(f"No such option: {name}", self.path)
            takes_value, nargs = self.short[name]
            if takes_value and i < len(arg):
                rargs.insert(0, arg[i:])
            if takes_value:
                self._value(name, nargs, rargs)
            self.seen.append(name)
            if takes_value:
                break

    def _value(self, name: str, nargs: int, rargs: list[str]) -> None:
        if len(rargs) < nargs:
            what = "an argument." if nargs == 1 else f"{nargs} arguments."
            raise Usage(f"Option {name!r} requires {what}", None)
        del rargs[:nargs]


def classify(args: list[str], spec: dict[str, Any]) -> Optional[tuple]:
    """What Typer would do with ``args`` (after --help-all became --help), as far as the parser tells:
    ``("help", command, unfold)``, ``("bare",)``, ``("version",)``, ``("usage", message, path)``,
    or None (anything else: Typer decides)."""
    unfold = "--help-all" in args
    args = ["--help" if a == "--help-all" else a for a in args]
    if not args:
        return ("bare",)
    if any(not a.isprintable() for a in args):  # Click escapes these in its messages
        return None
    prog, tables = spec["prog"], spec["commands"]
    try:
        root = _Parser(tables[""], prog, interspersed=False)
        rest = root.parse(args)
        if set(root.seen) & set(spec["help"]):
            return ("help", "", unfold)
        if not rest:
            return ("version",) if "--version" in root.seen else None
        name = rest[0]
        if name not in tables or name == "":
            if name[:1] == "-":  # only after `--`: Click parses it again as an option
                return None
            close = _closest(name, [c for c in tables if c])
            hint = f". Did you mean {', '.join(repr(c) for c in close)}?" if close else "."
            raise Usage(f"No such command {name!r}{hint}", prog)
        if "--version" in root.seen:  # the root callback runs before the command parses
            return ("version",)
        sub = _Parser(tables[name], f"{prog} {name}", interspersed=True)
        sub.parse(rest[1:])
        if set(sub.seen) & set(spec["help"]):
            return ("help", name, unfold)
    except Usage as exc:
        return ("usage", exc.message, exc.path)
    except _Unsure:
        return None
    return None


# ------------------------------------------------------------------ serving and recording
def answer(args: list[str], version: str) -> Optional[int]:
    """The exit code, when the records answer ``args``; None hands them to Typer."""
    folder = cache_dir()
    if folder is None:
        return None
    fingerprint = _fingerprint()
    spec = _read(_record_path(folder, "options", fingerprint), fingerprint)
    if not spec:
        return None
    try:
        request = classify(args, spec)
    except (KeyError, TypeError, ValueError, AttributeError):  # a record from elsewhere: ignore it
        return None
    if request is None:
        return None
    if request[0] == "version":
        sys.stdout.write(f"dpcli {version}\n")
        return 0
    if request[0] == "usage":
        if not spec.get("click_messages"):
            return None
        hint = f" (see '{request[2]} --help')" if request[2] else ""
        sys.stderr.write(f"dpcli: error: {' '.join(request[1].split())}{hint}\n")
        return EXIT_USAGE
    key = _key(fingerprint, list(request))
    record = _read(_record_path(folder, "help", key), key)
    if not record:
        return None
    sys.stdout.write(record["stdout"])
    sys.stdout.flush()
    return int(record["code"])


def option_table(command: Any, prog: str) -> dict[str, Any]:
    """What the replayed parser needs, read from Click's own parsers of the root and each command."""
    root_ctx = command.context_class(command, info_name=prog)
    tables, help_names = {}, set()
    for name, sub in [("", command), *command.commands.items()]:
        ctx = root_ctx if not name else sub.context_class(sub, info_name=name, parent=root_ctx)
        parser = sub.make_parser(ctx)
        tables[name] = {
            "long": {k: [bool(o.takes_value), int(o.nargs)] for k, o in parser._long_opt.items()},
            "short": {k: [bool(o.takes_value), int(o.nargs)] for k, o in parser._short_opt.items()},
            "prefixes": sorted(parser._opt_prefixes),
        }
        help_names.update(sub.get_help_option_names(ctx))
    return {"prog": prog, "commands": tables, "help": sorted(help_names)}


def remember(command: Any, prog: str, click_messages: bool) -> Optional[dict[str, Any]]:
    """Write the option table for these sources, once; the table (None where records are off).

    ``click_messages``: the installed Click words its parse errors as :class:`_Parser` does (the
    Click that Typer >= 0.29 vendors); otherwise only help and --version are replayed."""
    folder = cache_dir()
    if folder is None:
        return None
    fingerprint = _fingerprint()
    path = _record_path(folder, "options", fingerprint)
    spec = _read(path, fingerprint)
    if spec is None:
        spec = {**option_table(command, prog), "click_messages": click_messages}
        _write(path, fingerprint, spec)
    return spec


class _Tee:
    """A text stream that passes everything on and keeps a copy of the text."""

    def __init__(self, stream: Any) -> None:
        self._stream, self.text = stream, []

    def write(self, s: Any) -> Any:
        if isinstance(s, str):
            self.text.append(s)
        return self._stream.write(s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def recording(args: list[str], spec: Optional[dict[str, Any]]) -> Iterator[Callable[[int], None]]:
    """Around Typer's run: when ``args`` ask for a help screen, keep what it prints for next time.

    Yields ``done(exit_code)``; a screen is kept only if Typer printed nothing on stderr."""
    request = classify(args, spec) if spec else None
    folder = cache_dir()
    if folder is None or request is None or request[0] not in ("help", "bare"):
        yield lambda code: None
        return
    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    codes: list[int] = []
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    try:
        yield codes.append
    finally:
        sys.stdout, sys.stderr = old
    if codes and codes[0] in (0, EXIT_USAGE) and not "".join(err.text) and out.text:
        key = _key(_fingerprint(), list(request))
        _write(_record_path(folder, "help", key), key, {"code": codes[0], "stdout": "".join(out.text)})
        _trim(folder)
