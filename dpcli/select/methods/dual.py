"""DUAL (Cho et al., ICML 2025): difficulty times uncertainty of the true-class probability.

Reference: github.com/behaapyy/dual-pruning @ 4ab525d (``exp_cifar/importance_evaluation.py::dual``).
``p[e, i]`` is the true-class probability of the training forward pass (``exp(-loss)`` as recorded).
Over the first T = 30 epochs, each window of J = 10 epochs (stride 1) scores
``10 * std(p) * (1 - mean(p))`` (std with ddof = 1); the score is the mean over windows, and the
highest scores are kept.  Runs shorter than 30 epochs use T = epochs, J = min(10, T).
"""

from __future__ import annotations

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.base import Context, ScoreSelector


def true_class_probs(loss: np.ndarray, T: int = 30) -> np.ndarray:
    """``p_y`` of the first ``T`` epochs from the recorded cross-entropy losses."""
    p = np.exp(-np.asarray(loss[:T], dtype=np.float64))
    if np.isnan(p).any():
        raise DpcliError("DUAL needs the loss of every sample in each of the first epochs; train on the full dataset")
    return p


def dual_scores(p: np.ndarray, T: int = 30, J: int = 10) -> np.ndarray:
    """Mean over sliding windows of ``10 * std * (1 - mean)`` of the true-class probability ``p`` (E x n)."""
    p = np.asarray(p, dtype=np.float64)[:T]
    J = min(J, p.shape[0])
    if J < 2:
        raise DpcliError(f"DUAL needs at least 2 recorded epochs, got {p.shape[0]}")
    w = np.lib.stride_tricks.sliding_window_view(p, J, axis=0)  # (T-J+1, n, J)
    return (w.std(axis=2, ddof=1) * 10.0 * (1.0 - w.mean(axis=2))).mean(axis=0)


class DUAL(ScoreSelector):
    name = "dual"
    needs = frozenset({"dynamics"})
    help = "DUAL as published: uncertainty x difficulty of p_y over the first 30 epochs; keep the highest"

    def scores(self, ctx: Context) -> np.ndarray:
        return dual_scores(true_class_probs(ctx.dynamics().loss))
