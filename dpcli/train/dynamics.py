"""Training dynamics recorded by :func:`dpcli.train.loop.train` for the score-based selectors.

Per epoch and per training sample, all taken from the very forward pass that trained on it
(augmented, train mode: what forgetting events, AUM, TDDS, DUAL and EVA are defined on): the loss,
whether the prediction was correct, the margin ``p_y - max_{c != y} p_c`` (AUM, for CCS and D2),
the error-vector norm ``||p - onehot(y)||`` (EL2N of every epoch, whose variance EVA scores), and
for the first :data:`PROB_EPOCHS` epochs the class probabilities (faithful TDDS needs every
class); plus model snapshots at chosen epochs (EL2N and GraNd are scored "early in training").
The cost is 13 bytes per sample per epoch, 2 C bytes per sample in each of the first 30 epochs,
and a state-dict copy per snapshot; nothing is recomputed.  The class probabilities are held in
memory, so they are recorded only while ``n x C x 2 bytes x min(30, epochs)`` fits
``$DPCLI_PROBS_BUDGET`` (default 2 GiB: Tiny-ImageNet fits, ImageNet-1k's 77 GB does not); above it
they are skipped, the checkpoint says why, and only TDDS (which needs them) refuses to run.

Stored in the checkpoint as ``dynamics/loss``, ``dynamics/margin`` and ``dynamics/el2n`` (epochs x n
float32, NaN where a sample was not trained on, e.g. outside a retrain subset), ``dynamics/correct``
(epochs x n uint8, 255 = not seen), ``dynamics/probs`` (min(30, epochs) x n x C float16, NaN =
not seen) and ``snapshots/<epoch>/<state key>`` (epoch 0 = the initialization).  Checkpoints
written before margin, probs or el2n were recorded read back with those fields ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

NOT_SEEN = 255
PROB_EPOCHS = 30  # class probabilities are kept for this many first epochs (TDDS's T; 2 bytes x C each)


def probs_budget() -> int:
    """Bytes of recorded class probabilities at most: ``$DPCLI_PROBS_BUDGET`` (e.g. 512M, 8G)."""
    from dpcli.env import probs_budget as from_env

    return from_env()


@dataclass
class Dynamics:
    loss: np.ndarray  # (epochs, n) float32, NaN = not seen
    correct: np.ndarray  # (epochs, n) uint8, NOT_SEEN = not seen
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    margin: np.ndarray | None = None  # (epochs, n) float32 p_y - max_{c != y} p_c, NaN = not seen
    probs: np.ndarray | None = None  # (min(PROB_EPOCHS, epochs), n, C) float16 softmax, NaN = not seen
    probs_skipped: str = ""  # why probs were not recorded (over $DPCLI_PROBS_BUDGET), if so
    el2n: np.ndarray | None = None  # (epochs, n) float32 ||p - onehot(y)||, NaN = not seen

    @property
    def epochs(self) -> int:
        return int(self.loss.shape[0])

    def require(self, what: str, user: str) -> np.ndarray:
        """``margin``, ``probs`` or ``el2n``, or one clear error for checkpoints recorded before they existed."""
        value = getattr(self, what)
        if value is None:
            from dpcli.errors import DpcliError

            if what == "probs" and self.probs_skipped:
                raise DpcliError(
                    f"{user} needs the per-epoch class probabilities, which `train` did not record: "
                    f"{self.probs_skipped}"
                )
            raise DpcliError(
                f"{user} needs the per-epoch {what} that `train` records since this version; "
                f"retrain the checkpoint with `dpcli train --force`"
            )
        return value


class DynamicsRecorder:
    """Collects per-sample loss/correctness and snapshots; an epoch counts once its checkpoint is written."""

    def __init__(
        self,
        n: int,
        snapshot_epochs: tuple[int, ...] = (),
        previous: Dynamics | None = None,
        start_epoch: int = 0,
        epochs: int = PROB_EPOCHS,
    ) -> None:
        self.n = int(n)
        self.prob_epochs = max(1, min(PROB_EPOCHS, int(epochs)))
        self.probs_skipped = ""
        self.snapshot_epochs = tuple(sorted(set(int(e) for e in snapshot_epochs)))
        self._loss: list[np.ndarray] = []
        self._correct: list[np.ndarray] = []
        self._margin: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []
        self._el2n: list[np.ndarray] = []
        self.snapshots: dict[int, dict[str, Tensor]] = {}
        if previous is not None and previous.epochs >= start_epoch:
            self._loss = [previous.loss[e] for e in range(start_epoch)]
            self._correct = [previous.correct[e] for e in range(start_epoch)]
            if previous.margin is not None:
                self._margin = [previous.margin[e] for e in range(start_epoch)]
                if previous.el2n is not None:
                    self._el2n = [previous.el2n[e] for e in range(start_epoch)]
                if previous.probs is not None:
                    self._probs = [previous.probs[e] for e in range(min(start_epoch, PROB_EPOCHS))]
                else:  # a gap cannot be filled: the run records no probabilities from here on
                    self.probs_skipped = previous.probs_skipped or "not recorded in the epochs before the resume"
            self.snapshots = {e: s for e, s in previous.snapshots.items() if e <= start_epoch}
        # a resumed run from before margin/probs existed cannot fill its early epochs: record neither
        self._extras = len(self._margin) == len(self._loss)
        self._with_el2n = self._extras and len(self._el2n) == len(self._loss)  # same, for a run from before el2n
        self._cur_loss: np.ndarray | None = None
        self._cur_correct: np.ndarray | None = None
        self._cur_margin: np.ndarray | None = None
        self._cur_el2n: np.ndarray | None = None
        self._cur_probs: np.ndarray | None = None
        self._cur: Tensor | None = None  # this epoch's records on the device, between begin_epoch and end_epoch
        self._cur_probs_dev: Tensor | None = None  # (n, C), allocated at the first batch (C known then)

    @classmethod
    def for_run(
        cls,
        n: int,
        snapshot_epochs: tuple[int, ...],
        resume_from: Path | None,
        start_epoch: int,
        epochs: int = PROB_EPOCHS,
    ) -> "DynamicsRecorder":
        previous = None
        if resume_from is not None and start_epoch > 0:
            with h5py.File(resume_from, "r") as f:
                previous = read_dynamics(f)
        return cls(n, snapshot_epochs, previous, start_epoch, epochs)

    def snapshot(self, epoch: int, model: torch.nn.Module) -> None:
        """Keep the weights as they are *after* ``epoch`` epochs (0 = at initialization)."""
        if epoch in self.snapshot_epochs:
            inner = getattr(model, "module", model)
            self.snapshots[epoch] = {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}

    @property
    def _want_probs(self) -> bool:
        return self._extras and not self.probs_skipped and len(self._loss) < PROB_EPOCHS

    def _probs_fit(self, classes: int) -> bool:
        """Whether the run's probabilities fit $DPCLI_PROBS_BUDGET; if not, say so once and record why."""
        need = self.n * classes * 2 * self.prob_epochs
        budget = probs_budget()
        if need <= budget:
            return True
        self.probs_skipped = (
            f"n x C x 2 bytes x {self.prob_epochs} epochs = {need / 2**30:.1f} GiB is over "
            f"$DPCLI_PROBS_BUDGET ({budget / 2**30:.1f} GiB); raise it and retrain "
            f"(`dpcli train --force`) to use tdds"
        )
        from rich.markup import escape

        from dpcli import console

        console.info(escape(f"warning: class probabilities not recorded: {self.probs_skipped}"))
        return False

    def begin_epoch(self, device: torch.device | str = "cpu") -> None:
        # rows loss / correct / margin / el2n kept on the training device: one host transfer per epoch, none per step
        self._cur = torch.full((4, self.n), float("nan"), dtype=torch.float32, device=device)
        self._cur_probs_dev = None

    def add_batch(self, idx: Tensor, losses: Tensor, logits: Tensor, labels: Tensor) -> None:
        """Record one training batch from its forward pass (``logits`` as the loss saw them), on its device."""
        cur = self._cur
        assert cur is not None, "add_batch comes between begin_epoch and end_epoch"
        with torch.no_grad():
            i = idx.to(cur.device, non_blocking=True)
            z = logits.detach().float()
            cur[0, i] = losses.detach().float()
            cur[1, i] = (z.argmax(1) == labels).float()
            if not self._extras:
                return
            p = torch.softmax(z, 1)
            y = labels.view(-1, 1)
            others = p.scatter(1, y, -1.0).amax(1)  # probabilities are >= 0: -1 hides the true class
            p_y = p.gather(1, y)
            cur[2, i] = p_y.squeeze(1) - others
            cur[3, i] = torch.linalg.vector_norm(p.scatter(1, y, p_y - 1.0), dim=1)  # ||p - onehot(y)||
            if self._want_probs and (self._cur_probs_dev is not None or self._probs_fit(p.shape[1])):
                if self._cur_probs_dev is None:  # float16, as stored: half the memory of float32
                    self._cur_probs_dev = torch.full(
                        (self.n, p.shape[1]), float("nan"), dtype=torch.float16, device=cur.device
                    )
                self._cur_probs_dev[i] = p.half()

    def end_epoch(self, dist=None) -> None:
        """Close the epoch; under torchrun every rank saw a slice, so the records are summed over ranks."""
        assert self._cur is not None, "end_epoch comes after begin_epoch"
        cur = self._cur.cpu().numpy()
        seen = ~np.isnan(cur[0])
        self._cur_loss = cur[0]
        self._cur_correct = np.where(seen, cur[1], NOT_SEEN).astype(np.uint8)
        self._cur_margin = cur[2]
        self._cur_el2n = cur[3]
        self._cur_probs = None if self._cur_probs_dev is None else self._cur_probs_dev.cpu().numpy()
        self._cur = self._cur_probs_dev = None
        if dist is not None:
            seen = ~np.isnan(self._cur_loss)
            parts = np.stack(
                [
                    np.where(seen, self._cur_loss, 0.0),
                    np.where(seen, self._cur_correct, 0),
                    seen,
                    np.where(seen, self._cur_margin, 0.0),
                    np.where(seen, self._cur_el2n, 0.0),
                ]
            )
            total = dist.all_sum(torch.from_numpy(parts.astype(np.float64))).numpy()
            hit = total[2] > 0
            self._cur_loss = np.where(hit, total[0], np.nan).astype(np.float32)
            self._cur_correct = np.where(hit, np.rint(total[1]), NOT_SEEN).astype(np.uint8)
            self._cur_margin = np.where(hit, total[3], np.nan).astype(np.float32)
            self._cur_el2n = np.where(hit, total[4], np.nan).astype(np.float32)
            if self._want_probs:
                self._cur_probs = self._merge_probs(dist, seen, hit)
        self._loss.append(self._cur_loss)
        self._correct.append(self._cur_correct)
        if self._extras:
            self._margin.append(self._cur_margin)
            if self._with_el2n:
                self._el2n.append(self._cur_el2n)
            if len(self._loss) <= PROB_EPOCHS and self._cur_probs is not None:
                self._probs.append(np.asarray(self._cur_probs, dtype=np.float16))
        self._cur_loss = self._cur_correct = self._cur_margin = self._cur_el2n = self._cur_probs = None

    def _merge_probs(self, dist, seen: np.ndarray, hit: np.ndarray) -> np.ndarray:
        """Every sample's probabilities come from the one rank that trained on it: sum the zero-filled slices.
        A rank whose slices were all empty has no class count yet, so the count is agreed on first."""
        c = 0 if self._cur_probs is None else self._cur_probs.shape[1]
        c_sum, ranks = dist.all_sum(torch.tensor([float(c), float(c > 0)], dtype=torch.float64)).tolist()
        c = int(round(c_sum / max(ranks, 1.0)))
        local = np.zeros((self.n, c)) if self._cur_probs is None else np.where(seen[:, None], self._cur_probs, 0.0)
        total = dist.all_sum(torch.from_numpy(local.astype(np.float32))).numpy()
        return np.where(hit[:, None], total, np.nan).astype(np.float32)

    def last_epoch(self) -> dict[str, np.ndarray]:
        """The rows of the epoch just closed (an append to ``checkpoint.h5.epochs/``)."""
        if not self._loss:
            return {}
        row = {"loss": self._loss[-1], "correct": self._correct[-1]}
        if self._extras:
            row["margin"] = self._margin[-1]
            if self._with_el2n:
                row["el2n"] = self._el2n[-1]
            if len(self._probs) == len(self._loss):  # still within the first PROB_EPOCHS epochs
                row["probs"] = self._probs[-1]
        return row

    def write(self, f: h5py.File, rows: bool = True) -> None:
        """Snapshots, and (``rows``) the per-epoch records of every epoch so far."""
        if self._loss and rows:
            g = f.create_group("dynamics")
            e = len(self._loss)
            chunks = (1, min(self.n, 1 << 20))
            g.create_dataset("loss", data=np.stack(self._loss), chunks=chunks, compression="gzip", compression_opts=1)
            g.create_dataset(
                "correct", data=np.stack(self._correct), chunks=chunks, compression="gzip", compression_opts=1
            )
            if self._extras:  # not compressed: gzip saves little on these and costs most
                g.create_dataset("margin", data=np.stack(self._margin))
                if self._with_el2n:
                    g.create_dataset("el2n", data=np.stack(self._el2n))
                if self._probs and len(self._probs) == min(e, PROB_EPOCHS):
                    g.create_dataset("probs", data=np.stack(self._probs))
            if self.probs_skipped:
                g.attrs["probs_skipped"] = self.probs_skipped
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
    margin = g["margin"][()] if "margin" in g else None
    probs = g["probs"][()] if "probs" in g else None
    el2n = g["el2n"][()] if "el2n" in g else None
    return Dynamics(
        loss=g["loss"][()],
        correct=g["correct"][()],
        snapshots=snaps,
        margin=margin,
        probs=probs,
        probs_skipped=str(g.attrs.get("probs_skipped", "")),
        el2n=el2n,
    )


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
