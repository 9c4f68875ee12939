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
:func:`dpcli.influence.kernels.hessian_vector_product`; one step costs
``O(n |B| C D)``, one epoch ``O(n^2 C D)``.

The recording side (:class:`TrajectoryRecorder`) is hooked into
:func:`dpcli.train.loop.train` (see :mod:`dpcli.train.trajectory`) and writes the group ``trajectory/``
of ``checkpoint.h5``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dpcli.errors import DpcliError
from dpcli.influence import kernels as infl
from dpcli.influence.kernels import Progress, Sink
from dpcli.train.trajectory import GROUP, Trajectory, TrajectoryRecorder, load_trajectory, read_trajectory  # noqa: F401

__all__ = [
    "GROUP",
    "Trajectory",
    "TrajectoryRecorder",
    "load_trajectory",
    "read_trajectory",
    "replay_last_layer",
    "sgd_influence",
]

_F64 = torch.float64
# Elements of one (rows, d) float64 perturbation array per row chunk (two coexist: D and M).
_CHUNK_ELEMENTS = 2**24


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
    vw = V[:, : num_classes * dim].reshape(-1, num_classes, dim)
    u = torch.einsum("kcd,kd->kc", vw, phi) + V[:, num_classes * dim :]
    q = p * (u - (u * p).sum(dim=1, keepdim=True))
    return torch.cat([(q[:, :, None] * phi[:, None, :]).reshape(-1, num_classes * dim), q], dim=1)


def _replay(
    features: Tensor, labels: Tensor, traj: Trajectory, first: int, rows: tuple[int, int] | None, on_epoch=None
) -> tuple[Tensor, Tensor, Tensor | None]:
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
    delta: Tensor | None = None  # D for the rows, and its momentum: both or neither
    mom: Tensor | None = None
    if rows is not None:
        r0, r1 = rows
        delta = torch.zeros(r1 - r0, d, dtype=_F64, device=device)
        mom = torch.zeros_like(delta)
    y_all = labels.to(device)
    for k in range(first, len(traj)):
        lr = float(traj.lr[k])
        for idx_np in traj.batches(k):
            idx = torch.from_numpy(idx_np.astype(np.int64)).to(device)
            phi = features[idx].detach().to(_F64)
            grads = infl.per_sample_grads(phi, y_all[idx], w, b)  # (|B|, d) float64 at theta_t
            gbar = grads.mean(dim=0)
            if delta is not None and mom is not None:
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
            gw = gbar[: num_classes * dim].reshape(num_classes, dim) + wd * w
            gb = gbar[num_classes * dim :] + wd * b
            mw.mul_(mu).add_(gw)
            mb.mul_(mu).add_(gb)
            w = w - lr * mw
            b = b - lr * mb
        if on_epoch is not None:
            on_epoch(k - first + 1, len(traj) - first)
    return w, b, delta


def replay_last_layer(
    features: Tensor, labels: Tensor, traj: Trajectory, epochs: int | None = None
) -> tuple[Tensor, Tensor]:
    """Final ``(W, b)`` (float64) of the recorded last-layer SGD replayed on frozen ``features``."""
    w, b, _ = _replay(features, labels, traj, _window(traj, epochs), None)
    return w, b


def sgd_influence(
    features: Tensor,
    labels: Tensor,
    traj: Trajectory,
    *,
    epochs: int | None = None,
    chunk_size: int | None = None,
    rows: tuple[int, int] | None = None,
    sink: Sink | None = None,
    progress: Progress | None = None,
) -> np.ndarray | None:
    """SGD-Influence ``S_j = theta_{-j,T} - theta_T`` (linearised) for every sample ``j``.

    Replays the last ``epochs`` recorded epochs (default: all) on frozen
    ``features``; rows are processed in chunks of ``chunk_size`` samples (default:
    as many as keep one ``(rows, d)`` float64 array near 128 MiB), each chunk
    replaying the trajectory.  ``rows=(start, stop)`` computes only those samples
    (a shard; the sink still receives absolute row offsets).  Output conventions
    (``sink``/``progress``/return) are those of :func:`dpcli.influence.kernels.exact_influence`.
    """
    n, num_classes, dim = infl.shapes(features, torch.as_tensor(traj.weight[0]), torch.as_tensor(traj.bias[0]))
    infl.check_labels(labels, n, num_classes)
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
        assert delta is not None  # rows given
        infl.emit(sink, out, start if sink is not None else start - lo, delta)
        if progress is not None:
            progress(stop, n)
    return out
