"""Training dynamics recorded by :func:`dpcli.training.train` for the score-based selectors.

Per epoch and per training sample: the loss and whether the prediction was correct, taken
from the very forward pass that trained on it (augmented, train mode: what forgetting
events and TDDS are defined on), plus model snapshots at chosen epochs (EL2N and GraNd are
scored "early in training").  The cost is one float32 and one byte per sample per epoch
and a state-dict copy per snapshot; nothing is recomputed.

Stored in the checkpoint as ``dynamics/loss`` (epochs x n float32, NaN where a sample was
not trained on, e.g. outside a retrain subset), ``dynamics/correct`` (epochs x n uint8,
255 = not seen) and ``snapshots/<epoch>/<state key>`` (epoch 0 = the initialization).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

NOT_SEEN = 255


@dataclass
class Dynamics:
    loss: np.ndarray  # (epochs, n) float32, NaN = not seen
    correct: np.ndarray  # (epochs, n) uint8, NOT_SEEN = not seen
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return int(self.loss.shape[0])


class DynamicsRecorder:
    """Collects per-sample loss/correctness and snapshots; an epoch counts once its checkpoint is written."""

    def __init__(self, n: int, snapshot_epochs: tuple[int, ...] = (), previous: Dynamics | None = None,
                 start_epoch: int = 0) -> None:
        self.n = int(n)
        self.snapshot_epochs = tuple(sorted(set(int(e) for e in snapshot_epochs)))
        self._loss: list[np.ndarray] = []
        self._correct: list[np.ndarray] = []
        self.snapshots: dict[int, dict[str, Tensor]] = {}
        if previous is not None and previous.epochs >= start_epoch:
            self._loss = [previous.loss[e] for e in range(start_epoch)]
            self._correct = [previous.correct[e] for e in range(start_epoch)]
            self.snapshots = {e: s for e, s in previous.snapshots.items() if e <= start_epoch}
        self._cur_loss: np.ndarray | None = None
        self._cur_correct: np.ndarray | None = None

    @classmethod
    def for_run(cls, n: int, snapshot_epochs: tuple[int, ...], resume_from: Path | None,
                start_epoch: int) -> "DynamicsRecorder":
        previous = None
        if resume_from is not None and start_epoch > 0:
            with h5py.File(resume_from, "r") as f:
                previous = read_dynamics(f)
        return cls(n, snapshot_epochs, previous, start_epoch)

    def snapshot(self, epoch: int, model: torch.nn.Module) -> None:
        """Keep the weights as they are *after* ``epoch`` epochs (0 = at initialization)."""
        if epoch in self.snapshot_epochs:
            inner = getattr(model, "module", model)
            self.snapshots[epoch] = {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}

    def begin_epoch(self, device: torch.device | str = "cpu") -> None:
        # rows 0/1 = loss/correct, kept on the training device: one host transfer per epoch, none per step
        self._cur = torch.full((2, self.n), float("nan"), dtype=torch.float32, device=device)

    def add_batch(self, idx: Tensor, losses: Tensor, correct: Tensor) -> None:
        i = idx.to(self._cur.device, non_blocking=True)
        self._cur[0, i] = losses.detach().float()
        self._cur[1, i] = correct.detach().float()

    def end_epoch(self, dist=None) -> None:
        """Close the epoch; under torchrun every rank saw a slice, so the records are summed over ranks."""
        cur = self._cur.cpu().numpy()
        self._cur = None
        seen = ~np.isnan(cur[0])
        self._cur_loss = cur[0]
        self._cur_correct = np.where(seen, cur[1], NOT_SEEN).astype(np.uint8)
        if dist is not None:
            seen = ~np.isnan(self._cur_loss)
            parts = np.stack([np.where(seen, self._cur_loss, 0.0), np.where(seen, self._cur_correct, 0), seen])
            total = dist.all_sum(torch.from_numpy(parts.astype(np.float64))).numpy()
            hit = total[2] > 0
            self._cur_loss = np.where(hit, total[0], np.nan).astype(np.float32)
            self._cur_correct = np.where(hit, np.rint(total[1]), NOT_SEEN).astype(np.uint8)
        self._loss.append(self._cur_loss)
        self._correct.append(self._cur_correct)
        self._cur_loss = self._cur_correct = None

    def last_epoch(self) -> dict[str, np.ndarray]:
        """The row of the epoch just closed (an append to ``checkpoint.h5.epochs/``)."""
        return {"loss": self._loss[-1], "correct": self._correct[-1]} if self._loss else {}

    def write(self, f: h5py.File, rows: bool = True) -> None:
        """Snapshots, and (``rows``) the per-epoch records of every epoch so far."""
        if self._loss and rows:
            g = f.create_group("dynamics")
            e = len(self._loss)
            chunks = (1, min(self.n, 1 << 20))
            g.create_dataset("loss", data=np.stack(self._loss), chunks=chunks, compression="gzip", compression_opts=1)
            g.create_dataset("correct", data=np.stack(self._correct), chunks=chunks, compression="gzip",
                             compression_opts=1)
            g.attrs["epochs"] = e
        for epoch, state in self.snapshots.items():
            sg = f.create_group(f"snapshots/{epoch}")
            for k, v in state.items():
                sg.create_dataset(k, data=v.numpy())


def read_dynamics(f: h5py.File, snapshots: bool = True) -> Dynamics | None:
    """The dynamics stored in an open checkpoint file, or None if it has none."""
    if "dynamics" not in f:
        return None
    g = f["dynamics"]
    snaps = read_snapshots(f) if snapshots else {}
    return Dynamics(loss=g["loss"][()], correct=g["correct"][()], snapshots=snaps)


def read_snapshots(f: h5py.File) -> dict[int, dict[str, Tensor]]:
    """The model snapshots stored in an open checkpoint file (empty if none)."""
    snaps = {}
    if "snapshots" in f:
        for epoch, sg in f["snapshots"].items():
            snaps[int(epoch)] = {k: torch.from_numpy(np.asarray(v[()])) for k, v in sg.items()}
    return snaps


def default_snapshot_epochs(epochs: int) -> tuple[int, ...]:
    """Initialization and 10 % of training: where GraNd and EL2N are scored (Paul et al., 2021)."""
    return (0, max(1, round(0.1 * epochs)))
