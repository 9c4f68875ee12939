"""Write a synthetic image folder of mixed-size JPEGs (train/<class>/ and val/<class>/) for benchmarks.

Each image is smooth random colour structure (a small random grid resized up, like a blurry photo)
plus a class-dependent tint, so it compresses like a photo and a model can learn the classes.
Sizes are uniform in [--min-size, --max-size] per side; aspect ratios vary.  Deterministic per
--seed; written by a process pool.

    python3 benchmarks/make_image_folder.py /tmp/folder --train 20000 --val 1000 --classes 10
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def _tints(classes: int) -> np.ndarray:
    return np.random.default_rng(12345).integers(-60, 61, size=(classes, 3))


def _write(job: tuple[str, int, int, int, int, int, int]) -> int:
    """Write images [start, stop) of one split; returns bytes written."""
    folder, start, stop, classes, lo, hi, seed = job
    tints = _tints(classes)
    total = 0
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        label = i % classes
        w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        grid = rng.integers(0, 256, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)).astype(np.int64)
        grid = np.clip(grid + tints[label], 0, 255).astype(np.uint8)
        im = Image.fromarray(grid).resize((w, h), Image.BICUBIC)
        path = Path(folder) / f"c{label:03d}" / f"img{i:07d}.jpg"
        im.save(path, quality=85)
        total += path.stat().st_size
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--min-size", type=int, default=64)
    ap.add_argument("--max-size", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    t0 = time.perf_counter()
    jobs = []
    for split, n, seed in (("train", args.train, args.seed), ("val", args.val, args.seed + 1)):
        for c in range(args.classes):
            (args.out / split / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
        step = 500
        jobs += [(str(args.out / split), s, min(n, s + step), args.classes, args.min_size, args.max_size, seed)
                 for s in range(0, n, step)]
    with ProcessPoolExecutor(args.workers) as pool:
        written = sum(pool.map(_write, jobs))
    n = args.train + args.val
    print(f"wrote {n} JPEGs ({written / 1e9:.2f} GB) to {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
