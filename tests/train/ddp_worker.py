"""One torchrun rank for tests/test_distributed.py (not a test module itself).

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT_DIR RUN_ROOT

1. BN-free ConvNet jobs through the library (`train(..., dist=...)`), counting checkpoint
   writes per rank in OUT_DIR/saves-rank<R>.txt;
2. the real CLI, `dpcli train digits ... --run-root RUN_ROOT --json` (its JSON is this
   process's only stdout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dpcli.cli import main
from dpcli.config import TrainConfig
from dpcli.data.sources import load_dataset
from dpcli.train import checkpoint, distributed
from dpcli.train import loop as training

CPU = torch.device("cpu")
TINY = ["--epochs", "2", "--width", "8", "--depth", "2", "--device", "cpu"]
SUBSET = np.arange(0, 2 * 64 + 1) * 7  # 129 samples, batch 64: the last global batch has 1 sample
_make_model = training.make_model


def cfg(**kw) -> TrainConfig:
    base = dict(
        dataset="digits", arch="convnet", width=8, depth=2, epochs=2, lr=0.05, batch_size=64, augment=True, seed=3
    )
    base.update(kw)
    return TrainConfig(**base)


def bn_free_model(config, ds):
    """The ConvNet with every BatchNorm replaced by Identity (same seed, same other weights)."""
    model = _make_model(config, ds)
    for i, layer in enumerate(model.body):
        if isinstance(layer, nn.BatchNorm2d):
            model.body[i] = nn.Identity()
    return model


def jobs(ds, out: Path, dist) -> None:
    """The BN-free runs compared with single-process training by the test."""
    training.train(cfg(), ds, out / "scratch.h5", device=CPU, dist=dist)
    training.train(cfg(augment=False), ds, out / "subset.h5", device=CPU, keep_indices=SUBSET, dist=dist)
    training.train(cfg(), ds, out / "resume.h5", device=CPU, dist=dist)


def run(out: Path, run_root: Path) -> int:
    rank = int(os.environ["RANK"])
    real_save, real_make = checkpoint.save_checkpoint, training.make_model

    def counting_save(*args, **kwargs):
        with open(out / f"saves-rank{rank}.txt", "a") as fh:
            fh.write(f"{args[0]}\n")
        return real_save(*args, **kwargs)

    checkpoint.save_checkpoint, training.make_model = counting_save, bn_free_model  # rank 0 saves through it
    try:
        dist = distributed.from_env("cpu")
        jobs(load_dataset("digits"), out, dist)
    finally:
        checkpoint.save_checkpoint, training.make_model = real_save, real_make
    return main(["train", "digits", *TINY, "--run-root", str(run_root), "--json"])  # joins the same group


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(run(Path(sys.argv[1]), Path(sys.argv[2])))
