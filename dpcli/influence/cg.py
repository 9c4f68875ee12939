"""Exact influence without the dense Hessian: preconditioned conjugate gradients.

Solves ``(H + damping I) x = g_i`` for a chunk of right-hand sides at once with
the closed-form Hessian-vector product ``J^T A J v`` (never a ``(d, d)`` matrix),
in float64, to a relative residual ``||r|| <= tol ||g_i||`` per column, and
returns ``S_i = x / n`` (Eq. 3's ``1/n``).  Each column runs its own CG
(own step sizes) and is frozen once converged, so a row's result does not depend
on which other rows share its chunk (this is what makes sharded runs reproduce a
single run).

Preconditioner: the Kronecker-factored approximation
``P = mean(A_i) (x) mean(phi~_i phi~_i^T) + damping I``, applied exactly through
the eigendecompositions of a ``C x C`` and a ``(D+1) x (D+1)`` matrix:
``P^-1 X = U [(U^T X V) / (a f^T + damping)] V^T`` for ``X`` in the augmented
``(C, D+1)`` layout.  Memory is ``O(n D + chunk d + D^2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from dpcli.errors import DpcliError
from dpcli.influence import kernels as infl
from dpcli.influence.kernels import grid_chunks

Sink = Callable[[int, np.ndarray], None]
Progress = Callable[[int, int], None]

_F64 = torch.float64
DEFAULT_TOL = 1e-6
DEFAULT_MAX_ITER = 1000
# float64 bytes for the CG state of one chunk (X, R, Z, P, HP and the gradient: ~6 arrays of (r, d)).
_CG_BYTES = 2**30
# elements of the (rows, r, C) intermediate in the HVP; rows per sample chunk depend only on the
# configured RHS chunk (not on how many columns are still active), so summation order is fixed.
_HVP_ELEMENTS = 2**23


@dataclass
class CGStats:
    """What the solver did, for reports and tests."""

    iterations: list[int] = field(default_factory=list)  # per RHS chunk: CG steps until all columns converged
    max_relative_residual: float = 0.0
    seconds_setup: float = 0.0

    @property
    def total_iterations(self) -> int:
        return int(sum(self.iterations))


def _check_tol(tol: float, max_iter: int) -> tuple[float, int]:
    tol = float(tol)
    if not math.isfinite(tol) or not 0.0 < tol < 1.0:
        raise DpcliError(f"--cg-tol must lie strictly between 0 and 1, got {tol!r}")
    if int(max_iter) < 1:
        raise DpcliError(f"--cg-max-iter must be a positive integer, got {max_iter!r}")
    return tol, int(max_iter)


def rhs_chunk(d: int, chunk_size: int) -> int:
    """Right-hand sides per CG chunk: the configured chunk, capped so the CG state fits ~1 GiB."""
    return max(1, min(int(chunk_size), _CG_BYTES // (6 * 8 * d)))


class KroneckerPreconditioner:
    """``A (x) F + damping I``: ``A`` the mean softmax curvature ``mean(diag p - p p^T)`` (C x C), ``F`` the
    mean ``phi~ phi~^T`` ((D+1) x (D+1)); inverted exactly via the eigendecompositions of the two factors."""

    def __init__(self, a: Tensor, f: tuple[Tensor, Tensor], damping: float) -> None:
        a_vals, self.u = torch.linalg.eigh(a)
        f_vals, self.v = f
        # both factors are PSD; clip round-off negatives so the inverse stays positive
        self.inv = 1.0 / (a_vals.clamp_min(0)[:, None] * f_vals.clamp_min(0)[None, :] + damping)

    @classmethod
    def at(
        cls, features: Tensor, w: Tensor, b: Tensor, damping: float, chunk_rows: int = 4096
    ) -> "KroneckerPreconditioner":
        """Both factors from every row of ``features`` at the layer ``(w, b)``."""
        n, dim = features.shape
        c = w.shape[0]
        dev = features.device
        a_sum = torch.zeros(c, c, dtype=_F64, device=dev)
        f_sum = torch.zeros(dim + 1, dim + 1, dtype=_F64, device=dev)
        for start in range(0, n, chunk_rows):
            phi = features[start : start + chunk_rows].detach().to(_F64)
            p = infl.probs(phi, w, b)
            a_sum += torch.diag(p.sum(0)) - p.T @ p
            phi_t = torch.cat([phi, torch.ones(phi.shape[0], 1, dtype=_F64, device=dev)], dim=1)
            f_sum += phi_t.T @ phi_t
        return cls(a_sum / n, torch.linalg.eigh(f_sum / n), damping)

    def apply(self, x: Tensor) -> Tensor:
        """``P^-1 x`` for ``x`` of shape ``(C, D+1)`` or ``(r, C, D+1)``, in the factors' precision."""
        y = self.u.T @ x.to(self.u.dtype) @ self.v
        y *= self.inv
        return (self.u @ y @ self.v.T).to(x.dtype)


