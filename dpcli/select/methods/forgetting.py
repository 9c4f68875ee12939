"""Forgetting events (Toneva et al., ICLR 2019), counted from the correctness ``train`` records."""

from __future__ import annotations

import numpy as np

from dpcli.select.base import Context, ScoreSelector


def forgetting_counts(correct: np.ndarray) -> np.ndarray:
    """Correct -> wrong transitions between the epochs a sample was seen; a sample never predicted
    correctly counts as forgotten every epoch (most worth keeping), as in the paper."""
    correct = np.asarray(correct)
    seen = correct != 255
    c = correct.astype(np.int8)
    events = np.zeros(correct.shape[1], dtype=np.float64)
    prev = np.full(correct.shape[1], -1, dtype=np.int8)  # last seen correctness, -1 = none
    for e in range(correct.shape[0]):
        s = seen[e]
        events += s & (prev == 1) & (c[e] == 0)
        prev = np.where(s, c[e], prev)
    never = ~(np.where(seen, c == 1, False).any(0))
    events[never] = correct.shape[0] + 1
    return events


class Forgetting(ScoreSelector):
    name = "forgetting"
    needs = frozenset({"dynamics"})
    help = "forgetting events counted during train; keep the most forgotten"

    def scores(self, ctx: Context) -> np.ndarray:
        return forgetting_counts(ctx.dynamics().correct)
