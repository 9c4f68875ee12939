"""Rows ``[start, stop)`` of S while the Hessian comes from every sample: what ``--shard`` computes.

Each row range is solved on the single run's global chunk grid (:func:`dpcli.influence.cg.grid_chunks`),
so the shards of a run reproduce the unsharded S bit for bit.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from dpcli.influence import kernels as infl
from dpcli.influence.cg import grid_chunks
from dpcli.influence.kernels import Progress, Sink

_F64 = torch.float64


def exact_rows(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, damping: float,
                rows: tuple[int, int], chunk_size: int, sink: Sink, progress: Progress | None) -> None:
    """Dense exact path for a row range: Hessian and Cholesky from all rows, solves on the same
    global chunk grid as :func:`dpcli.influence.exact_influence` (split only at the range ends)."""
    n, num_classes, dim = infl.shapes(features, weight, bias)
    damping = infl.check_damping(damping)
    factor = infl.damped_cholesky(features, labels, weight, bias, damping, chunk_size)
    solve_range(features, labels, weight, bias, rows, chunk_size, sink, progress,
                 lambda grads: torch.cholesky_solve(grads.T, factor).T)


def solve_range(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, rows: tuple[int, int],
                 chunk_size: int, sink: Sink, progress: Progress | None,
                 solve: Callable[[Tensor], Tensor]) -> None:
    """Rows ``[start, stop)`` of S = solve(G)/n, on the single run's chunk grid (bit-identical shards)."""
    n = features.shape[0]
    w, b = infl.layer64(features, weight, bias)
    y_all = labels.to(features.device)
    row_start, row_stop = rows
    for g_start, g_stop, start, stop in grid_chunks(row_start, row_stop, chunk_size, n):
        phi = features[g_start:g_stop].detach().to(_F64)
        grads = infl.grads_from_residuals(phi, infl.residuals(phi, y_all[g_start:g_stop], w, b))
        solved = solve(grads)[start - g_start:stop - g_start]
        solved /= n
        sink(start, solved.to(torch.float32).contiguous().cpu().numpy())
        if progress is not None:
            progress(stop - row_start, row_stop - row_start)


def dense_fits(num_classes: int, dim: int) -> bool:
    return num_classes * (dim + 1) <= infl.max_dense_dim()


def lissa_rows(features, labels, weight, bias, *, rows, sink, progress, depth, scale, batch_size, repeats, seed,
                damping, chunk_size) -> None:
    """LiSSA for a row range: its minibatch sequence depends only on the seed, not on the rows."""
    n, num_classes, dim = infl.shapes(features, weight, bias)
    infl.check_labels(labels, n, num_classes)
    damping = infl.check_damping(damping)
    w, b = infl.layer64(features, weight, bias)
    solve_range(features, labels, weight, bias, rows, chunk_size, sink, progress,
                 lambda grads: infl.lissa_solve(features, w, b, grads, damping, int(depth), float(scale),
                                                 int(batch_size), int(repeats), int(seed)))
