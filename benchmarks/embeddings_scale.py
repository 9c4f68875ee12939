"""Wall time and peak memory of the embeddings path at scale: influence -> prune -> retrain -> verify-bound.

    python3 benchmarks/embeddings_scale.py --n 1000000 --dim 64 --classes 10 --out /tmp/bench-emb
    python3 benchmarks/embeddings_scale.py --n 100000 --dim 768 --classes 100 --estimator cg --sketch 32

Generates seeded Gaussian-mixture features (n x D float32, written to a memory-mapped .npy in blocks)
with labels, and a test split, then runs each stage in its own process so that its wall time and
peak RSS (``wait4``'s ``ru_maxrss`` of that child alone) are its own:

``dpcli influence --features ... --test-features ...`` (head fit, then S: dense or sketched),
``dpcli prune influence.h5 --prune-ratio R``, ``dpcli retrain features.npy --mask mask.h5`` (head refit
on the kept rows, a checkpoint artifact) and ``dpcli verify-bound influence.h5 --mask mask.h5``
(refits on the mask and on a random mask of the same count).  Prints and writes ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_BLOCK = 65536


def make_split(out: Path, name: str, n: int, centers: np.ndarray, rng: np.random.Generator) -> tuple[Path, Path]:
    classes, dim = centers.shape
    y = rng.integers(0, classes, n)
    path = out / f"{name}-features.npy"
    f = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for a in range(0, n, _BLOCK):
        yy = y[a : a + _BLOCK]
        f[a : a + len(yy)] = centers[yy] + rng.normal(size=(len(yy), dim)).astype(np.float32)
    f.flush()
    del f
    np.save(out / f"{name}-labels.npy", y)
    return path, out / f"{name}-labels.npy"


def run(cmd: list[str], profile: Path | None = None) -> dict:
    """Run one dpcli command in a child process: its wall time and its own peak RSS (wait4).
    ``profile``: also write ``<stage>.prof`` (cProfile) there and print its top functions."""
    t0 = time.perf_counter()
    prof = ["-m", "cProfile", "-o", str(profile / f"{cmd[0]}.prof")] if profile else []
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, *prof, "-m", "dpcli", *cmd, "--json", "--quiet"], stdout=out, stderr=err, text=True
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (subprocess has not reaped it)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dpcli {' '.join(cmd)} failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    result = json.loads(stdout) if stdout.strip() else {}
    step = {
        "command": "dpcli " + " ".join(cmd),
        "wall_seconds": round(wall, 2),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
        "result": result,
    }
    print(f"  {cmd[0]:<13} {wall:8.1f} s  peak RSS {step['peak_rss_gib']:.2f} GiB", flush=True)
    if profile:
        import pstats

        pstats.Stats(str(profile / f"{cmd[0]}.prof")).sort_stats("cumulative").print_stats("dpcli/", 12)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--estimator", dest="method", default="exact")
    ap.add_argument("--sketch", type=int, default=None)
    ap.add_argument("--cg-tol", type=float, default=1e-4)
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--prune-ratio", type=float, default=0.3)
    ap.add_argument("--solver", default="swap")
    ap.add_argument(
        "--method", dest="select_method", default=None, help="prune --method (default: dpcli's default, auto)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-emb"))
    ap.add_argument("--stages", default="influence,prune,retrain,verify-bound")
    ap.add_argument("--reuse-data", action="store_true", help="keep the generated files of an earlier run")
    ap.add_argument("--device", default=None, help="--device of influence (default: dpcli's auto)")
    ap.add_argument("--profile", type=Path, default=None, help="write a cProfile of each stage to this folder")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    centers = rng.normal(size=(args.classes, args.dim)).astype(np.float32) / np.sqrt(args.dim) * 3
    t0 = time.perf_counter()
    if args.reuse_data and (args.out / "test-labels.npy").is_file():
        feats, labels = args.out / "train-features.npy", args.out / "train-labels.npy"
        tfeats, tlabels = args.out / "test-features.npy", args.out / "test-labels.npy"
    else:
        feats, labels = make_split(args.out, "train", args.n, centers, rng)
        tfeats, tlabels = make_split(args.out, "test", args.n_test, centers, rng)
    gen = time.perf_counter() - t0
    inf, mask = args.out / "influence.h5", args.out / "mask.h5"
    scale = ["--estimator", args.method, "--cg-tol", str(args.cg_tol)]
    if args.sketch:
        scale += ["--sketch", str(args.sketch)]
    if args.device:
        scale += ["--device", args.device]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    commands = {
        "influence": [
            "influence",
            "--features",
            str(feats),
            "--labels",
            str(labels),
            "--test-features",
            str(tfeats),
            "--test-labels",
            str(tlabels),
            *scale,
            "--damping",
            str(args.damping),
            "--out",
            str(inf),
            "--force",
        ],
        "prune": [
            "prune",
            str(inf),
            "--prune-ratio",
            str(args.prune_ratio),
            "--solver",
            args.solver,
            *(["--method", args.select_method] if args.select_method else []),
            "--out",
            str(mask),
            "--force",
        ],
        "retrain": ["retrain", str(feats), "--mask", str(mask)],  # beside the mask, where verify-bound looks
        "verify-bound": ["verify-bound", str(inf), "--mask", str(mask), "--out", str(args.out / "verify-bound")],
    }
    print(
        f"n={args.n} D={args.dim} C={args.classes} d={args.classes * (args.dim + 1)} (data generated in {gen:.1f} s)",
        flush=True,
    )
    steps = []
    for stage in args.stages.split(","):
        steps.append(run(commands[stage], args.profile))
        _write(args, gen, steps)


def _write(args: argparse.Namespace, gen: float, steps: list[dict]) -> None:
    """results.json after every stage (a run stopped midway keeps what it measured)."""
    report = {
        "n": args.n,
        "n_test": args.n_test,
        "dim": args.dim,
        "classes": args.classes,
        "d": args.classes * (args.dim + 1),
        "method": args.method,
        "sketch": args.sketch,
        "generate_seconds": gen,
        "steps": steps,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_after": os.getloadavg(),
            "threads": os.environ.get("OMP_NUM_THREADS"),
        },
    }
    name = "results.json" if args.stages == "influence,prune,retrain,verify-bound" else f"results-{args.stages}.json"
    if args.select_method:
        name = name.replace(".json", f"-{args.select_method}.json")
    (args.out / name).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
