r"""SGD-Influence on the last linear layer (the journal extension of Yang et al.).

The influence function ``S_j = (1/n) (H + lambda I)^-1 g_j`` assumes the trained
parameters are the optimum of a convex objective.  SGD-Influence instead follows
the actual SGD trajectory: it predicts, for every training sample ``j``,

    S_j = theta_{-j,T} - theta_T        (last layer, ``[W row-major, b]``)

where ``theta_{-j}`` is the *counterfactual run*: the same SGD (same initial
snapshot, momentum, weight decay, learning rates and exact batch sequence) with
sample ``j`` left out of every batch that contained it.

Convention (estimator and oracle test alike): a batch ``B`` that contained ``j``
becomes ``B \ {j}`` and its loss is the **mean over the remaining samples**
(``|B| - 1`` of them; an emptied batch contributes no loss gradient, only weight
decay).  The removal therefore changes that step's loss gradient by
``r_j = (mean_{i in B} g_i - g_j) / (|B| - 1)``.

Linearised along the replayed trajectory ``theta_t`` (PyTorch SGD, coupled weight
decay ``lambda``, momentum ``mu``, no dampening or Nesterov), the perturbations
``D_t = theta_{-j,t} - theta_t`` and ``M_t`` (of the momentum buffer) obey, for all
``n`` samples at once (rows of ``(n, d)`` float64 arrays):

    dG_t    = (H_{B_t}(theta_t) + lambda I) D_t                      if j not in B_t
    dG_t    = (H_{B_t \ j}(theta_t) + lambda I) D_t + r_j             if j in B_t
    M_{t+1} = mu M_t + dG_t
    D_{t+1} = D_t - eta_t M_{t+1}

with ``D = M = 0`` at the start of the replay window, and ``S_j = D_T``.  This is
the first-order Taylor expansion in ``D`` of the counterfactual step's gradient
``grad L_{B\j}(theta_t + D)``; using ``H_{B\j} = (|B| H_B - H_j) / (|B| - 1)``
rather than ``H_B`` on the (one per epoch) steps that contain ``j`` costs one
extra per-sample Hessian-vector product for those rows and, on the oracle test,
cuts the error against actual leave-one-out SGD by a factor of about three.

Assumption: the **features are frozen** at the final network's (evaluation-mode,
un-augmented) features, the standard last-layer assumption; the replayed last
layer therefore differs from the trained one wherever the features moved during
training.  Batch Hessian-vector products use the closed form of
:func:`dpcli.influence.hessian_vector_product`; one step costs
``O(n |B| C D)``, one epoch ``O(n^2 C D)``.

The recording side (:class:`TrajectoryRecorder`) is hooked into
:func:`dpcli.training.train` and writes the group ``trajectory/`` of ``checkpoint.h5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch
from torch import Tensor

from dpcli import influence as infl
from dpcli.artifacts import get_attr, open_artifact, set_attr
from dpcli.errors import DpcliError
from dpcli.influence import Progress, Sink

__all__ = [
    "GROUP",
    "Trajectory",
    "TrajectoryRecorder",
    "load_trajectory",
    "read_trajectory",
    "replay_last_layer",
    "sgd_influence",
]

GROUP = "trajectory"
_F64 = torch.float64
# Elements of one (rows, d) float64 perturbation array per row chunk (two coexist: D and M).
_CHUNK_ELEMENTS = 2**24


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
        return [row[s:s + self.batch_size] for s in range(0, row.shape[0], self.batch_size)]


def read_trajectory(f: h5py.File | h5py.Group) -> Trajectory | None:
    """The trajectory stored in an open checkpoint, or None if it has none."""
    if GROUP not in f:
        return None
    g = f[GROUP]
    try:
        return Trajectory(
            epochs=g["epoch"][()].astype(np.int64), lr=g["lr"][()].astype(np.float64),
            weight=g["weight"][()], bias=g["bias"][()],
            momentum_weight=g["momentum_weight"][()], momentum_bias=g["momentum_bias"][()],
            has_momentum=g["has_momentum"][()].astype(bool), order=g["order"][()],
            batch_size=int(get_attr(g, "batch_size")), momentum=float(get_attr(g, "momentum")),
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
            f"one); retrain it with `dpcli train ... --force` to use --method sgd"
        )
    if int(traj.epochs[-1]) + 1 != epochs_done or np.any(np.diff(traj.epochs) != 1):
        raise DpcliError(f"{path}: the recorded SGD trajectory does not end at the checkpoint's final epoch")
    return traj


class TrajectoryRecorder:
    """Collects the trajectory during :func:`dpcli.training.train`; written with each checkpoint.

    Cost per epoch: one copy of the last layer and its momentum buffers, and the
    visited indices (int32, ``n`` per epoch); an epoch is committed only when its
    checkpoint is written, so an interrupted epoch leaves no partial record.
    """

    def __init__(self, batch_size: int, momentum: float, weight_decay: float,
                 previous: Trajectory | None = None, start_epoch: int = 0) -> None:
        self.batch_size = int(batch_size)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self._records: list[tuple] = []
        if previous is not None:
            keep = [k for k in range(len(previous)) if int(previous.epochs[k]) < start_epoch]
            # only a contiguous run of epochs ending right before start_epoch is usable
            if keep and int(previous.epochs[keep[-1]]) == start_epoch - 1:
                for k in keep:
                    self._records.append((int(previous.epochs[k]), float(previous.lr[k]), previous.weight[k],
                                          previous.bias[k], previous.momentum_weight[k],
                                          previous.momentum_bias[k], bool(previous.has_momentum[k]),
                                          previous.order[k]))
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

    def begin_epoch(self, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    lr: float) -> None:
        head = getattr(model, "module", model).head
        w, b = head.weight.detach(), head.bias.detach()
        bufs = []
        for p in (w, b):
            st = optimizer.state.get(head.weight if p is w else head.bias, {})
            bufs.append(st.get("momentum_buffer"))
        has = bufs[0] is not None and bufs[1] is not None
        mw = bufs[0].detach().float().cpu().numpy().copy() if has else np.zeros(tuple(w.shape), np.float32)
        mb = bufs[1].detach().float().cpu().numpy().copy() if has else np.zeros(tuple(b.shape), np.float32)
        self._pending = [int(epoch), float(lr), w.float().cpu().numpy().copy(), b.float().cpu().numpy().copy(),
                         mw, mb, has]
        self._indices = []

    def add_batch(self, idx: Tensor) -> None:
        self._indices.append(idx.detach().cpu().numpy().astype(np.int32, copy=False))

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

    def write(self, f: h5py.File | h5py.Group) -> None:
        """Commit the epoch just finished and write every recorded epoch to ``f[GROUP]``."""
        self._commit()
        if not self._records:
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
        set_attr(g, "description", "per epoch: last layer + momentum buffers at epoch start, lr, visited "
                                   "dataset indices (batch t = order[k, t*batch_size:(t+1)*batch_size])")


# --------------------------------------------------------------------------- #
# replay and the linearised counterfactual
# --------------------------------------------------------------------------- #


def _window(traj: Trajectory, epochs: int | None) -> int:
    """Index of the first recorded epoch of the replay window (the last ``epochs`` epochs)."""
    total = len(traj)
    if epochs is None:
        return 0
    if int(epochs) < 1 or int(epochs) > total:
        raise DpcliError(f"--sgd-epochs must lie in [1, {total}] (epochs recorded), got {epochs}")
    return total - int(epochs)


def _own_hvp(phi: Tensor, w: Tensor, b: Tensor, V: Tensor) -> Tensor:
    """Row ``k`` of the result is ``hess CE(phi_k) @ V[k]`` (each sample's own Hessian)."""
    num_classes, dim = w.shape
    p = torch.softmax(torch.addmm(b, phi, w.T), dim=1)
    vw = V[:, :num_classes * dim].reshape(-1, num_classes, dim)
    u = torch.einsum("kcd,kd->kc", vw, phi) + V[:, num_classes * dim:]
    q = p * (u - (u * p).sum(dim=1, keepdim=True))
    return torch.cat([(q[:, :, None] * phi[:, None, :]).reshape(-1, num_classes * dim), q], dim=1)


def _replay(features: Tensor, labels: Tensor, traj: Trajectory, first: int,
            rows: tuple[int, int] | None, on_epoch=None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Replay the last-layer SGD from epoch ``first``; with ``rows``, propagate D for those samples."""
    n, dim = features.shape
    device = features.device
    num_classes = traj.weight.shape[1]
    d = num_classes * (dim + 1)
    if traj.weight.shape[2] != dim:
        raise DpcliError(f"trajectory last layer expects {traj.weight.shape[2]} features, got {dim}")
    if traj.order.size and (int(traj.order.min()) < 0 or int(traj.order.max()) >= n):
        raise DpcliError(f"trajectory refers to samples outside the {n} training samples")
    mu, wd = traj.momentum, traj.weight_decay
    as64 = lambda a: torch.as_tensor(np.asarray(a), dtype=_F64, device=device)  # noqa: E731
    w, b = as64(traj.weight[first]).clone(), as64(traj.bias[first]).clone()
    mw, mb = as64(traj.momentum_weight[first]).clone(), as64(traj.momentum_bias[first]).clone()
    if rows is not None:
        r0, r1 = rows
        delta = torch.zeros(r1 - r0, d, dtype=_F64, device=device)
        mom = torch.zeros_like(delta)
    else:
        delta = mom = None
    y_all = labels.to(device)
    for k in range(first, len(traj)):
        lr = float(traj.lr[k])
        for idx_np in traj.batches(k):
            idx = torch.from_numpy(idx_np.astype(np.int64)).to(device)
            phi = features[idx].detach().to(_F64)
            grads = infl.per_sample_grads(phi, y_all[idx], w, b)  # (|B|, d) float64 at theta_t
            gbar = grads.mean(dim=0)
            if delta is not None:
                dg = infl.hessian_vector_product(phi, w, b, delta)  # H_B(theta_t) D_t
                inside = (idx >= r0) & (idx < r1)
                if bool(inside.any()):
                    # rows whose sample j is in B: the counterfactual step's loss is the mean over
                    # B \ {j}, linearised in D exactly: r_j + H_{B\j} D, with
                    # H_{B\j} = (|B| H_B - H_j) / (|B| - 1) (= 0 for an emptied batch)
                    rr = idx[inside] - r0
                    g_j = grads[inside]
                    h_j = _own_hvp(phi[inside], w, b, delta[rr])
                    bsz = idx.numel()
                    if bsz > 1:
                        fix = ((gbar - g_j) + (dg[rr] - h_j)) / (bsz - 1)
                    else:
                        fix = -g_j - dg[rr]
                    dg.index_add_(0, rr, fix)
                dg.add_(delta, alpha=wd)
                mom.mul_(mu).add_(dg)
                delta.sub_(mom, alpha=lr)
            # the replayed step itself (PyTorch SGD: coupled weight decay, momentum, no dampening)
            gw = gbar[:num_classes * dim].reshape(num_classes, dim) + wd * w
            gb = gbar[num_classes * dim:] + wd * b
            mw.mul_(mu).add_(gw)
            mb.mul_(mu).add_(gb)
            w = w - lr * mw
            b = b - lr * mb
        if on_epoch is not None:
            on_epoch(k - first + 1, len(traj) - first)
    return w, b, delta


def replay_last_layer(features: Tensor, labels: Tensor, traj: Trajectory,
                      epochs: int | None = None) -> tuple[Tensor, Tensor]:
    """Final ``(W, b)`` (float64) of the recorded last-layer SGD replayed on frozen ``features``."""
    w, b, _ = _replay(features, labels, traj, _window(traj, epochs), None)
    return w, b


def sgd_influence(features: Tensor, labels: Tensor, traj: Trajectory, *, epochs: int | None = None,
                  chunk_size: int | None = None, rows: tuple[int, int] | None = None,
                  sink: Sink | None = None, progress: Progress | None = None) -> np.ndarray | None:
    """SGD-Influence ``S_j = theta_{-j,T} - theta_T`` (linearised) for every sample ``j``.

    Replays the last ``epochs`` recorded epochs (default: all) on frozen
    ``features``; rows are processed in chunks of ``chunk_size`` samples (default:
    as many as keep one ``(rows, d)`` float64 array near 128 MiB), each chunk
    replaying the trajectory.  ``rows=(start, stop)`` computes only those samples
    (a shard; the sink still receives absolute row offsets).  Output conventions
    (``sink``/``progress``/return) are those of :func:`dpcli.influence.exact_influence`.
    """
    n, num_classes, dim = infl._shapes(features, torch.as_tensor(traj.weight[0]), torch.as_tensor(traj.bias[0]))
    infl._check_labels(labels, n, num_classes)
    d = num_classes * (dim + 1)
    first = _window(traj, epochs)
    chunk = int(chunk_size) if chunk_size is not None else max(1, _CHUNK_ELEMENTS // d)
    if chunk < 1:
        raise DpcliError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    lo, hi = (0, n) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= lo <= hi <= n:
        raise DpcliError(f"rows {rows!r} outside [0, {n}]")
    out = None if sink is not None else np.empty((hi - lo, d), dtype=np.float32)
    for start in range(lo, hi, chunk):
        stop = min(hi, start + chunk)

        def on_epoch(done: int, total: int, start=start, stop=stop) -> None:
            if progress is not None and done < total:
                progress(start + (stop - start) * done // total, n)

        _, _, delta = _replay(features, labels, traj, first, (start, stop), on_epoch)
        infl._emit(sink, out, start if sink is not None else start - lo, delta)
        if progress is not None:
            progress(stop, n)
    return out
