"""Run directories keyed by configuration, and stage-by-stage reuse of cached artifacts.

Layout (each level is named by a hash of the configuration that made it, so two
configurations never share a file, and each stage's output is found again by the
next run that asks for the same thing):

    <run-root>/<dataset>/train-<key>/checkpoint.h5
                         train-<key>/influence-<key>/influence.h5
                         train-<key>/influence-<key>/prune-<key>/mask.h5
                         train-<key>/influence-<key>/prune-<key>/retrain-<key>/checkpoint.h5
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from dpcli.artifacts.h5 import config_key
from dpcli.config import InfluenceConfig, PruneConfig, TrainConfig


def default_run_root() -> Path:
    return Path(os.environ.get("DPCLI_RUNS", "dpcli-runs"))


def dataset_slug(name: str) -> str:
    if name.startswith("imagefolder:"):
        path = name.split(":", 1)[1]
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).name or "root")
        return f"imagefolder-{base}-{hashlib.sha256(path.encode()).hexdigest()[:6]}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def checkpoint_path(run_root: Path, cfg: TrainConfig) -> Path:
    return Path(run_root) / dataset_slug(cfg.dataset) / f"train-{config_key(cfg.to_dict())}" / "checkpoint.h5"


def influence_path(checkpoint: Path, cfg: InfluenceConfig) -> Path:
    return Path(checkpoint).parent / f"influence-{config_key(cfg.to_dict())}" / "influence.h5"


def mask_path(influence: Path, cfg: PruneConfig) -> Path:
    return Path(influence).parent / f"prune-{config_key(cfg.to_dict())}" / "mask.h5"


def retrain_path(mask: Path, cfg: TrainConfig) -> Path:
    return Path(mask).parent / f"retrain-{config_key(cfg.to_dict())}" / "checkpoint.h5"


def random_mask_path(influence: Path, n_pruned: int, seed: int) -> Path:
    return Path(influence).parent / f"random-{n_pruned}-s{seed}" / "mask.h5"
