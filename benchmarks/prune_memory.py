"""Peak memory of `dpcli prune` on a wide synthetic S (the CIFAR-100 / ResNet-18 shape, d = 51,300).

Writes a synthetic influence.h5 (n x d float32, random rows with a common drift so the solver has work),
then runs `dpcli prune` under `/usr/bin/time -v` for the plain objective and for the coverage options,
and prints the peak RSS against the size of S. Run by hand:

    python benchmarks/prune_memory.py --n 10000 --d 51300 --dir /tmp/prune-mem
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dpcli.artifacts.h5 import StreamHash, atomic_h5
from dpcli.artifacts.rows import row_chunks


def write_influence(path: Path, n: int, d: int, classes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    attrs = {
        "method": "exact",
        "damping": 5e-4,
        "n": n,
        "d": d,
        "num_classes": classes,
        "feature_dim": d // classes - 1,
        "checkpoint": "",
        "checkpoint_fingerprint": "synthetic",
        "dataset": "synthetic",
        "dataset_fingerprint": "synthetic",
        "config": {"method": "exact"},
    }
    drift = rng.normal(size=d).astype(np.float32) * 0.3
    with atomic_h5(path, "influence", attrs) as f:
        S = f.create_dataset("S", shape=(n, d), dtype=np.float32, chunks=row_chunks(n, d))
        h = StreamHash()
        for a in range(0, n, 1000):
            block = (rng.normal(size=(min(1000, n - a), d)).astype(np.float32) + drift) * 1e-4
            S[a : a + len(block)] = block
            h.update(block)
        f.create_dataset("labels", data=labels)
        f.attrs["fingerprint"] = h.hexdigest()


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return kb / 2**20, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--d", type=int, default=51300)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/prune-mem"))
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    src = args.dir / "influence.h5"
    if not src.exists():
        write_influence(src, args.n, args.d, args.classes)
    s_gb = args.n * args.d * 4 / 2**30
    print(f"S: {args.n} x {args.d} float32 = {s_gb:.2f} GiB")
    runs = {
        "plain --prune-ratio 0.3": ["--prune-ratio", "0.3"],
        "--epsilon (score rule influence-score)": ["--epsilon", "1e-3", "--method", "influence-score"],
        "coverage --balance --prune-ratio 0.3": ["--prune-ratio", "0.3", "--balance"],
    }
    for label, extra in runs.items():
        gb, secs = peak_rss(
            [sys.executable, "-m", "dpcli", "prune", str(src), *extra, "--out", str(args.dir / "mask.h5"), "--quiet"]
        )
        print(f"{label:45s} peak RSS {gb:6.2f} GiB = {gb / s_gb:4.2f} x S   ({secs:.0f} s)")


if __name__ == "__main__":
    main()