def _aug_hvp(features: Tensor, w: Tensor, b: Tensor, x: Tensor, rows_per_chunk: int) -> Tensor:
    """Mean CE Hessian times each ``(C, D+1)`` slice of ``x`` (augmented layout), float64."""
    n, dim = features.shape
    r, c, aug = x.shape
    flat = x.reshape(r * c, aug)
    out = torch.zeros(r * c, aug, dtype=_F64, device=features.device)
    for start in range(0, n, rows_per_chunk):
        phi = features[start : start + rows_per_chunk].detach().to(_F64)
        rows = phi.shape[0]
        p = infl.probs(phi, w, b)
        phi_t = torch.cat([phi, torch.ones(rows, 1, dtype=_F64, device=phi.device)], dim=1)
        u = (phi_t @ flat.T).reshape(rows, r, c)  # logit perturbations J_i v
        q = p[:, None, :] * (u - (u * p[:, None, :]).sum(dim=2, keepdim=True))  # A_i J_i v
        out.addmm_(q.reshape(rows, r * c).T, phi_t)
    return out.reshape(r, c, aug).div_(n)


def _aug_grads(phi: Tensor, e: Tensor) -> Tensor:
    """Per-sample gradients in the augmented layout ``(rows, C, D+1)``."""
    phi_t = torch.cat([phi, torch.ones(phi.shape[0], 1, dtype=_F64, device=phi.device)], dim=1)
    return e[:, :, None] * phi_t[:, None, :]


def _to_public(x: Tensor) -> Tensor:
    """``(r, C, D+1)`` -> ``(r, d)`` ordered ``[W row-major, b]``."""
    r, c, aug = x.shape
    return torch.cat([x[:, :, : aug - 1].reshape(r, -1), x[:, :, aug - 1]], dim=1)


def block_cg(
    features: Tensor,
    w: Tensor,
    b: Tensor,
    rhs: Tensor,
    damping: float,
    tol: float,
    max_iter: int,
    precond: KroneckerPreconditioner | None,
    rows_per_chunk: int,
) -> tuple[Tensor, int, float]:
    """Solve ``(H + damping I) X = rhs`` column by column (vectorised), rhs ``(r, C, D+1)``.

    Returns ``(X, iterations, max relative residual)``; raises if ``max_iter`` is reached.
    """
    r = rhs.shape[0]
    x = torch.zeros_like(rhs)
    res = rhs.clone()
    b_norm = torch.linalg.vector_norm(res.reshape(r, -1), dim=1)
    z = precond.apply(res) if precond is not None else res.clone()
    p = z.clone()
    rz = (res * z).reshape(r, -1).sum(1)
    rel = torch.where(b_norm > 0, torch.ones_like(b_norm), torch.zeros_like(b_norm))
    it = 0
    while True:
        active = torch.nonzero(rel > tol).flatten()
        if active.numel() == 0:
            break
        if it >= max_iter:
            raise DpcliError(
                f"conjugate gradients did not reach --cg-tol {tol:g} in {max_iter} iterations "
                f"(worst relative residual {float(rel.max()):.3g}); raise --cg-max-iter or --damping"
            )
        it += 1
        pa = p[active]
        hp = _aug_hvp(features, w, b, pa, rows_per_chunk).add_(pa, alpha=damping)
        alpha = rz[active] / (pa * hp).reshape(len(active), -1).sum(1)
        x[active] += alpha[:, None, None] * pa
        ra = res[active] - alpha[:, None, None] * hp
        res[active] = ra
        rel[active] = torch.linalg.vector_norm(ra.reshape(len(active), -1), dim=1) / b_norm[active]
        za = precond.apply(ra) if precond is not None else ra
        rz_new = (ra * za).reshape(len(active), -1).sum(1)
        beta = rz_new / rz[active]
        p[active] = za + beta[:, None, None] * pa
        rz[active] = rz_new
    return x, it, float(rel.max()) if r else 0.0


