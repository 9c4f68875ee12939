"""LiSSA (Agarwal et al. 2016), the paper's estimator of ``(H + damping I)^-1 g``: a stochastic Neumann
series on minibatch Hessians, vectorised over all right-hand sides of a row chunk, no ``(d, d)`` matrix.
The registered estimator around it (with its convergence check) is :mod:`dpcli.influence.estimators.lissa`.
"""

from __future__ import annotations

import math

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
    layer64,
    mean_hvp,
    shapes,
    solve_in_chunks,
)


def lissa_solve(
    features: Tensor,
    w: Tensor,
    b: Tensor,
    rhs: Tensor,
    damping: float,
    depth: int,
    scale: float,
    batch_size: int,
    repeats: int,
    seed: int,
) -> Tensor:
    """LiSSA estimate of ``(H + damping I)^{-1} rhs`` for every row of ``rhs``.

    Recursion ``h_j = v + (I - (H_B + damping I)/scale) h_{j-1}``, whose fixed
    point is ``scale * (H + damping I)^{-1} v``; hence the final division by
    ``scale``.  The minibatch sequence depends only on ``(seed, repeat)``, so
    results do not depend on how right-hand sides are chunked.
    """
    n = features.shape[0]
    v_norm = torch.linalg.vector_norm(rhs, dim=1)
    total = torch.zeros_like(rhs)
    for rep in range(repeats):
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(seed) * 1_000_003 + rep)
        h = rhs.clone()
        for step in range(1, depth + 1):
            if batch_size >= n:
                batch = features
            else:
                idx = torch.randperm(n, generator=gen)[:batch_size].to(features.device)
                batch = features[idx]
            hvp = mean_hvp(batch, w, b, h)
            # h <- v + h - (H_B h + damping h) / scale
            h.mul_(1.0 - damping / scale).add_(rhs).sub_(hvp.div_(scale))
            # While the recursion contracts (all eigenvalues of (H_B + damping I)/scale
            # in (0, 2)), ||h_j|| <= (j + 1) ||v||; exceeding it means divergence.
            h_norm = torch.linalg.vector_norm(h, dim=1)
            bad = ~torch.isfinite(h_norm) | (h_norm > 1.01 * (step + 1) * v_norm + 1e-300)
            if bool(bad.any()):
                raise DpcliError(
                    f"LiSSA diverged at step {step} with scale {scale:g}: the damped "
                    f"minibatch Hessian has eigenvalues above 2*scale; raise --lissa-scale"
                )
        total += h
    return total / (repeats * scale)


def lissa_influence(
    features: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor,
    damping: float,
    depth: int = 1000,
    scale: float = 10.0,
    batch_size: int = 512,
    repeats: int = 1,
    seed: int = 0,
    chunk_size: int = 4096,
    sink: Sink | None = None,
    progress: Progress | None = None,
    rows: tuple[int, int] | None = None,
) -> np.ndarray | None:
    """LiSSA estimate (Agarwal et al. 2016), the paper's choice, of ``S_i``.

    Stochastic Neumann-series recursion on minibatch Hessians (``batch_size``
    samples per step, ``depth`` steps, averaged over ``repeats``), vectorised
    over all right-hand sides of a row chunk; needs no ``(d, d)`` matrix.  The
    recursion's ``scale`` is divided out (the authors' code did not).  Output
    conventions (``sink``/``progress``/return) are those of :func:`exact_influence`; ``rows`` restricts the
    output to a row range (``--shard``): the minibatch sequence depends only on the seed, not on the rows.
    """
    n, num_classes, dim = shapes(features, weight, bias)
    check_labels(labels, n, num_classes)
    damping = check_damping(damping)
    chunk_size = check_chunk(chunk_size)
    if int(depth) < 1 or int(batch_size) < 1 or int(repeats) < 1:
        raise DpcliError(
            f"LiSSA depth, batch size and repeats must be positive, got {depth!r}, {batch_size!r}, {repeats!r}"
        )
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0.0:
        raise DpcliError(f"--lissa-scale must be a finite positive number, got {scale!r}")
    w, b = layer64(features, weight, bias)
    return solve_in_chunks(
        features,
        labels,
        weight,
        bias,
        lambda g: lissa_solve(features, w, b, g, damping, int(depth), scale, int(batch_size), int(repeats), int(seed)),
        rows=rows,
        chunk_size=chunk_size,
        sink=sink,
        progress=progress,
    )
