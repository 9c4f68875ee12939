"""Fault campaign behind docs/reliability.md: kill -9, unwritable outputs, full disks, concurrent jobs.

    python3 benchmarks/reliability_campaign.py --rounds 1 --fs-sizes 64k,1m --out campaign.json

Every case runs the real CLI (``python3 -m dpcli``) in a subprocess on the tiny digits
configuration of the test suite.  Needs ``unshare -rm`` for the read-only / full tmpfs
cases (skipped otherwise).  Prints one JSON summary; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "3", "--width", "8", "--depth", "2", "--device", "cpu"]
CHAIN = ["prune", "--epsilon", "0.05", "digits", *TINY]
NAMES = {"train": "checkpoint.h5", "influence": "influence.h5", "prune": "mask.h5"}
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def dpcli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dpcli", *map(str, args)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if p.name.endswith((".partial", ".lock")))


def stage_dir(root: Path, stage: str) -> Path | None:
    d = next(root.glob("digits/train-*"), None)
    for sub in ("influence-*", "prune-*")[: ("train", "influence", "prune").index(stage)]:
        d = None if d is None else next(d.glob(sub), None)
    return d


def started(root: Path, stage: str) -> bool:
    d = stage_dir(root, stage)
    return d is not None and (d / f".{NAMES[stage]}.lock").exists()


def result(root: Path) -> dict:
    """Weights, S and mask of a finished chain, as comparable bytes."""
    out: dict = {}
    with h5py.File(next(root.glob("digits/train-*/checkpoint.h5")), "r") as f:
        out["weights"] = b"".join(np.ascontiguousarray(f["model"][k][()]).tobytes() for k in sorted(f["model"]))
    with h5py.File(next(root.glob("digits/train-*/influence-*/influence.h5")), "r") as f:
        out["S"] = f["S"][()].tobytes()
    with h5py.File(next(root.glob("digits/train-*/influence-*/prune-*/mask.h5")), "r") as f:
        out["keep"] = f["keep"][()].tobytes()
        out["norm"] = float(f.attrs["achieved_norm"])
    return out


def kill_round(root: Path, rng: random.Random, stats: dict) -> None:
    for stage, limit in (("train", 1.5), ("influence", 0.4), ("prune", 0.4)):
        proc = dpcli(*CHAIN, "--run-root", root, "--quiet")
        deadline = time.monotonic() + 600
        while proc.poll() is None and not started(root, stage) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, limit))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate()
        landed = proc.returncode == -signal.SIGKILL
        stats["kills"][stage]["tried"] += 1
        stats["kills"][stage]["landed"] += landed
        stats["orphans_after_kill"] += len([p for p in leftovers(root) if p.endswith(".partial")])
    proc = dpcli(*CHAIN, "--run-root", root, "--quiet")
    proc.communicate()
    stats["reruns"] += 1
    stats["rerun_failures"] += proc.returncode != 0
    stats["leftovers_after_rerun"] += len(leftovers(root))
    if proc.returncode == 0:
        stats["identical_to_uninterrupted"] += int(result(root) == stats["_ref"])


def epoch_watch(path_glob: Path, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        for p in path_glob.parent.glob(path_glob.name):
            ck = p / "checkpoint.h5"
            try:
                with h5py.File(ck, "r") as f:
                    seen.append(int(f.attrs["epoch"]))
            except (OSError, KeyError):
                pass
        time.sleep(0.01)


def concurrent_round(root: Path, stats: dict, overlap: bool) -> None:
    """Two jobs on one run root: identical, or sharing only train + influence (different epsilon)."""
    second = list(CHAIN)
    if overlap:
        second[second.index("0.05")] = "0.1"
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=epoch_watch, args=(root / "digits" / "train-*", stop, seen))
    watcher.start()
    a = dpcli(*CHAIN, "--run-root", root, "--json")
    b = dpcli(*second, "--run-root", root, "--json")
    (out_a, err_a), (out_b, err_b) = a.communicate(), b.communicate()
    stop.set()
    watcher.join()
    key = "overlapping" if overlap else "identical"
    s = stats["concurrent"][key]
    s["rounds"] += 1
    s["both_succeeded"] += a.returncode == 0 and b.returncode == 0
    s["one_waited"] += ("waiting for" in err_a) != ("waiting for" in err_b)
    s["train_ran_once"] += sum("train: done" in e and "while this job waited" not in e for e in (err_a, err_b)) <= 1
    s["epoch_went_back"] += any(y < x for x, y in zip(seen, seen[1:]))
    s["leftovers"] += len(leftovers(root))
    if not overlap and a.returncode == 0 and b.returncode == 0:
        ma, mb = json.loads(out_a)["mask"], json.loads(out_b)["mask"]
        with h5py.File(ma, "r") as fa, h5py.File(mb, "r") as fb:
            s["same_mask"] += bool(np.array_equal(fa["keep"][()], fb["keep"][()]))


FS_CASES = """
import contextlib, io, json, sys
from dpcli.cli import main
ck, inf, ro, full = sys.argv[1:5]
tiny = ["--epochs", "3", "--width", "8", "--depth", "2", "--device", "cpu", "--quiet"]
cases = {
  "prune --out on a read-only fs": ["prune", inf, "--epsilon", "0.05", "--out", ro + "/m.h5", "--quiet"],
  "prune --indices-out on a read-only fs": ["prune", inf, "--epsilon", "0.05", "--out", full + "/m.h5",
                                            "--indices-out", ro + "/kept.txt", "--quiet"],
  "train --run-root on a read-only fs": ["train", "digits", *tiny, "--run-root", ro + "/runs"],
  "train --out on a full disk": ["train", "digits", *tiny, "--out", full + "/ck.h5"],
  "influence --out on a full disk": ["influence", ck, "--out", full + "/inf.h5", "--device", "cpu", "--quiet"],
  "prune --out an existing directory": ["prune", inf, "--epsilon", "0.05", "--out", full, "--quiet"],
  "prune --out /proc/m.h5": ["prune", inf, "--epsilon", "0.05", "--out", "/proc/m.h5", "--quiet"],
  "prune --indices-out /proc/x/kept.txt": ["prune", inf, "--epsilon", "0.05", "--out", full + "/m2.h5",
                                           "--indices-out", "/proc/x/kept.txt", "--quiet"],
}
report = {}
for name, args in cases.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    report[name] = [code, err.getvalue().strip()]
print(json.dumps(report))
"""


def fs_cases(work: Path, stats: dict, sizes: list[str]) -> None:
    ck = next(work.glob("reference/digits/train-*/checkpoint.h5"))
    inf = next(work.glob("reference/digits/train-*/influence-*/influence.h5"))
    for size in sizes:
        ro, full = work / f"ro-{size}", work / f"full-{size}"
        ro.mkdir()
        full.mkdir()
        script = work / "fs_cases.py"
        script.write_text(FS_CASES)
        shell = (f"mount -t tmpfs -o size=1m,ro none {ro} && mount -t tmpfs -o size={size} none {full} && "
                 f"{sys.executable} {script} {ck} {inf} {ro} {full}; rc=$?; "
                 f"echo LEFT $(ls -A {ro} {full} | grep -v ':$' | grep -v '^m.h5$' | wc -l); exit $rc")
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, env=ENV)
        lines = proc.stdout.strip().splitlines()
        report = json.loads(lines[-2]) if proc.returncode == 0 else {}
        stats["fs"].append({"tmpfs": size, "exit": proc.returncode, "left": lines[-1] if lines else "",
                            "cases": report})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--fs-sizes", default="16k,64k,200k,1m", help="Sizes of the full tmpfs to try.")
    ap.add_argument("--out", type=Path)
    ns = ap.parse_args()
    rng = random.Random(ns.seed)
    stats: dict = {"rounds": ns.rounds, "kills": {s: {"tried": 0, "landed": 0} for s in NAMES},
                   "orphans_after_kill": 0, "reruns": 0, "rerun_failures": 0, "leftovers_after_rerun": 0,
                   "identical_to_uninterrupted": 0, "fs": [],
                   "concurrent": {k: {"rounds": 0, "both_succeeded": 0, "one_waited": 0, "train_ran_once": 0,
                                      "epoch_went_back": 0, "leftovers": 0, "same_mask": 0}
                                  for k in ("identical", "overlapping")}}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="dpcli-campaign-") as tmp:
        work = Path(tmp)
        ref_root = work / "reference"
        p = dpcli(*CHAIN, "--run-root", ref_root, "--quiet")
        p.communicate()
        stats["_ref"] = result(ref_root)
        for r in range(ns.rounds):
            kill_round(work / f"kill-{r}", rng, stats)
            concurrent_round(work / f"same-{r}", stats, overlap=False)
            concurrent_round(work / f"overlap-{r}", stats, overlap=True)
        if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
            fs_cases(work, stats, ns.fs_sizes.split(","))
    stats.pop("_ref", None)
    stats["wall_seconds"] = round(time.time() - t0, 1)
    text = json.dumps(stats, indent=2)
    print(text)
    if ns.out:
        ns.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
