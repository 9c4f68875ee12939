"""Wall time and peak memory of the embeddings path at scale (synthetic features, sketched S).

    python3 benchmarks/embeddings_scale.py --n 100000 --dim 768 --classes 100 --sketch 32 --out bench-emb

Generates seeded Gaussian-mixture features (n x D float32) and labels, then runs, each in a fresh
process so its peak RSS is its own: ``dpcli influence --features ... --method cg --sketch K`` (head fit
by L-BFGS, then the k-column sketch-first CG solve) and ``dpcli prune --prune-ratio R``.  Prints and
writes ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_data(out: Path, n: int, dim: int, classes: int, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)).astype(np.float32) / np.sqrt(dim) * 3
    y = rng.integers(0, classes, n)
    f = np.lib.format.open_memmap(out / "features.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    for a in range(0, n, 65536):
        yy = y[a:a + 65536]
        f[a:a + len(yy)] = centers[yy] + rng.normal(size=(len(yy), dim)).astype(np.float32)
    f.flush()
    np.save(out / "labels.npy", y)
    return out / "features.npy", out / "labels.npy"


def run(cmd: list[str]) -> dict:
    """Run one dpcli command in a child process; its wall time and peak RSS (this child only)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dpcli", *cmd, "--json", "--quiet"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    if peak_kib <= before:
        print("note: peak RSS not above an earlier child's; read it as an upper bound", file=sys.stderr)
    return {"command": "dpcli " + " ".join(cmd), "wall_seconds": wall, "peak_rss_gib": peak_kib / 2**20,
            "result": json.loads(proc.stdout)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--sketch", type=int, default=32)
    ap.add_argument("--cg-tol", type=float, default=1e-4)
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--prune-ratio", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench-emb"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    feats, labels = make_data(args.out, args.n, args.dim, args.classes, args.seed)
    gen = time.perf_counter() - t0
    inf = args.out / "influence.h5"
    steps = [run(["influence", "--features", str(feats), "--labels", str(labels), "--method", "cg",
                  "--sketch", str(args.sketch), "--cg-tol", str(args.cg_tol), "--damping", str(args.damping),
                  "--out", str(inf), "--force"]),
             run(["prune", str(inf), "--prune-ratio", str(args.prune_ratio), "--out", str(args.out / "mask.h5")])]
    report = {"n": args.n, "dim": args.dim, "classes": args.classes, "d": args.classes * (args.dim + 1),
              "sketch": args.sketch, "generate_seconds": gen, "steps": steps,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "threads": os.environ.get("OMP_NUM_THREADS")}}
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    for s in steps:
        print(f"{s['command'][:60]}...  {s['wall_seconds']:.1f}s  peak RSS {s['peak_rss_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
