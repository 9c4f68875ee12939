"""Run a command under ``/usr/bin/time -v`` and sample its whole process tree's PSS (shared helper)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            out.extend(int(c) for c in text.split())
    except OSError:
        pass
    return out


def _pss(pid: int) -> int:
    """Proportional set size: shared pages (torch's libraries in forked workers) split between sharers."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_pss(pid: int) -> int:
    """Sum of PSS over ``pid`` and all its descendants: the memory the whole tree really holds."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += _pss(p)
        stack.extend(_children(p))
    return total


def run_measured(cmd: list[str], env: dict | None = None, log: Path | None = None) -> dict:
    """Wall seconds, peak RSS of the largest process (GNU time) and peak PSS summed over the tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_pss(proc.pid))
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    if log is not None:
        log.write_text(out)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    return {"seconds": time.perf_counter() - t0, "max_rss_mb": int(m.group(1)) / 1024 if m else None,
            "tree_pss_mb": peak[0] / 2**20, "output": out}
