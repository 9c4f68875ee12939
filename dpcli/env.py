"""Settings read from the environment, parsed in one place so every variable fails the same way."""

from __future__ import annotations

import os
import re

from dpcli.errors import DpcliError


def parse_size(variable: str, default: int) -> int:
    """A byte size from environment ``variable`` (512M, 2G, 1.5GiB), or ``default`` when unset."""
    env = os.environ.get(variable, "").strip()
    if not env:
        return default
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?", env)
    if not m:
        raise DpcliError(f"{variable} must be a size such as 512M or 2G, got {env!r}")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


DEFAULT_SOLVE_BUDGET = 4 << 30


def solve_budget() -> int:
    """Bytes one selection matrix may take: ``$DPCLI_SOLVE_BUDGET`` (default 4 GiB; e.g. 512M, 32G).

    It bounds the covered solve's matrix (S plus its count and feature columns), and in dataset mode the
    dense S that ``prune`` would hold: a larger S is stored as its sketch.
    """
    return parse_size("DPCLI_SOLVE_BUDGET", DEFAULT_SOLVE_BUDGET)


DEFAULT_PROGRESS_INTERVAL = 30.0


def progress_interval() -> float:
    """Seconds between progress lines off a terminal and in the API's log: ``$DPCLI_PROGRESS_INTERVAL``
    (default 30; e.g. 5 for a short job's log, 600 for a quiet cron mail)."""
    env = os.environ.get("DPCLI_PROGRESS_INTERVAL", "").strip()
    if not env:
        return DEFAULT_PROGRESS_INTERVAL
    try:
        value = float(env)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise DpcliError(f"DPCLI_PROGRESS_INTERVAL must be a positive number of seconds, got {env!r}")
    return value
