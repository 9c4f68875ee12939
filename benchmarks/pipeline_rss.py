"""train -> influence -> prune -> retrain on an image folder larger than memory, with the peak RSS.

Each stage runs in its own process (as the CLI runs them) under ``/usr/bin/time -v``, and the
process tree's summed PSS (proportional set size) (DataLoader workers included) is sampled.  The stages are those of
``dpcli prune --prune-ratio 0.3 imagefolder:FOLDER --image-size 64 --arch convnet --epochs 1``
followed by ``dpcli retrain``; the dataset streams from the on-disk cache because its decoded size
exceeds ``$DPCLI_MEMORY_BUDGET``.

    python3 benchmarks/pipeline_rss.py /tmp/folder --work /tmp/work --image-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import run_measured  # noqa: E402

STAGES = ("build", "train", "influence", "prune", "retrain")


def _config(spec: str, size: int):
    from dpcli.config import TrainConfig

    return TrainConfig(dataset=spec, arch="convnet", width=8, depth=5, epochs=1, batch_size=256, lr=0.05,
                       image_size=size).validate()


def stage(name: str, folder: Path, work: Path, size: int) -> dict:
    import torch

    from dpcli.config import InfluenceConfig, PruneConfig
    from dpcli.data.sources import load_dataset
    from dpcli.stages import core
    from dpcli.train.loop import load_checkpoint, train

    cpu = torch.device("cpu")
    root = work / "data"
    spec = f"imagefolder:{folder}"
    if name == "build":
        ds = load_dataset(spec, root, image_size=size)
        return {"n_train": len(ds.train), "n_test": len(ds.test), "streamed": ds.train.streamed,
                "decoded_train_gb": ds.train.images.nbytes / 1e9, "decoded_test_gb": ds.test.images.nbytes / 1e9,
                "skipped": len(ds.skipped)}
    if name == "train":
        ds = load_dataset(spec, root, image_size=size)
        ck = train(_config(ds.name, size), ds, work / "ck.h5", device=cpu)
        return {"test_acc": ck.final.test_acc, "train_seconds": ck.seconds, "streamed": ds.train.streamed}
    if name == "influence":
        info = core.compute_influence(work / "ck.h5", work / "S.h5", InfluenceConfig(), device=cpu, data_root=root)
        return {"n": info.n, "d": info.d}
    if name == "prune":
        mask = core.prune(work / "S.h5", work / "mask.h5", PruneConfig(ratio=0.3, time_budget=60.0),
                          device=cpu, data_root=root)
        return {"n_pruned": mask.n_pruned, "n_kept": mask.n_kept}
    mask = core.read_mask(work / "mask.h5")
    base = load_checkpoint(work / "ck.h5", weights=False).config
    ds = load_dataset(base.dataset, root, image_size=base.image_size)
    res = core.retrain(ds, mask, work / "retrain.h5", base=base, overrides={}, device=cpu)
    return {"test_acc": res.metrics["test_accuracy"], "n_kept": res.metrics["n_kept"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--stage", choices=STAGES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    folder = args.folder.resolve()
    if args.stage:
        print("RESULT " + json.dumps(stage(args.stage, folder, args.work, args.image_size)), flush=True)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"folder": str(folder), "image_size": args.image_size, "cpus": os.cpu_count(),
                     "memory_budget": os.environ.get("DPCLI_MEMORY_BUDGET", "1G (default)"),
                     "loader_workers": os.environ.get("DPCLI_LOADER_WORKERS", "min(4, cpus)")}
    for name in STAGES:
        cmd = [sys.executable, __file__, str(folder), "--work", str(args.work), "--image-size",
               str(args.image_size), "--stage", name]
        m = run_measured(cmd, log=args.work / f"{name}.log")
        line = [ln for ln in m.pop("output").splitlines() if ln.startswith("RESULT ")][-1]
        results[name] = {**json.loads(line[7:]), "seconds": m["seconds"], "max_rss_mb": m["max_rss_mb"],
                         "tree_pss_mb": m["tree_pss_mb"]}
        print(name, json.dumps(results[name]), flush=True)
    results["peak_max_rss_mb"] = max(results[s]["max_rss_mb"] for s in STAGES)
    results["peak_tree_pss_mb"] = max(results[s]["tree_pss_mb"] for s in STAGES)
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
