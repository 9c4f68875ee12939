"""Rows ``[start, stop)`` of S while the Hessian comes from every sample: what ``--shard`` computes.

Each row range is solved on the single run's global chunk grid (:func:`dpcli.influence.kernels.grid_chunks`),
so the shards of a run reproduce the unsharded S bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dpcli.influence import kernels as infl
from dpcli.influence.kernels import Progress, Sink


def dense_fits(num_classes: int, dim: int) -> bool:
    return num_classes * (dim + 1) <= infl.max_dense_dim()


def exact_rows(
    features: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor,
    damping: float,
    rows: tuple[int, int],
    chunk_size: int,
    sink: Sink,
    progress: Progress | None,
) -> None:
    """Dense exact path for a row range: Hessian and Cholesky from all rows, solved on the full run's grid."""
    damping = infl.check_damping(damping)
    factor = infl.damped_cholesky(features, labels, weight, bias, damping, chunk_size)
    infl.solve_in_chunks(
        features,
        labels,
        weight,
        bias,
        lambda g: torch.cholesky_solve(g.T, factor).T,
        rows=rows,
        chunk_size=chunk_size,
        sink=sink,
        progress=progress,
    )
