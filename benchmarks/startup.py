"""Start-up time of help and option errors: medians of interleaved runs, and their ratio to `python3 -c pass`.

Run by hand (not a test)::

    nice python3 benchmarks/startup.py                      # this tree, 7 rounds
    nice python3 benchmarks/startup.py --rounds 9 --also OLD_TREE   # and another checkout, same rounds

Each round runs every case once, one after the other, so a change of machine load hits all of them
alike.  The floor is `python3 -c pass` and the peer an empty two-command Typer app, both measured in
the same rounds; CPU s is the median user + system time of the case's process (less sensitive to the
machine's load than the wall time).  ``--also`` runs the same cases against another checkout (e.g.
``git worktree add /tmp/old HEAD~1``); HOME and XDG_CACHE_HOME point at a fresh folder, so nothing a
checkout kept in a cache is replayed.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMPTY_APP = """
import typer
app = typer.Typer(add_completion=False)
@app.command()
def a(x: int = 1): pass
@app.command()
def b(y: int = 1): pass
app()
"""


def cases(tree: Path, tag: str) -> dict[str, list[str]]:
    py = [sys.executable, "-m", "dpcli"]
    return {
        f"{tag} --help": [*py, "--help"],
        f"{tag} prune --help": [*py, "prune", "--help"],
        f"{tag} prune x.h5 --epsilom 1": [*py, "prune", "x.h5", "--epsilom", "1"],
        f"{tag} --version": [*py, "--version"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--also", type=Path, help="another checkout to measure in the same rounds")
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="dpcli-startup-")
    runs: list[tuple[str, list[str], dict[str, str]]] = []
    base_env = {**os.environ, "COLUMNS": "100", "HOME": cache, "XDG_CACHE_HOME": cache}
    for tree, tag in ((ROOT, "this"), *(((args.also.resolve(), "other"),) if args.also else ())):
        env = {**base_env, "PYTHONPATH": str(tree)}
        runs += [(name, cmd, env) for name, cmd in cases(tree, tag).items()]
    app = Path(cache) / "empty_app.py"
    app.write_text(EMPTY_APP)
    runs += [
        ("python3 -c pass", [sys.executable, "-c", "pass"], base_env),
        ("python3 -c 'import typer'", [sys.executable, "-c", "import typer"], base_env),
        ("empty two-command Typer app a --help", [sys.executable, str(app), "a", "--help"], base_env),
    ]
    for _, cmd, env in runs:  # warms the OS file cache and the bytecode
        subprocess.run(cmd, capture_output=True, env=env, cwd=tempfile.gettempdir())
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in runs}  # user + system seconds of the child
    for _ in range(args.rounds):
        for name, cmd, env in runs:
            c0, t0 = _child_cpu(), time.perf_counter()
            subprocess.run(cmd, capture_output=True, env=env, cwd=tempfile.gettempdir())
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(_child_cpu() - c0)
    base = statistics.median(times["python3 -c pass"])
    print(
        f"{args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f} at the end; "
        f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}"
    )
    print(f"{'case':48} {'median s':>9} {'min s':>7} {'/ pass':>7} {'CPU s':>7}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:48} {med:9.3f} {min(values):7.3f} {med / base:7.2f} {statistics.median(cpu[name]):7.3f}")


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
