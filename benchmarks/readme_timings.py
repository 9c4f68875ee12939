"""Wall time of the README's commands on this machine: medians of fresh runs, beside the import floor.

Run by hand, on a machine as quiet as you can find (the load average is recorded before every run)::

    nice python3 benchmarks/readme_timings.py                 # 5 rounds
    nice python3 benchmarks/readme_timings.py --rounds 3 --only main

Each round runs, in a fresh run root: the README's main command (``dpcli prune --epsilon 0.05 digits``,
train -> influence -> prune), then ``retrain`` of its mask and ``verify-bound --epsilons 0.02,0.05,0.2``
(which reuses the trained model), and the floor: a Python that imports what a stage imports (torch, h5py,
scikit-learn, dpcli's CLI) and exits.  Raw rows go to benchmarks/results/readme-timings.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "readme-timings.jsonl"
FLOOR = "import torch, h5py, sklearn.datasets, dpcli.cli.application"


def commands(root: Path) -> dict[str, list[str]]:
    dp = [sys.executable, "-m", "dpcli"]
    return {
        "floor": [sys.executable, "-c", FLOOR],
        "main": [*dp, "prune", "--epsilon", "0.05", "digits", "--run-root", str(root), "--quiet"],
        "retrain": [
            *dp,
            "retrain",
            "digits",
            "--mask",
            str(root / "latest" / "prune" / "mask.h5"),
            "--run-root",
            str(root),
            "--quiet",
        ],
        "verify-bound": [
            *dp,
            "verify-bound",
            "digits",
            "--epsilons",
            "0.02,0.05,0.2",
            "--run-root",
            str(root),
            "--quiet",
        ],
    }


def run_once(name: str, cmd: list[str], env: dict[str, str]) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    r0 = os.times()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    r1 = os.times()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed: {proc.stderr[-2000:]}")
    cpu = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
    return {"case": name, "wall_s": wall, "cpu_s": cpu, "load_1min_before": load}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", action="append", help="cases to run (floor, main, retrain, verify-bound)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    rows = []
    machine = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    wanted = set(args.only or commands(Path()))
    if wanted & {"retrain", "verify-bound"}:
        wanted.add("main")  # they read its run directory
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="readme-timings-") as tmp:
            for name, cmd in commands(Path(tmp) / "runs").items():
                if name not in wanted:
                    continue
                row = {**run_once(name, cmd, env), "round": r, **machine, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                rows.append(row)
                print(json.dumps(row), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
    floor = [r["wall_s"] for r in rows if r["case"] == "floor"]
    print(f"\n{'case':14} {'median wall':>12} {'min':>7} {'max':>7} {'x floor':>8} {'load (max)':>11}")
    for name in dict.fromkeys(r["case"] for r in rows):
        walls = [r["wall_s"] for r in rows if r["case"] == name]
        ratio = statistics.median(walls) / statistics.median(floor) if floor else float("nan")
        load = max(r["load_1min_before"] for r in rows if r["case"] == name)
        print(
            f"{name:14} {statistics.median(walls):11.2f}s {min(walls):6.2f}s {max(walls):6.2f}s "
            f"{ratio:8.1f} {load:11.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
