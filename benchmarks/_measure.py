"""Run a command under ``/usr/bin/time -v`` and sample its whole process tree's PSS (shared helper).

``MemoryCgroup`` runs it inside a memory cgroup with a hard limit (cgroup v1 or v2, as root or with
a delegated subtree): the kernel then holds the whole process tree -- anonymous memory and the page
cache it fills -- to that many bytes, reclaiming page cache and killing the tree (exit 137) when
anonymous memory alone would exceed it.  This is how "data larger than the memory available" is
measured honestly on a machine with more RAM than the limit.
"""

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


class MemoryCgroup:
    """A child memory cgroup of this process's own, limited to ``limit`` bytes (removed by ``close``)."""

    def __init__(self, limit: int, name: str = "dpcli-bench") -> None:
        self.limit = int(limit)
        own = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") or [""]:
                own[c] = path
        v1 = Path("/sys/fs/cgroup/memory")
        if "memory" in own and v1.is_dir():  # cgroup v1
            self.v2 = False
            self.path = v1 / own["memory"].lstrip("/") / f"{name}-{os.getpid()}"
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
            swap = self.path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                try:
                    swap.write_text(str(self.limit))  # no escape into swap
                except OSError:
                    pass
        else:  # cgroup v2
            self.v2 = True
            self.path = Path("/sys/fs/cgroup") / own.get("", "/").lstrip("/") / f"{name}-{os.getpid()}"
            self.path.mkdir()
            (self.path / "memory.max").write_text(str(self.limit))
            (self.path / "memory.swap.max").write_text("0")

    def enter(self) -> None:
        """Move the calling process (a child, before exec) into the cgroup."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def reset_peak(self) -> None:
        if not self.v2:
            (self.path / "memory.max_usage_in_bytes").write_text("0")

    def stats(self) -> dict:
        """Peak usage (page cache included, so it sits near the limit when data are streamed) and OOM kills."""
        if self.v2:
            peak = self.path / "memory.peak"
            events = dict(ln.split() for ln in (self.path / "memory.events").read_text().splitlines())
            return {
                "cgroup_peak_mb": int(peak.read_text()) / 2**20 if peak.exists() else None,
                "oom_kills": int(events.get("oom_kill", 0)),
            }
        oom = dict(ln.split() for ln in (self.path / "memory.oom_control").read_text().splitlines())
        return {
            "cgroup_peak_mb": int((self.path / "memory.max_usage_in_bytes").read_text()) / 2**20,
            "oom_kills": int(oom.get("oom_kill", 0)),
            "limit_hits": int((self.path / "memory.failcnt").read_text()),
        }

    def close(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def run_measured(
    cmd: list[str],
    env: dict | None = None,
    log: Path | None = None,
    cgroup: MemoryCgroup | None = None,
    check: bool = True,
) -> dict:
    """Wall seconds, peak RSS of the largest process (GNU time) and peak PSS summed over the tree.

    With ``cgroup`` the command runs inside it (and its peak usage and OOM kills are added);
    ``check=False`` returns a failed command's exit status as ``returncode`` instead of exiting.
    """
    t0 = time.perf_counter()
    if cgroup is not None:
        cgroup.reset_peak()
    proc = subprocess.Popen(
        ["/usr/bin/time", "-v", *cmd],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=cgroup.enter if cgroup is not None else None,
    )
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
    if proc.returncode != 0 and check:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    status = re.search(r"Command terminated by signal (\d+)|Exit status: (\d+)", out)
    res = {
        "seconds": time.perf_counter() - t0,
        "max_rss_mb": int(m.group(1)) / 1024 if m else None,
        "tree_pss_mb": peak[0] / 2**20,
        "output": out,
        "returncode": proc.returncode,
        "child_status": status.group(0) if status else None,
    }
    if cgroup is not None:
        res.update(cgroup.stats())
    return res
