"""Append-only per-epoch records beside a checkpoint, so a checkpoint write costs the same every epoch.

The trajectory (:mod:`dpcli.train.trajectory`) and the training dynamics
(:mod:`dpcli.train.dynamics`) grow by one row per epoch.  Rewriting them into
``checkpoint.h5`` every epoch made the total write volume grow with the square of
the epoch count; instead each epoch's rows go to their own small file
``checkpoint.h5.epochs/<k>.npz`` (k = 0-based epoch) and ``checkpoint.h5`` holds
only what has a constant size (weights, optimizer, history, snapshots).  The full
groups are written into ``checkpoint.h5`` once, when a ``train`` call ends
(consolidation), so every reader sees a self-contained file; the side directory is
removed once training is complete.

Commit protocol: the side file of epoch ``k`` is written to a temporary name,
fsynced and renamed *before* ``checkpoint.h5`` (attribute ``epoch = k + 1``) is
atomically replaced.  The checkpoint's ``epoch`` is therefore the commit mark: a
side file ``k >= epoch`` is a torn append (killed between the two writes) and is
deleted on resume (:func:`rollback`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from dpcli.artifacts.h5 import fsync_dir
from dpcli.errors import DpcliError

SUFFIX = ".epochs"


def log_dir(checkpoint: Path) -> Path:
    """The side directory of ``checkpoint``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + SUFFIX)


def _name(epoch: int) -> str:
    return f"{int(epoch):06d}.npz"


def append(checkpoint: Path, epoch: int, arrays: dict[str, np.ndarray]) -> Path:
    """Durably write epoch ``epoch``'s rows (atomic rename after fsync of file and directory)."""
    d = log_dir(checkpoint)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".partial", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        final = d / _name(epoch)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(d)
    return final


def epochs_on_disk(checkpoint: Path) -> list[int]:
    d = log_dir(checkpoint)
    if not d.is_dir():
        return []
    return sorted(int(p.stem) for p in d.glob("*.npz") if p.stem.isdigit())


def rollback(checkpoint: Path, committed: int) -> list[int]:
    """Delete torn appends (epochs ``>= committed``) and temporaries; returns the epochs removed."""
    d = log_dir(checkpoint)
    if not d.is_dir():
        return []
    for tmp in d.glob(".*.partial"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    torn = [k for k in epochs_on_disk(checkpoint) if k >= committed]
    for k in torn:
        with contextlib.suppress(FileNotFoundError):
            (d / _name(k)).unlink()
    return torn


def clear(checkpoint: Path) -> None:
    """Remove the side directory (a fresh run, or training complete and consolidated)."""
    shutil.rmtree(log_dir(checkpoint), ignore_errors=True)


def read(checkpoint: Path, stop: int) -> list[dict[str, np.ndarray]] | None:
    """Rows of epochs ``0 .. stop-1`` in order, or None if any of them is missing."""
    d = log_dir(checkpoint)
    rows = []
    for k in range(stop):
        p = d / _name(k)
        if not p.exists():
            return None
        try:
            with np.load(p) as z:
                rows.append({key: z[key] for key in z.files})
        except (OSError, ValueError) as exc:
            raise DpcliError(f"{p}: damaged epoch record ({exc}); pass --force to retrain from scratch") from None
    return rows


def check_complete(checkpoint: Path, committed: int, held: int) -> None:
    """Refuse to resume a checkpoint whose first ``committed`` epochs' records are neither in its side folder nor
    inside it (``held`` of them are): a copy made without ``NAME.epochs/`` would otherwise resume, be marked
    complete and hold a trajectory of the last epochs only, which SGD-Influence replays as if it were all."""
    if held < committed:
        missing = committed - held
        raise DpcliError(
            f"{checkpoint}: the records of {missing} of its {committed} trained epochs are missing "
            f"({log_dir(checkpoint)} is absent or incomplete); copy that folder with the checkpoint to "
            "resume, or pass --force to train from scratch"
        )


def split(rows: list[dict[str, np.ndarray]], prefix: str) -> list[dict[str, np.ndarray]]:
    """The ``prefix/`` part of every row, with the prefix stripped."""
    cut = len(prefix) + 1
    return [{k[cut:]: v for k, v in r.items() if k.startswith(prefix + "/")} for r in rows]
