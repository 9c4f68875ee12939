"""Run directories keyed by configuration, and stage-by-stage reuse of cached artifacts.

Layout (each level is named by a hash of the configuration that made it, so two
configurations never share a file, and each stage's output is found again by the
next run that asks for the same thing):

    <run-root>/<dataset>/train-<key>/checkpoint.h5
                         train-<key>/influence-<key>/influence.h5
                         train-<key>/influence-<key>/prune-<key>/mask.h5
                         train-<key>/influence-<key>/prune-<key>/retrain-<key>/checkpoint.h5
    <run-root>/latest/train, influence, prune, retrain, verify-bound   -> links to the run directories above

The keys make a cached artifact easy to find again for dpcli and hard to type for a person: ``latest/``
gives each stage's most recent result a stable name (``dpcli-runs/latest/prune/mask.h5``) instead of a glob.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import TypeVar

from dpcli.artifacts.h5 import config_key, fsync_dir
from dpcli.config import InfluenceConfig, PruneConfig, TrainConfig


def default_run_root() -> Path:
    from dpcli.env import runs_root

    return runs_root()


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


PathLike = TypeVar("PathLike", str, Path)
LATEST = "latest"
LATEST_STAGES = ("train", "influence", "prune", "retrain", "verify-bound")


def link_latest(run_root: Path, links: dict[str, Path | str | None]) -> list[str]:
    """Point ``<run_root>/latest/<stage>`` at the directory holding each given artifact (stage -> file).

    Each link is a relative symbolic link to a directory, replaced atomically (a new link renamed over the
    old), so a path through it (``latest/prune/mask.h5``) names the artifact itself, and what a command
    writes beside it (``retrain`` beside the mask) lands in the real run directory.  Artifacts outside the
    run root (written with ``--out`` elsewhere) get no link: their user named them.  A link that cannot be
    made costs a note, never the result: the artifacts are already published.  Returns the stages linked.
    """
    root = Path(run_root).resolve()
    latest = root / LATEST
    done = []
    for stage, artifact in links.items():
        if stage not in LATEST_STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        if artifact is None:
            continue
        target = Path(artifact).resolve().parent
        if not target.is_relative_to(root) or target == root:
            continue
        try:
            latest.mkdir(exist_ok=True)
            _replace_link(latest / stage, os.path.relpath(target, latest))
        except OSError as exc:
            from dpcli import console

            console.info(f"note: {latest / stage} not updated ({exc.strerror or exc}); the results are in {target}")
            continue
        done.append(stage)
    if done:
        fsync_dir(latest)
    return done


def followed(path: PathLike | None) -> PathLike | None:
    """``path`` with its symbolic links followed (``dpcli-runs/latest/prune/mask.h5`` -> the mask in its run
    directory), kept relative when it lies below the working directory; other paths and dataset names
    unchanged.  Commands apply it to their inputs, so what they print, record and write beside an input
    names the real run directory and stays true after ``latest`` moves on."""
    if path is None:
        return path
    text = os.fspath(path)
    if not os.path.exists(text):
        return path
    real = os.path.realpath(text)
    if real == os.path.abspath(text):
        return path
    below = os.path.relpath(real)
    shown = real if below.startswith("..") else below
    return shown if isinstance(path, str) else Path(shown)


def _replace_link(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp, target_is_directory=True)
    try:
        os.replace(tmp, link)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
