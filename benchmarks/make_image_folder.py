"""Write a synthetic image folder of mixed-size JPEGs (ImageFolder or ImageNet layout) for benchmarks.

``--layout imagefolder`` (default): ``train/<class>/`` and ``val/<class>/``.  ``--layout imagenet``:
ILSVRC2012's layout, ``train/<wnid>/<wnid>_<k>.JPEG``, a flat ``val/ILSVRC2012_val_<k>.JPEG`` and the
val labels in ``meta.bin`` (the file torchvision's ImageNet class writes after parsing the devkit).

Each image is smooth random colour structure (a small random grid resized up, like a blurry photo)
plus a class-dependent tint, so it compresses like a photo and a model can learn the classes.
Sizes are uniform in [--min-size, --max-size] per side; aspect ratios vary.  Deterministic per
--seed; written by a process pool.

    python3 benchmarks/make_image_folder.py /tmp/folder --train 20000 --val 1000 --classes 10
    python3 benchmarks/make_image_folder.py /tmp/inet --layout imagenet --train 200000 --val 5000 --classes 100
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


def wnid(label: int) -> str:
    """A WordNet-id-like class name (ImageNet layout)."""
    return f"n{label:08d}"


def _name(folder: str, split: str, layout: str, label: int, i: int) -> Path:
    if layout == "imagefolder":
        return Path(folder) / split / f"c{label:03d}" / f"img{i:07d}.jpg"
    if split == "train":
        return Path(folder) / "train" / wnid(label) / f"{wnid(label)}_{i}.JPEG"
    return Path(folder) / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG"


def _write(job: tuple[str, str, str, int, int, int, int, int, int]) -> int:
    """Write images [start, stop) of one split; returns bytes written."""
    folder, split, layout, start, stop, classes, lo, hi, seed = job
    tints = _tints(classes)
    total = 0
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        label = i % classes
        w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        grid = rng.integers(0, 256, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)).astype(np.int64)
        grid = np.clip(grid + tints[label], 0, 255).astype(np.uint8)
        im = Image.fromarray(grid).resize((w, h), Image.BICUBIC)
        path = _name(folder, split, layout, label, i)
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
    ap.add_argument("--layout", choices=["imagefolder", "imagenet"], default="imagefolder")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    t0 = time.perf_counter()
    jobs = []
    for split, n, seed in (("train", args.train, args.seed), ("val", args.val, args.seed + 1)):
        for c in range(args.classes):
            _name(str(args.out), split, args.layout, c, 0).parent.mkdir(parents=True, exist_ok=True)
        step = 500
        jobs += [
            (str(args.out), split, args.layout, s, min(n, s + step), args.classes, args.min_size, args.max_size, seed)
            for s in range(0, n, step)
        ]
    with ProcessPoolExecutor(args.workers) as pool:
        written = sum(pool.map(_write, jobs))
    if args.layout == "imagenet":
        import torch

        val_wnids = [wnid(i % args.classes) for i in range(args.val)]  # val file k (sorted) is image k
        torch.save(({wnid(c): (wnid(c),) for c in range(args.classes)}, val_wnids), args.out / "meta.bin")
    n = args.train + args.val
    print(f"wrote {n} JPEGs ({written / 1e9:.2f} GB) to {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
