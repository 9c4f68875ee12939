"""GraNd (Paul et al., NeurIPS 2021): the per-sample gradient norm of all parameters at initialization,
averaged over ``--score-seeds`` initializations (vectorized with ``torch.func``)."""

from __future__ import annotations

import numpy as np

from dpcli.select.base import Context, ScoreSelector


class GraNd(ScoreSelector):
    name = "grand"
    needs = frozenset({"snapshots", "dataset"})
    reads = frozenset({"score_epoch", "score_seeds"})
    help = "gradient norm at initialization, averaged over --score-seeds"

    def scores(self, ctx: Context) -> np.ndarray:
        from dpcli.select.signals import snapshot_scores

        return snapshot_scores("grand", self.cfg, ctx)
