"""EL2N (Paul et al., NeurIPS 2021): ``||softmax - onehot||`` early in training, averaged over seeds.

Seed 0 is the full run's snapshot; each extra seed (``--score-seeds``, default 3; the authors use
10) trains only up to ``--score-epoch`` and is cached beside the checkpoint.
"""

from __future__ import annotations

import numpy as np

from dpcli.select.base import Context, ScoreSelector


class EL2N(ScoreSelector):
    name = "el2n"
    needs = frozenset({"snapshots", "dataset"})
    reads = frozenset({"score_epoch", "score_seeds"})
    help = "error norm after 10 % of training, averaged over --score-seeds"

    def scores(self, ctx: Context) -> np.ndarray:
        from dpcli.select.signals import snapshot_scores

        return snapshot_scores("el2n", self.cfg, ctx)
