"""``||S_i||`` alone: each sample's individual influence, without the group effect the solver exploits."""

from __future__ import annotations

import numpy as np

from dpcli.select.base import Context, ScoreSelector
from dpcli.select.linalg import row_sq_norms


class InfluenceScore(ScoreSelector):
    name = "influence-score"
    help = "||S_i|| alone (no group effect); keep the most influential"

    def scores(self, ctx: Context) -> np.ndarray:
        return np.sqrt(row_sq_norms(ctx.S))  # streamed: no float64 copy of S
