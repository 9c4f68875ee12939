"""The exact S in float32 with iterative refinement: on devices where float64 is slow, the same S for less."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from dpcli.errors import DpcliError
from dpcli.influence.kernels import (
    Progress,
    Sink,
    check_chunk,
    check_damping,
    check_labels,
    last_layer_hessian,
    shapes,
    solve_in_chunks,
)

PRECISIONS = ("float64", "float32-refined", "auto")


def float64_is_fast(device: torch.device) -> bool:
    """CPUs and data-centre GPUs (A100/H100/H200: compute capability 8.0 / 9.0) do float64 at >= 1/2 rate."""
    if device.type != "cuda":
        return True
    major, minor = torch.cuda.get_device_capability(device)
    return (major, minor) in ((6, 0), (7, 0), (8, 0), (9, 0))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> float64 where the device does float64 well, else float32 with refinement."""
    if precision not in PRECISIONS:
        raise DpcliError(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "float64" if float64_is_fast(device) else "float32-refined"
    return precision


def refined_solver(
    features: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor,
    damping: float,
    chunk_size: int,
    tol: float = 1e-6,
    max_iter: int = 20,
) -> Callable[[Tensor], Tensor]:
    """A solve ``G -> G (H + damping I)^-1`` (rows of G) by a float32 Cholesky plus iterative refinement.

    The O(d^3) factorization runs in float32; each step computes the residual ``r = g - A x``
    in float64 (O(d^2) per row) and corrects ``x`` with the float32 factor, until every row's
    relative residual ``||r|| / ||g||`` is at most ``tol`` (the exact path's stated accuracy;
    the same criterion as ``--cg-tol``).  Converges when ``cond(A) * 2^-24 < 1``; otherwise,
    or after ``max_iter`` steps, a one-line error asks for float64.
    """
    damping = check_damping(damping)
    a64 = last_layer_hessian(features, labels, weight, bias, chunk_size=chunk_size)
    a64.diagonal().add_(damping)
    factor, info = torch.linalg.cholesky_ex(a64.to(torch.float32))
    if int(info) != 0:
        raise DpcliError(
            f"the damped Hessian is not positive definite in float32 (Cholesky failed at order "
            f"{int(info)}); use --precision float64 or a larger --damping than {damping:g}"
        )

    def solve(g: Tensor) -> Tensor:
        # Unit columns: a saturated sample's gradient (norm 1e-40, say) would underflow in float32.
        norms = g.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        rhs = (g / norms[:, None]).T  # (d, rows), float64
        x = torch.cholesky_solve(rhs.to(torch.float32), factor).to(torch.float64)
        for _ in range(max_iter):
            r = rhs - a64 @ x
            if float(r.norm(dim=0).max()) <= tol:
                return x.T * norms[:, None]
            x += torch.cholesky_solve(r.to(torch.float32), factor).to(torch.float64)
        r = rhs - a64 @ x
        worst = float(r.norm(dim=0).max())
        if worst <= tol:
            return x.T * norms[:, None]
        raise DpcliError(
            f"float32 iterative refinement reached relative residual {worst:.2e} > {tol:g} after "
            f"{max_iter} steps (the damped Hessian is too ill-conditioned); use --precision float64"
        )

    return solve


def exact_influence_refined(
    features: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor,
    damping: float,
    chunk_size: int = 4096,
    sink: Sink | None = None,
    progress: Progress | None = None,
    tol: float = 1e-6,
    rows: tuple[int, int] | None = None,
) -> np.ndarray | None:
    """:func:`exact_influence` with the float32 factor + float64 refinement of :func:`refined_solver`."""
    n, num_classes, dim = shapes(features, weight, bias)
    check_labels(labels, n, num_classes)
    solve = refined_solver(features, labels, weight, bias, damping, check_chunk(chunk_size), tol=tol)
    return solve_in_chunks(
        features, labels, weight, bias, solve, rows=rows, chunk_size=chunk_size, sink=sink, progress=progress
    )
