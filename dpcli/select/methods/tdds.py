"""TDDS, Temporal Dual-Depth Scoring (Zhang et al., CVPR 2024), as its reference code computes it.

Reference: github.com/zhangxin-xd/Dataset-Pruning-TDDS @ 9c1e3bd (``importance_evaluation.py``).
On the softmax of the training-pass outputs of the first T epochs (T = 30): the first depth is
``sum_c |p_{t+1,c} log(p_{t+1,c} / p_{t,c})|`` between consecutive epochs; over each window of J = 10
epochs (stride 1) the second depth is the L2 norm of those values' deviation from their window mean;
windows are weighted ``decay (1 - decay)^(T - J - k)`` (decay 0.9: the last window dominates).
The highest scores are kept.  Runs shorter than 30 epochs use T = epochs, J = min(10, T).
"""

from __future__ import annotations

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.base import Context, ScoreSelector

EPS = 1e-8  # inside every log, as the reference


def window_sizes(recorded: int, T: int = 30, J: int = 10) -> tuple[int, int]:
    """(T, J) for a run that recorded ``recorded`` epochs of class probabilities."""
    T = min(T, recorded)
    J = min(J, T)
    if J < 3:
        raise DpcliError(f"TDDS needs at least 3 recorded epochs (2 epoch-to-epoch changes per window), got {recorded}")
    return T, J


def tdds_scores(probs: np.ndarray, T: int = 30, J: int = 10, decay: float = 0.9) -> np.ndarray:
    """TDDS from per-epoch class probabilities ``probs`` (epochs x n x C, dataset order)."""
    T, J = window_sizes(probs.shape[0], T, J)
    p = np.asarray(probs[:T], dtype=np.float32)
    if np.isnan(p).any():
        raise DpcliError("TDDS needs the class probabilities of every sample in each of the first epochs")
    logp = np.log(p + np.float32(EPS))
    kd = np.abs(p[1:] * (logp[1:] - logp[:-1])).sum(axis=2, dtype=np.float64)  # (T-1, n): every pair once
    windows = np.lib.stride_tricks.sliding_window_view(kd, J - 1, axis=0)  # (T-J+1, n, J-1)
    dev = np.linalg.norm(windows - windows.mean(axis=2, keepdims=True), axis=2)  # (T-J+1, n)
    weights = decay * (1.0 - decay) ** (T - J - np.arange(T - J + 1))
    return weights @ dev


class TDDS(ScoreSelector):
    name = "tdds"
    needs = frozenset({"dynamics"})
    help = "TDDS as published: KL-like change of the class probabilities over the first 30 epochs"

    def scores(self, ctx: Context) -> np.ndarray:
        return tdds_scores(ctx.dynamics().require("probs", "--method tdds"))
