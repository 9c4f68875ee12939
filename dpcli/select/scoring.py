"""What score-based selectors share: turning scores or counts into a pruned mask.

Every rule returns ``pruned`` (bool, True = DROP).  Scores follow "larger = more worth keeping";
ties are broken by index (a stable sort), so every rule is deterministic given its inputs.
"""

from __future__ import annotations

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.linalg import chunk_rows


def check_count(m: int, n: int) -> None:
    if not 0 <= int(m) <= n:
        raise DpcliError(f"the prune count must lie in [0, {n}], got {m}")


def prune_lowest(scores: np.ndarray, m: int) -> np.ndarray:
    """Drop the ``m`` samples with the smallest score."""
    scores = np.asarray(scores, dtype=np.float64)
    check_count(m, len(scores))
    if np.isnan(scores).any():
        raise DpcliError("a selection score is NaN; the training dynamics do not cover every sample")
    order = np.lexsort((np.arange(len(scores)), scores))
    pruned = np.zeros(len(scores), dtype=bool)
    pruned[order[:m]] = True
    return pruned


def random_prune(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    check_count(m, n)
    pruned = np.zeros(n, dtype=bool)
    pruned[rng.choice(n, size=m, replace=False)] = True
    return pruned


def proportional_counts(sizes: np.ndarray, total: int, caps: np.ndarray | None = None) -> np.ndarray:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainder, capped at ``caps``, default
    the sizes)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    caps = sizes if caps is None else np.asarray(caps, dtype=np.int64)
    if total > caps.sum():
        raise DpcliError(f"cannot take {total} samples from groups holding {int(caps.sum())}")
    if sizes.sum() == 0:
        return np.zeros_like(sizes)
    exact = sizes * (total / sizes.sum())
    counts = np.minimum(np.floor(exact).astype(np.int64), caps)
    rest = total - int(counts.sum())
    order = np.lexsort((np.arange(len(sizes)), -(exact - counts)))
    for g in order:
        if rest == 0:
            break
        if counts[g] < caps[g]:
            counts[g] += 1
            rest -= 1
    while rest:  # only when capped groups left remainders: fill any group with room
        g = int(np.flatnonzero(counts < caps)[0])
        take = min(rest, int(caps[g] - counts[g]))
        counts[g] += take
        rest -= take
    return counts


def longest_prefix(S: np.ndarray, scores: np.ndarray, epsilon: float, block: int | None = None) -> np.ndarray:
    """Epsilon mode for a score rule: prune in score order (lowest first) while ``||sum S_i|| <= epsilon``.

    The prefix sums are formed a byte-sized block of rows at a time (float64), whatever d is.
    """
    block = block or chunk_rows(S.shape[1])
    order = np.lexsort((np.arange(len(scores)), scores))
    running = np.zeros(S.shape[1])
    best = 0
    for start in range(0, len(order), block):
        sums = np.cumsum(S[order[start : start + block]].astype(np.float64), axis=0) + running
        ok = np.flatnonzero(np.linalg.norm(sums, axis=1) <= epsilon)
        if len(ok):
            best = max(best, start + int(ok[-1]) + 1)
        running = sums[-1]
    pruned = np.zeros(len(scores), dtype=bool)
    pruned[order[:best]] = True
    return pruned
