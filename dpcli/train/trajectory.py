"""The SGD trajectory of the last layer, recorded during training for SGD-Influence.

:class:`TrajectoryRecorder` is hooked into :func:`dpcli.train.loop.train` and writes the group
``trajectory/`` of ``checkpoint.h5``; :mod:`dpcli.influence.sgd` replays it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, cast

import h5py
import numpy as np
import torch
from torch import Tensor

from dpcli.artifacts.h5 import get_attr, open_artifact, set_attr
from dpcli.errors import DpcliError

GROUP = "trajectory"

# --------------------------------------------------------------------------- #
# the recorded trajectory
# --------------------------------------------------------------------------- #


@dataclass
class Trajectory:
    """What SGD-Influence needs, one entry per recorded epoch ``k``.

    ``weight[k]``/``bias[k]`` and ``momentum_weight[k]``/``momentum_bias[k]`` are
    the last layer and its momentum buffers at the **start** of epoch
    ``epochs[k]`` (zero buffers where ``has_momentum[k]`` is False: PyTorch's
    first step sets ``buf = g``, the same as ``mu * 0 + g``); ``lr[k]`` the
    learning rate of that epoch; ``order[k]`` the dataset indices in the order
    visited, so batch ``t`` is ``order[k, t*batch_size:(t+1)*batch_size]``.
    """

    epochs: np.ndarray
    lr: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    momentum_weight: np.ndarray
    momentum_bias: np.ndarray
    has_momentum: np.ndarray
    order: np.ndarray
    batch_size: int
    momentum: float
    weight_decay: float

    def __len__(self) -> int:
        return int(len(self.epochs))

    def batches(self, k: int) -> list[np.ndarray]:
        row = self.order[k]
        return [row[s : s + self.batch_size] for s in range(0, row.shape[0], self.batch_size)]


def read_trajectory(f: h5py.File | h5py.Group) -> Trajectory | None:
    """The trajectory stored in an open checkpoint, or None if it has none."""
    if GROUP not in f:
        return None
    g = f[GROUP]
    try:
        return Trajectory(
            epochs=g["epoch"][()].astype(np.int64),
            lr=g["lr"][()].astype(np.float64),
            weight=g["weight"][()],
            bias=g["bias"][()],
            momentum_weight=g["momentum_weight"][()],
            momentum_bias=g["momentum_bias"][()],
            has_momentum=g["has_momentum"][()].astype(bool),
            order=g["order"][()],
            batch_size=int(get_attr(g, "batch_size")),
            momentum=float(get_attr(g, "momentum")),
            weight_decay=float(get_attr(g, "weight_decay")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DpcliError(f"damaged SGD trajectory in checkpoint ({exc})") from None


def load_trajectory(path: Path | str) -> Trajectory:
    """Read ``trajectory/`` from ``checkpoint.h5``; a clear error if it was not recorded."""
    with open_artifact(Path(path), "checkpoint") as f:
        traj = read_trajectory(f)
        epochs_done = int(get_attr(f, "epoch", 0))
    if traj is None or len(traj) == 0:
        raise DpcliError(
            f"{path}: checkpoint has no SGD trajectory (it was trained by a dpcli that did not record "
            f"one); retrain it with `dpcli train ... --force` to use --estimator sgd"
        )
    if not np.array_equal(traj.epochs, np.arange(epochs_done)):
        raise DpcliError(
            f"{path}: the recorded SGD trajectory holds {len(traj)} of the {epochs_done} trained epochs "
            f"(epochs {_span(traj.epochs)}); the others' records were lost (e.g. resumed without its "
            ".epochs/ folder): retrain it with --force to use --estimator sgd"
        )
    return traj


def _span(epochs: np.ndarray) -> str:
    return "none" if len(epochs) == 0 else f"{int(epochs.min()) + 1}..{int(epochs.max()) + 1}"


class TrajectoryRecorder:
    """Collects the trajectory during :func:`dpcli.train.loop.train`; written with each checkpoint.

    Cost per epoch: one copy of the last layer and its momentum buffers, and the
    visited indices (int32, ``n`` per epoch); an epoch is committed only when its
    checkpoint is written, so an interrupted epoch leaves no partial record.
    """

    def __init__(
        self,
        batch_size: int,
        momentum: float,
        weight_decay: float,
        previous: Trajectory | None = None,
        start_epoch: int = 0,
    ) -> None:
        self.batch_size = int(batch_size)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self._records: list[tuple] = []
        if previous is not None:
            keep = [k for k in range(len(previous)) if int(previous.epochs[k]) < start_epoch]
            # only a contiguous run of epochs ending right before start_epoch is usable
            if keep and int(previous.epochs[keep[-1]]) == start_epoch - 1:
                for k in keep:
                    self._records.append(
                        (
                            int(previous.epochs[k]),
                            float(previous.lr[k]),
                            previous.weight[k],
                            previous.bias[k],
                            previous.momentum_weight[k],
                            previous.momentum_bias[k],
                            bool(previous.has_momentum[k]),
                            previous.order[k],
                        )
                    )
        self._pending: list | None = None
        self._indices: list[np.ndarray] = []

    @classmethod
    def for_run(cls, config, resume_from: Path | None, start_epoch: int) -> "TrajectoryRecorder":
        """A recorder for ``train``; when resuming, the already-recorded epochs are read back."""
        previous = None
        if resume_from is not None and start_epoch > 0:
            with h5py.File(resume_from, "r") as f:
                previous = read_trajectory(f)
        return cls(config.batch_size, config.momentum, config.weight_decay, previous, start_epoch)

    def begin_epoch(self, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float) -> None:
        head = cast(torch.nn.Linear, getattr(model, "module", model).head)
        w, b = head.weight.detach(), head.bias.detach()
        bufs = []
        for p in (w, b):
            st = optimizer.state.get(head.weight if p is w else head.bias, {})
            bufs.append(st.get("momentum_buffer"))
        has = bufs[0] is not None and bufs[1] is not None
        mw = bufs[0].detach().float().cpu().numpy().copy() if has else np.zeros(tuple(w.shape), np.float32)
        mb = bufs[1].detach().float().cpu().numpy().copy() if has else np.zeros(tuple(b.shape), np.float32)
        self._pending = [
            int(epoch),
            float(lr),
            w.float().cpu().numpy().copy(),
            b.float().cpu().numpy().copy(),
            mw,
            mb,
            has,
        ]
        self._indices = []

    def add_batch(self, idx: Tensor) -> None:
        host = idx if idx.device.type == "cpu" else idx.cpu()  # the loader's indices are already on the host
        self._indices.append(host.detach().numpy().astype(np.int32, copy=False))

    def watch(self, batches: Iterator[tuple[Tensor, Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Pass ``iterate_batches``' (global) batches through, recording their dataset indices."""
        for x, y, idx in batches:
            self.add_batch(idx)
            yield x, y, idx

    def _commit(self) -> None:
        if self._pending is not None:
            order = np.concatenate(self._indices) if self._indices else np.zeros(0, np.int32)
            self._records.append((*self._pending, order))
            self._pending, self._indices = None, []

    _ROW = ("epoch", "lr", "weight", "bias", "momentum_weight", "momentum_bias", "has_momentum", "order")

    def last_epoch(self) -> dict[str, np.ndarray]:
        """Commit the epoch just finished and return its row (an append to ``checkpoint.h5.epochs/``)."""
        self._commit()
        return {k: np.asarray(v) for k, v in zip(self._ROW, self._records[-1])} if self._records else {}

    @classmethod
    def from_rows(cls, config, rows: list[dict[str, np.ndarray]]) -> "TrajectoryRecorder":
        """A recorder resumed from the appended rows of epochs ``0 .. len(rows)-1``."""
        rec = cls(config.batch_size, config.momentum, config.weight_decay)
        rec._records = [
            (
                int(r["epoch"]),
                float(r["lr"]),
                r["weight"],
                r["bias"],
                r["momentum_weight"],
                r["momentum_bias"],
                bool(r["has_momentum"]),
                r["order"],
            )
            for r in rows
            if r
        ]
        return rec

    def write(self, f: h5py.File | h5py.Group, rows: bool = True) -> None:
        """Commit the epoch just finished and (``rows``) write every recorded epoch to ``f[GROUP]``."""
        self._commit()
        if not self._records or not rows:
            return
        g = f.create_group(GROUP)
        cols = list(zip(*self._records))
        g.create_dataset("epoch", data=np.array(cols[0], dtype=np.int64))
        g.create_dataset("lr", data=np.array(cols[1], dtype=np.float64))
        g.create_dataset("weight", data=np.stack(cols[2]).astype(np.float32))
        g.create_dataset("bias", data=np.stack(cols[3]).astype(np.float32))
        g.create_dataset("momentum_weight", data=np.stack(cols[4]).astype(np.float32))
        g.create_dataset("momentum_bias", data=np.stack(cols[5]).astype(np.float32))
        g.create_dataset("has_momentum", data=np.array(cols[6], dtype=bool))
        g.create_dataset("order", data=np.stack(cols[7]).astype(np.int32))
        set_attr(g, "batch_size", self.batch_size)
        set_attr(g, "momentum", self.momentum)
        set_attr(g, "weight_decay", self.weight_decay)
        set_attr(
            g,
            "description",
            "per epoch: last layer + momentum buffers at epoch start, lr, visited "
            "dataset indices (batch t = order[k, t*batch_size:(t+1)*batch_size])",
        )
