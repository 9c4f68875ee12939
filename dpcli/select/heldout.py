"""The held-out linear head that auto's validation scores candidate kept sets with, and the sketches it solves on."""

from __future__ import annotations

from typing import Any

import numpy as np

Z = 2.0  # candidates within Z paired standard errors of the best are tied with it
# the feature rung's solve on the fit part matches features through a Johnson-Lindenstrauss sketch of this many
# directions: its C x D feature columns (5,120 on the CIFAR-10 folder, as many as S has) halved that solve's time,
# with the same norm and feature-mean gap within 2 % there.  S itself is not sketched: a 512-column sketch of the
# CIFAR-10 S made the objective's solve on it no better than random on S (norm 3.8x the exact solve's)
FEATURE_SKETCH = 64
HEAD_L2 = 1e-3  # L2 of the validation head on standardized features (the embeddings default)
HEAD_TOL = 1e-6


def sketch_rows(a: np.ndarray, rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``a[rows] @ R`` (float32) with R the seeded d x ``k`` Gaussian sketch of ``influence --sketch``, read
    chunk by chunk; ``a[rows]`` itself where it has at most ``k`` columns (a sketch would only add noise)."""
    from dpcli.influence.sketch import Sketch
    from dpcli.select.linalg import row_step

    d = a.shape[1]
    if d <= k:
        return np.asarray(a[rows])
    sk, out = Sketch(d, k, seed), np.empty((len(rows), k), dtype=np.float32)
    step = row_step(d)
    for i in range(0, len(rows), step):
        out[i : i + step] = sk.apply(np.asarray(a[rows[i : i + step]]))
    return out


def sketch_width(d: int, k: int | None = None) -> int:
    """Columns the validation's feature rung sees of ``d`` features (:func:`sketch_rows`; ``k``: the sketch's,
    :data:`FEATURE_SKETCH` unless given)."""
    return min(int(d), int(FEATURE_SKETCH if k is None else k))


def standardize(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Features scaled by the mean and spread of ``rows``: the head's L2 then means the same on any backbone."""
    x = np.asarray(features, dtype=np.float64)
    mu = x[rows].mean(0)
    sd = x[rows].std(0)
    sd[sd < 1e-12] = 1.0
    return (x - mu) / sd


def fit_softmax(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    l2: float = HEAD_L2,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    device: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) minimizing mean cross-entropy + l2/2 ||[W, b]||^2 (deterministic; dpcli's head fit).

    ``init``: a start (the objective is strictly convex, so it changes the iterations, not the optimum).
    ``device``: where the fit runs (the prune's device: at a million rows the fits dominate auto's cost)."""
    import torch

    from dpcli.influence.head import fit_head

    dev = torch.device(device if device is not None else "cpu")
    start = None if init is None else tuple(torch.from_numpy(np.asarray(t)) for t in init)
    head = fit_head(
        torch.from_numpy(np.ascontiguousarray(x)).to(dev),
        torch.from_numpy(np.asarray(y, dtype=np.int64)).to(dev),
        num_classes,
        l2,
        tol=HEAD_TOL,
        init=start,
    )
    return head.weight.cpu().numpy(), head.bias.cpu().numpy()


def evaluate(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-sample correctness and the mean cross-entropy of a linear head."""
    logits = x @ w.T + b
    top = logits.max(1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(1))
    return logits.argmax(1) == y, float(np.mean(lse - logits[np.arange(len(y)), y]))


def paired_noise(a: np.ndarray, b: np.ndarray, z: float = Z) -> float:
    """``z`` standard errors (percentage points) of mean(a) - mean(b) over the same validation samples."""
    d = a.astype(np.float64) - b.astype(np.float64)
    if len(d) < 2:
        return float("inf")
    return 100.0 * z * float(d.std(ddof=1)) / np.sqrt(len(d))
