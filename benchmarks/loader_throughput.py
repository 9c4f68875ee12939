"""Cache-build and one-epoch data-loading throughput of dpcli vs torchvision ImageFolder + DataLoader.

On one folder (benchmarks/make_image_folder.py), each phase runs in its own process under
``/usr/bin/time -v`` (peak RSS of the largest process) while the process tree's summed PSS (proportional set size) is
sampled:

* ``build``: dpcli decodes every file once into its on-disk cache at ``--image-size`` (parallel);
* ``dpcli``: one shuffled training epoch over the streamed cache: DataLoader workers read uint8
  batches, RandomResizedCrop(N) + flip + normalize run batched in the main process;
* ``torchvision``: one shuffled epoch of ``ImageFolder(train, transform=RandomResizedCrop(N),
  RandomHorizontalFlip, ToTensor, Normalize)`` + ``DataLoader`` with the same workers and batch.

The ratio is measured in one run, so machine load hits both sides alike.

    python3 benchmarks/loader_throughput.py /tmp/folder --image-size 64 --workers 2

``--max-batches K`` times only the first K batches of each epoch (both sides alike), for folders too
large to read whole on a small machine; ``--memory-limit 1G`` runs every phase in a memory cgroup
of that size (see benchmarks/_measure.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import MemoryCgroup, run_measured  # noqa: E402
from pipeline_rss import _size  # noqa: E402


def phase_build(folder: Path, root: Path, size: int) -> dict:
    from dpcli.data.sources import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(f"imagefolder:{folder}", root, image_size=size, stream=True)
    dt = time.perf_counter() - t0
    n = len(ds.train) + len(ds.test)
    return {"images": n, "seconds": dt, "images_per_s": n / dt, "cache_gb": ds.train.images.nbytes / 1e9}


def phase_dpcli(folder: Path, root: Path, size: int, batch: int, workers: int, max_batches: int) -> dict:
    import torch

    from dpcli.data.batches import iterate_batches
    from dpcli.data.sources import load_dataset

    ds = load_dataset(f"imagefolder:{folder}", root, image_size=size, stream=True)
    t0 = time.perf_counter()
    n = 0
    for x, _, _ in iterate_batches(
        ds.train,
        batch,
        mean=ds.mean,
        std=ds.std,
        device="cpu",
        shuffle=True,
        augment=True,
        generator=torch.Generator().manual_seed(0),
        workers=workers,
    ):
        n += x.shape[0]
        if n >= max_batches * batch:
            break
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": dt, "images_per_s": n / dt}


def phase_torchvision(folder: Path, size: int, batch: int, workers: int, max_batches: int) -> dict:
    import torch
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose(
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        ]
    )
    ds = datasets.ImageFolder(str(folder / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, prefetch_factor=4 if workers else None
    )
    torch.manual_seed(0)
    t0 = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
        if n >= max_batches * batch:
            break
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": dt, "images_per_s": n / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-root", type=Path, default=None, help="cache location [default: a temp dir, removed]")
    ap.add_argument("--max-batches", type=int, default=1 << 40, help="time only the first K batches of each epoch")
    ap.add_argument("--memory-limit", default=None, help="run every phase in a memory cgroup of this size (e.g. 1G)")
    ap.add_argument("--phase", choices=["build", "dpcli", "torchvision"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument(
        "--phases",
        default="build,dpcli,torchvision",
        help="comma-separated subset; without build, --data-root must hold a built cache",
    )
    args = ap.parse_args()
    folder = args.folder.resolve()
    if args.phase:  # child process: one phase, result as the last line
        root = args.data_root
        if args.phase == "build":
            res = phase_build(folder, root, args.image_size)
        elif args.phase == "dpcli":
            res = phase_dpcli(folder, root, args.image_size, args.batch, args.workers, args.max_batches)
        else:
            res = phase_torchvision(folder, args.image_size, args.batch, args.workers, args.max_batches)
        print("RESULT " + json.dumps(res))
        return
    root = args.data_root or Path(tempfile.mkdtemp(prefix="dpcli-bench-"))
    env = dict(os.environ, DPCLI_CACHE_WORKERS=str(max(1, args.workers)))
    results = {
        "folder": str(folder),
        "image_size": args.image_size,
        "batch": args.batch,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "max_batches": args.max_batches,
        "memory_limit": args.memory_limit,
    }
    cgroup = MemoryCgroup(_size(args.memory_limit)) if args.memory_limit else None
    try:
        for phase in args.phases.split(","):
            cmd = [
                sys.executable,
                __file__,
                str(folder),
                "--phase",
                phase,
                "--image-size",
                str(args.image_size),
                "--batch",
                str(args.batch),
                "--workers",
                str(args.workers),
                "--data-root",
                str(root),
                "--max-batches",
                str(args.max_batches),
            ]
            m = run_measured(cmd, env=env, cgroup=cgroup)
            line = [ln for ln in m.pop("output").splitlines() if ln.startswith("RESULT ")][-1]
            results[phase] = {
                **{k: v for k, v in m.items() if k not in ("returncode", "seconds")},
                "process_seconds": m["seconds"],
                **json.loads(line[7:]),
            }
            print(phase, json.dumps(results[phase]), flush=True)
    finally:
        if cgroup is not None:
            cgroup.close()
        if args.data_root is None:
            shutil.rmtree(root, ignore_errors=True)
    if "dpcli" in results and "torchvision" in results:
        results["epoch_speedup_vs_torchvision"] = (
            results["dpcli"]["images_per_s"] / results["torchvision"]["images_per_s"]
        )
    if "build" in results and "epoch_speedup_vs_torchvision" in results:
        results["build_plus_epoch_vs_torchvision_epoch"] = results["torchvision"]["seconds"] / (
            results["build"]["seconds"] + results["dpcli"]["seconds"]
        )
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
