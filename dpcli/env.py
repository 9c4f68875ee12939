"""Every ``DPCLI_*`` environment variable, read here and only here, one typed accessor each.

Parsed in one place so every variable fails the same way (one line naming it); the table in
docs/reference-cli.md lists the same names (tests/test_env.py checks both ways).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dpcli.errors import DpcliError


def _raw(variable: str) -> str:
    return os.environ.get(variable, "").strip()


def parse_size(variable: str, default: int) -> int:
    """A byte size from environment ``variable`` (512M, 2G, 1.5GiB), or ``default`` when unset."""
    env = _raw(variable)
    if not env:
        return default
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?", env)
    if not m:
        raise DpcliError(f"{variable} must be a size such as 512M or 2G, got {env!r}")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def _positive_seconds(variable: str, default: float) -> float:
    env = _raw(variable)
    if not env:
        return default
    try:
        value = float(env)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise DpcliError(f"{variable} must be a positive number of seconds, got {env!r}")
    return value


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


DEFAULT_SOLVE_BUDGET = 4 << 30


def solve_budget() -> int:
    """Bytes one selection matrix may take: ``$DPCLI_SOLVE_BUDGET`` (default 4 GiB; e.g. 512M, 32G).

    It bounds the covered solve's matrix (S plus its count and feature columns), and in dataset mode the
    dense S that ``prune`` would hold: a larger S is stored as its sketch.
    """
    return parse_size("DPCLI_SOLVE_BUDGET", DEFAULT_SOLVE_BUDGET)


DEFAULT_MEMORY_BUDGET = 1 << 30


def memory_budget() -> int:
    """Bytes of decoded images held in memory at most: ``$DPCLI_MEMORY_BUDGET`` (default 1 GiB); a larger
    image folder is streamed from its cache."""
    return parse_size("DPCLI_MEMORY_BUDGET", DEFAULT_MEMORY_BUDGET)


DEFAULT_PROBS_BUDGET = 2 << 30


def probs_budget() -> int:
    """Bytes of recorded class probabilities at most: ``$DPCLI_PROBS_BUDGET`` (default 2 GiB; TDDS reads them)."""
    return parse_size("DPCLI_PROBS_BUDGET", DEFAULT_PROBS_BUDGET)


DEFAULT_PROGRESS_INTERVAL = 30.0


def progress_interval() -> float:
    """Seconds between progress lines off a terminal and in the API's log: ``$DPCLI_PROGRESS_INTERVAL``
    (default 30; e.g. 5 for a short job's log, 600 for a quiet cron mail)."""
    return _positive_seconds("DPCLI_PROGRESS_INTERVAL", DEFAULT_PROGRESS_INTERVAL)


DEFAULT_DIST_TIMEOUT = 1800.0


def dist_timeout() -> float:
    """Seconds a torchrun rank waits for the others: ``$DPCLI_DIST_TIMEOUT`` (default 1800); a hung rank
    then fails the job instead of holding the others forever."""
    return _positive_seconds("DPCLI_DIST_TIMEOUT", DEFAULT_DIST_TIMEOUT)


def loader_workers() -> int:
    """DataLoader worker processes for streamed splits: ``$DPCLI_LOADER_WORKERS``, else min(4, CPUs)."""
    env = _raw("DPCLI_LOADER_WORKERS")
    if not env:
        return min(4, _cpus())
    try:
        return max(0, int(env))
    except ValueError:
        raise DpcliError(f"DPCLI_LOADER_WORKERS must be an integer, got {env!r}") from None


def cache_workers() -> int:
    """Cache-building processes: ``$DPCLI_CACHE_WORKERS``, else the CPUs this process may use (at most 16)."""
    env = _raw("DPCLI_CACHE_WORKERS")
    if not env:
        return max(1, min(_cpus(), 16))
    if not env.isdigit():
        raise DpcliError(f"DPCLI_CACHE_WORKERS must be a whole number, got {env!r}")
    return max(1, int(env))


JPEG_DECODERS = ("auto", "cuda", "pil")


def jpeg_decode() -> str:
    """Where cache builds decode JPEGs: ``$DPCLI_JPEG_DECODE``, one of auto (default), cuda, pil."""
    value = _raw("DPCLI_JPEG_DECODE").lower() or "auto"
    if value not in JPEG_DECODERS:
        raise DpcliError(f"DPCLI_JPEG_DECODE must be one of {', '.join(JPEG_DECODERS)}, got {value!r}")
    return value


def no_wait() -> bool:
    """``$DPCLI_NO_WAIT`` (1, true, yes, on): a job that finds an artifact locked exits at once (code 75)."""
    return _raw("DPCLI_NO_WAIT").lower() in ("1", "true", "yes", "on")


def runs_root() -> Path:
    """The root of the run directories: ``$DPCLI_RUNS``, else ./dpcli-runs."""
    return Path(_raw("DPCLI_RUNS") or "dpcli-runs")


def data_root() -> Path:
    """Dataset downloads and image caches: ``$DPCLI_DATA``, else ``$XDG_CACHE_HOME/dpcli/data``, else
    ``~/.cache/dpcli/data``."""
    env = _raw("DPCLI_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dpcli" / "data"
