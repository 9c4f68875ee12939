"""Random pruning: the reference every selector must beat."""

from __future__ import annotations

import numpy as np

from dpcli.select.base import Context, Selector
from dpcli.select.scoring import random_prune


class Random(Selector):
    name = "random"
    help = "uniformly at random (seeded by --solver-seed)"

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        assert m is not None  # no epsilon mode: base.select refuses --epsilon for it
        return random_prune(ctx.n, m, np.random.default_rng(self.cfg.seed)), self.name
