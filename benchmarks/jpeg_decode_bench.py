"""Cache-building decode rate: PIL in worker processes vs batched ``decode_jpeg`` on the GPU.

On the first ``--n`` training files of an image folder (benchmarks/make_image_folder.py), times the
two decoders of the cache build on the same files and the same stored size, and reports images/s
and how far apart the pixels are (max / mean absolute difference in uint8 levels):

* ``pil``: :func:`dpcli.data.imageio.decode_many` in ``--workers`` processes, blocks of 512 files;
* ``cuda`` (or ``--device cpu``): :func:`dpcli.data.jpeg.decode_many` in this process, blocks of 512.

    python3 benchmarks/jpeg_decode_bench.py /tmp/folder --n 20000 --image-size 64 --workers 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BLOCK = 512


def main() -> None:
    from dpcli.data import cache, imageio, jpeg, layouts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    files = [p for p, _ in layouts.scan(args.folder.resolve()).train][: args.n]
    size = (cache.stored_side(args.image_size), args.image_size)
    jobs = [(files[i : i + BLOCK], size, False) for i in range(0, len(files), BLOCK)]
    res: dict = {
        "files": len(files),
        "image_size": args.image_size,
        "stored": size[0],
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "device": args.device,
    }
    pil: list = [None] * len(jobs)

    def keep(k: int, out: list) -> None:
        pil[k] = out

    t0 = time.perf_counter()
    cache._run(imageio.decode_many, jobs, args.workers, keep)
    res["pil_images_per_s"] = len(files) / (time.perf_counter() - t0)
    import torch

    jpeg.decode_many(files[:64], size, False, args.device)  # warm-up (CUDA context, nvjpeg handles)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    batched = [jpeg.decode_many(paths, sz, gray, args.device) for paths, sz, gray in jobs]
    res[f"{args.device}_images_per_s"] = len(files) / (time.perf_counter() - t0)
    diffs = [
        np.abs(a[1].astype(np.int16) - b[1].astype(np.int16))
        for ja, jb in zip(pil, batched)
        for a, b in zip(ja, jb)
        if a[0] == b[0] == "ok"
    ]
    res["max_abs_diff"] = int(max(int(d.max()) for d in diffs))
    res["mean_abs_diff"] = float(np.mean([d.mean() for d in diffs]))
    res["speedup"] = res[f"{args.device}_images_per_s"] / res["pil_images_per_s"]
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
