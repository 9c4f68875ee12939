"""A loss-based variant of TDDS (after Zhang et al., CVPR 2024), kept as ``tdds-loss``.

Not the authors' rule (that is ``tdds``): it needs only the recorded per-epoch losses, uses the
true-class loss decrease instead of the per-class KL-like terms, windows over all epochs and weights
``decay**age``.  See docs/baselines.md.
"""

from __future__ import annotations

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.base import Context, ScoreSelector


def tdds_scores(loss: np.ndarray, window: int | None = None, decay: float = 0.9) -> np.ndarray:
    """A sample's contribution at epoch t is its loss decrease ``l_{t-1} - l_t``; its variability over a
    sliding window of epochs (the first depth) is averaged over windows with weights ``decay**age`` (the
    second depth), so samples whose contribution keeps changing late in training score highest."""
    loss = np.asarray(loss, dtype=np.float64)
    if np.isnan(loss).any():
        raise DpcliError("TDDS needs the loss of every sample at every recorded epoch")
    e = loss.shape[0]
    if e < 3:
        raise DpcliError(f"TDDS needs at least 3 recorded epochs of training dynamics, the checkpoint has {e}")
    delta = loss[:-1] - loss[1:]
    w = window or max(2, min(10, (e - 1) // 3))
    w = min(w, delta.shape[0])
    stds = np.stack([delta[t : t + w].std(0) for t in range(delta.shape[0] - w + 1)])
    weights = decay ** np.arange(len(stds))[::-1]
    return (weights[:, None] * stds).sum(0) / weights.sum()


class TDDSLoss(ScoreSelector):
    name = "tdds-loss"
    needs = frozenset({"dynamics"})
    help = "variant of TDDS on the loss decrease over all epochs (not the authors' rule)"

    def scores(self, ctx: Context) -> np.ndarray:
        return tdds_scores(ctx.dynamics().loss)
