"""Score-based and geometric selection rules: the published baselines, as pure functions.

Every rule returns ``pruned`` (bool, True = DROP) with exactly ``m`` samples pruned, so
all of them write the same mask artifact as the optimization method.  Scores follow the
convention "larger = more worth keeping"; ties are broken by index, so every rule is
deterministic given its inputs (and ``rng`` where it samples).
"""

from __future__ import annotations

import numpy as np

from dpcli.errors import DpcliError


def prune_lowest(scores: np.ndarray, m: int) -> np.ndarray:
    """Drop the ``m`` samples with the smallest score (forgetting, EL2N, GraNd, TDDS, influence-score)."""
    scores = np.asarray(scores, dtype=np.float64)
    _check_count(m, len(scores))
    if np.isnan(scores).any():
        raise DpcliError("a selection score is NaN; the training dynamics do not cover every sample")
    order = np.lexsort((np.arange(len(scores)), scores))
    pruned = np.zeros(len(scores), dtype=bool)
    pruned[order[:m]] = True
    return pruned


def random_prune(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    _check_count(m, n)
    pruned = np.zeros(n, dtype=bool)
    pruned[rng.choice(n, size=m, replace=False)] = True
    return pruned


def proportional_counts(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainder, capped at size)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if total > sizes.sum():
        raise DpcliError(f"cannot take {total} samples from groups holding {int(sizes.sum())}")
    if sizes.sum() == 0:
        return np.zeros_like(sizes)
    exact = sizes * (total / sizes.sum())
    counts = np.minimum(np.floor(exact).astype(np.int64), sizes)
    rest = total - int(counts.sum())
    order = np.lexsort((np.arange(len(sizes)), -(exact - counts)))
    for g in order:
        if rest == 0:
            break
        if counts[g] < sizes[g]:
            counts[g] += 1
            rest -= 1
    while rest:  # only when capped groups left remainders: fill any group with room
        g = int(np.flatnonzero(counts < sizes)[0])
        take = min(rest, int(sizes[g] - counts[g]))
        counts[g] += take
        rest -= take
    return counts


def herding(features: np.ndarray, labels: np.ndarray, m: int) -> np.ndarray:
    """Class-wise herding (Welling, 2009; Chen et al., 2010): keep, per class, the samples whose
    running mean follows the class mean in feature space; classes keep their share."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(labels)
    _check_count(m, n)
    classes, sizes = np.unique(labels, return_counts=True)
    keep_counts = sizes - proportional_counts(sizes, m)
    keep = np.zeros(n, dtype=bool)
    for c, k in zip(classes, keep_counts):
        idx = np.flatnonzero(labels == c)
        X = features[idx]
        mu = X.mean(0)
        sq = np.einsum("ij,ij->i", X, X)
        total = np.zeros(X.shape[1])
        free = np.ones(len(idx), dtype=bool)
        for t in range(int(k)):
            # ||mu - (total + x)/(t+1)||^2 up to terms constant in x
            target = (t + 1) * mu - total
            cost = sq - 2.0 * (X @ target)
            cost[~free] = np.inf
            j = int(np.argmin(cost))
            free[j] = False
            total += X[j]
        keep[idx[~free]] = True
    return ~keep


def forgetting_counts(correct: np.ndarray) -> np.ndarray:
    """Forgetting events (Toneva et al., 2019): correct -> wrong transitions between the epochs a
    sample was seen; a sample never predicted correctly counts as forgotten every epoch (most
    worth keeping), as in the paper."""
    correct = np.asarray(correct)
    seen = correct != 255
    c = correct.astype(np.int8)
    events = np.zeros(correct.shape[1], dtype=np.float64)
    prev = np.full(correct.shape[1], -1, dtype=np.int8)  # last seen correctness, -1 = none
    for e in range(correct.shape[0]):
        s = seen[e]
        events += (s & (prev == 1) & (c[e] == 0))
        prev = np.where(s, c[e], prev)
    never = ~(np.where(seen, c == 1, False).any(0))
    events[never] = correct.shape[0] + 1
    return events


def tdds_scores(loss: np.ndarray, window: int | None = None, decay: float = 0.9) -> np.ndarray:
    """Temporal dual-depth scoring in the spirit of TDDS (Zhang et al., CVPR 2024).

    A sample's contribution to training progress at epoch t is its loss decrease
    ``l_{t-1} - l_t``; its variability over a sliding window of epochs (the first depth) is
    averaged over windows with weights ``decay**(age)`` (the second depth), so samples whose
    contribution keeps changing late in training score highest.
    """
    loss = np.asarray(loss, dtype=np.float64)
    if np.isnan(loss).any():
        raise DpcliError("TDDS needs the loss of every sample at every recorded epoch")
    e = loss.shape[0]
    if e < 3:
        raise DpcliError(f"TDDS needs at least 3 recorded epochs of training dynamics, the checkpoint has {e}")
    delta = loss[:-1] - loss[1:]
    w = window or max(2, min(10, (e - 1) // 3))
    w = min(w, delta.shape[0])
    stds = np.stack([delta[t:t + w].std(0) for t in range(delta.shape[0] - w + 1)])
    weights = decay ** np.arange(len(stds))[::-1]
    return (weights[:, None] * stds).sum(0) / weights.sum()


def el2n(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Error L2 norm ||softmax - onehot|| (Paul et al., 2021)."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return np.linalg.norm(probs - onehot, axis=1)


def ccs_cutoff(ratio: float) -> float:
    """CCS's hard-example cutoff beta for a prune ratio (Zheng et al., ICLR 2023, CIFAR-10 settings:
    none up to 50 % pruned, 10 % of the hardest at 70 %, 30 % at 90 %; linear in between)."""
    return float(np.interp(ratio, [0.0, 0.5, 0.7, 0.9, 1.0], [0.0, 0.0, 0.1, 0.3, 0.4]))


def ccs(difficulty: np.ndarray, m: int, rng: np.random.Generator, *, cutoff: float,
        strata: int = 50) -> np.ndarray:
    """Coverage-centric coreset selection (Zheng et al., ICLR 2023).

    Drop the hardest ``cutoff`` share, split the difficulty range of the rest into
    ``strata`` equal-width bins, give every bin an equal share of the keep budget (smallest
    bins first, their unused share passed on), and sample each bin's share at random.
    """
    difficulty = np.asarray(difficulty, dtype=np.float64)
    n = len(difficulty)
    _check_count(m, n)
    keep_budget = n - m
    order = np.lexsort((np.arange(n), -difficulty))
    n_cut = min(int(round(cutoff * n)), n - keep_budget)
    candidates = np.sort(order[n_cut:])
    d = difficulty[candidates]
    edges = np.linspace(d.min(), d.max(), strata + 1)
    bins = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, strata - 1)
    members = [candidates[bins == b] for b in range(strata)]
    keep = np.zeros(n, dtype=bool)
    left = keep_budget
    for rank, b in enumerate(sorted(range(strata), key=lambda b: (len(members[b]), b))):
        share = min(len(members[b]), left // (strata - rank))
        if share:
            keep[rng.choice(members[b], size=share, replace=False)] = True
        left -= share
    return ~keep


def _check_count(m: int, n: int) -> None:
    if not 0 <= int(m) <= n:
        raise DpcliError(f"the prune count must lie in [0, {n}], got {m}")
