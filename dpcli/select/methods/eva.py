"""EVA, Evolution-aware VAriance coreset selection (Hong et al., ACM MM 2024), as its reference code scores.

Reference: github.com/xxxx-Bella/EVA @ b83eab7 (``generate_importance_score.py::EVA``,
``core/data/Coreset.py::score_monotonic_selection``).  The importance signal is the error-vector
norm ``||p - onehot(y)||`` of the training forward pass, recorded at every epoch.  Its variance
(ddof 1) over an early window and over a later window of epochs is L1-normalized over the samples
in each window, and the score is ``wt * early + (1 - wt) * later`` (wt = 0.5); the highest scores
are kept.  The README's windows are epochs [0, 10) and [100, 110) of a 200-epoch run: dpcli keeps
the early window at the start and starts the later one at half of the run, both of length
min(10, E // 2), so a 200-epoch run gets exactly the README's windows (3 epochs: [0, 2) and [1, 3)).
"""

from __future__ import annotations

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.base import Context, ScoreSelector

WINDOW = 10  # epochs per window (the README's e_max - e_min and l_max - l_min)
WEIGHT = 0.5  # the reference's --wt: weight of the early window
L1_EPS = 1e-12  # torch.nn.functional.normalize's floor on the norm


def eva_windows(epochs: int, window: int = WINDOW) -> tuple[slice, slice]:
    """The early and the later window of a run that recorded ``epochs`` epochs (3 epochs: two that overlap)."""
    if epochs < 3:
        raise DpcliError(f"EVA needs at least 3 recorded epochs (two windows of 2 for a variance), got {epochs}")
    J = max(2, min(window, epochs // 2))
    later = min(epochs // 2, epochs - J)
    return slice(0, J), slice(later, later + J)


def window_variance(el2n: np.ndarray) -> np.ndarray:
    """Per-sample variance (ddof 1) over a window's epochs, divided by its sum over the samples."""
    v = np.asarray(el2n, dtype=np.float64).var(axis=0, ddof=1)
    return v / max(float(np.abs(v).sum()), L1_EPS)


def eva_scores(el2n: np.ndarray, window: int = WINDOW, weight: float = WEIGHT) -> np.ndarray:
    """EVA from the per-epoch error-vector norms ``el2n`` (epochs x n, dataset order)."""
    early, later = eva_windows(el2n.shape[0], window)
    e, lt = el2n[early], el2n[later]
    if np.isnan(e).any() or np.isnan(lt).any():
        raise DpcliError(
            "EVA needs the error-vector norm of every sample in each epoch of its windows; train on the full dataset"
        )
    return weight * window_variance(e) + (1.0 - weight) * window_variance(lt)


class EVA(ScoreSelector):
    name = "eva"
    needs = frozenset({"dynamics"})
    help = "EVA as published: variance of the error-vector norm in an early and a mid-training window; keep the highest"

    def scores(self, ctx: Context) -> np.ndarray:
        return eva_scores(ctx.dynamics().require("el2n", "--method eva"))
