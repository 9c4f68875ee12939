"""The cost of a pruned set as a share of the training it saves: train, influence, prune (auto), in one process.

    nice python3 benchmarks/pruned_set_cost.py digits --ratio 0.5
    nice python3 benchmarks/pruned_set_cost.py imagefolder:/tmp/cifar10k --arch convnet --epochs 8 --ratio 0.4 \\
        --work /tmp/pruned-cost --json benchmarks/results/pruned_set_cost/cifar10k.json

Each stage is the library call the CLI makes, in one process (the interpreter and torch are imported once, so
the figures are the stages' own): ``dpcli.train.loop.train`` of the dataset's default configuration (with
``--epochs`` / ``--arch`` overrides), ``dpcli.stages.core.compute_influence`` (exact S) and
``dpcli.stages.masks.prune`` with the default selector, ``auto``, at ``--ratio``.  Reported: the seconds of
each and influence, prune and their sum in percent of train (the target: at most 10 %), with auto's line and
its validation seconds (everything before its final solve) in the last repeat.  ``--optimization`` also times
``prune --method optimization`` of the same S after each auto prune: auto's target is at most 1.5x of it.
A ``--repeats`` > 1 repeats influence and prune (train once) and reports their medians; ``--reuse`` takes an
existing complete checkpoint of the same configuration and its recorded training seconds (the sum of its
epochs' times) instead of training again; ``--precision float32-refined`` times influence with the float32
factor and float64 refinement instead of the float64 solve.  CPU seconds (the process's, all threads) are
recorded beside the wall seconds.

``make_subset`` builds a class-balanced folder of symlinks (``--subset PER_CLASS`` images of every class from
``train/``, all of ``test/``), e.g. the 10,000-image CIFAR-10 folder from ../shared/data/cifar10-jpg.tar.gz.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path


def make_subset(src: Path, dst: Path, per_class: int, seed: int = 0) -> Path:
    """``dst/train/<class>/`` with ``per_class`` images of each class of ``src/train`` (seeded), ``dst/test`` all."""
    import numpy as np

    if (dst / "train").is_dir():
        return dst
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for c in sorted(p.name for p in (src / "train").iterdir()):
        files = sorted((src / "train" / c).iterdir())
        (tmp / "train" / c).mkdir(parents=True)
        for f in rng.choice(np.array(files, dtype=object), size=min(per_class, len(files)), replace=False):
            (tmp / "train" / c / f.name).symlink_to(f.resolve())
    (tmp / "test").symlink_to((src / "test").resolve())
    os.replace(tmp, dst)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--arch", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pruned-set-cost"))
    ap.add_argument("--subset", type=int, default=None, help="PER_CLASS: prune a class-balanced subset folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reuse", action="store_true", help="reuse a complete checkpoint and its recorded train time")
    ap.add_argument(
        "--optimization",
        action="store_true",
        help="also time prune --method optimization after each auto prune (auto's floor)",
    )
    ap.add_argument("--precision", default="float64", help="influence's --precision (float64, float32-refined)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torch

    from dpcli.artifacts import runs
    from dpcli.config import InfluenceConfig, PruneConfig
    from dpcli.stages import core, masks, pipeline
    from dpcli.train.loop import train

    dataset = a.dataset
    if a.subset:
        root = Path(dataset.split(":", 1)[1])
        dataset = "imagefolder:" + str(make_subset(root, a.work / f"{root.name}-{a.subset}pc", a.subset))
    a.work.mkdir(parents=True, exist_ok=True)
    dev = torch.device(a.device)
    ds = pipeline.load(dataset, a.work / "data")
    cfg = pipeline.train_config(ds, {"arch": a.arch, "epochs": a.epochs})
    ck = runs.checkpoint_path(a.work / "runs", cfg)
    t, c = time.perf_counter(), time.process_time()
    trained = train(cfg, ds, ck, device=dev, force=not a.reuse)
    seconds = {"train": trained.seconds if a.reuse else time.perf_counter() - t}
    cpu = {"train": None if a.reuse else time.process_time() - c}  # the process's CPU seconds, all threads
    icfg, pcfg = InfluenceConfig(precision=a.precision).validate(), PruneConfig(ratio=a.ratio).validate()
    ocfg = PruneConfig(ratio=a.ratio, method="optimization").validate()
    inf = runs.influence_path(ck, icfg)
    every: dict[str, list[float]] = {"influence": [], "prune": []} | ({"optimization": []} if a.optimization else {})
    every_cpu: dict[str, list[float]] = {k: [] for k in every}
    for _ in range(a.repeats):  # computed afresh each time: earlier artifacts are removed first
        for path in (inf, runs.mask_path(inf, pcfg), runs.mask_path(inf, ocfg)):
            path.unlink(missing_ok=True)
        t, c = time.perf_counter(), time.process_time()
        core.compute_influence(ck, inf, icfg, device=dev, ds=ds)
        every["influence"].append(time.perf_counter() - t)
        every_cpu["influence"].append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        mask = masks.prune(inf, runs.mask_path(inf, pcfg), pcfg, device=dev, ds=ds)
        every["prune"].append(time.perf_counter() - t)
        every_cpu["prune"].append(time.process_time() - c)
        if a.optimization:
            t, c = time.perf_counter(), time.process_time()
            masks.prune(inf, runs.mask_path(inf, ocfg), ocfg, device=dev, ds=ds)
            every["optimization"].append(time.perf_counter() - t)
            every_cpu["optimization"].append(time.process_time() - c)
    seconds.update({k: statistics.median(v) for k, v in every.items()})
    cpu.update({k: statistics.median(v) for k, v in every_cpu.items()})
    share = {k: 100 * seconds[k] / seconds["train"] for k in every}
    share["influence+prune"] = share["influence"] + share["prune"]
    from dpcli.artifacts.h5 import get_attr, open_artifact

    with open_artifact(mask.path, "mask") as f:
        auto = get_attr(f, "auto") or {}
    line = auto.get("line", "")
    validation = auto.get("signals", {}).get("validation_seconds")  # the last repeat's: before its final solve
    report = {
        "dataset": dataset,
        "n": len(ds.train.labels),
        "config": cfg.to_dict(),
        "ratio": a.ratio,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "every": every,
        "every_cpu": every_cpu,
        "percent_of_train": share,
        "auto_line": line,
        "auto_validation_seconds_last": validation,
        "precision": a.precision,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "load_average_after": os.getloadavg(),
    }
    print(
        f"{dataset} (n = {report['n']}, {cfg.arch}, {cfg.epochs} epochs): train {seconds['train']:.1f} s, "
        f"influence {seconds['influence']:.1f} s ({share['influence']:.1f} %), prune (auto, {a.ratio:g}) "
        f"{seconds['prune']:.1f} s ({share['prune']:.1f} %); influence + prune {share['influence+prune']:.1f} % "
        f"of train\n{line}",
        flush=True,
    )
    if a.optimization:
        print(
            f"prune --method optimization {seconds['optimization']:.1f} s: auto / optimization "
            f"{seconds['prune'] / seconds['optimization']:.2f}",
            flush=True,
        )
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