def cg_influence(
    features: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor,
    damping: float,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    chunk_size: int = 4096,
    sink: Sink | None = None,
    progress: Progress | None = None,
    rows: tuple[int, int] | None = None,
    preconditioner: str = "kronecker",
    stats: CGStats | None = None,
) -> np.ndarray | None:
    """``S_i = (1/n) (H + damping I)^{-1} g_i`` by preconditioned CG, to relative residual ``tol``.

    Same conventions as :func:`dpcli.influence.kernels.exact_influence` (float32 chunks to
    ``sink(row_start, rows)`` or an in-memory result, ``progress(done, total)``).
    ``rows=(start, stop)`` restricts the output to those rows (sink starts are global
    row indices); the Hessian always uses every sample.
    """
    import time

    n, num_classes, dim = infl.shapes(features, weight, bias)
    infl.check_labels(labels, n, num_classes)
    damping = infl.check_damping(damping)
    chunk_size = infl.check_chunk(chunk_size)
    tol, max_iter = _check_tol(tol, max_iter)
    if preconditioner not in ("kronecker", "none"):
        raise DpcliError(f"unknown CG preconditioner {preconditioner!r}")
    row_start, row_stop = (0, n) if rows is None else (int(rows[0]), int(rows[1]))
    d = num_classes * (dim + 1)
    t0 = time.perf_counter()
    w, b = infl.layer64(features, weight, bias)
    precond = KroneckerPreconditioner.at(features, w, b, damping) if preconditioner == "kronecker" else None
    if stats is not None:
        stats.seconds_setup = time.perf_counter() - t0
    r_chunk = rhs_chunk(d, chunk_size)
    rows_per_chunk = max(1, _HVP_ELEMENTS // (r_chunk * num_classes))
    y_all = labels.to(features.device)
    total = row_stop - row_start
    out = None if sink is not None else np.empty((total, d), dtype=np.float32)
    for g_start, g_stop, start, stop in grid_chunks(row_start, row_stop, r_chunk, n):
        phi = features[g_start:g_stop].detach().to(_F64)
        g = _aug_grads(phi, infl.residuals(phi, y_all[g_start:g_stop], w, b))
        x, its, worst = block_cg(features, w, b, g, damping, tol, max_iter, precond, rows_per_chunk)
        if stats is not None:
            stats.iterations.append(its)
            stats.max_relative_residual = max(stats.max_relative_residual, worst)
        solved = _to_public(x[start - g_start : stop - g_start]).div_(n)
        infl.emit(sink, out, start - (0 if sink is not None else row_start), solved)
        if progress is not None:
            progress(stop - row_start, total)
    return out


def sketched_rows(
    x: Tensor,
    y: Tensor,
    w: Tensor,
    b: Tensor,
    damping: float,
    sketch,
    *,
    tol: float,
    max_iter: int,
    sink: Sink,
    progress: Progress | None = None,
) -> dict:
    """``S R`` without S: solve ``(H + damping I) Y = R`` (k columns, preconditioned CG), then
    ``(S R)_i = g_i^T Y / n`` chunk by chunk.  Cost O(k n d) instead of one CG solve per sample."""
    n, dim = x.shape
    c = w.shape[0]
    r = torch.from_numpy(sketch.matrix()).to(device=x.device, dtype=_F64)  # (d, k) public order
    k = r.shape[1]
    rhs = torch.empty(k, c, dim + 1, dtype=_F64, device=x.device)  # augmented layout
    rhs[:, :, :dim] = r[: c * dim].T.reshape(k, c, dim)
    rhs[:, :, dim] = r[c * dim :].T
    precond = KroneckerPreconditioner.at(x, w, b, damping)
    rows_per_chunk = max(1, (1 << 23) // (k * c))
    yy, iters, worst = block_cg(x, w, b, rhs, damping, tol, max_iter, precond, rows_per_chunk)
    yw = yy[:, :, :dim].permute(2, 1, 0).reshape(dim, c * k)  # phi @ yw -> (rows, C, k)
    yb = yy[:, :, dim].T  # (C, k)
    step = max(1, (1 << 24) // (c * k))
    for a in range(0, n, step):
        phi = x[a : a + step].to(_F64)
        e = infl.residuals(phi, y[a : a + step], w, b)
        t = (phi @ yw).reshape(-1, c, k) + yb
        sink(a, (torch.einsum("rc,rck->rk", e, t) / n).to(torch.float32).cpu().numpy())
        if progress is not None:
            progress(min(a + step, n), n)
    return {"solver": "cg-sketch", "cg_iterations": iters, "cg_max_relative_residual": worst}
