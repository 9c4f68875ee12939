"""D2 pruning (Maharana, Yadav and Bansal, ICLR 2024): message passing over a kNN feature graph.

Reference: github.com/adymaharana/d2pruning @ bf1ea46 (``core/data/sampling.py::GraphDensitySampler``,
``core/data/Coreset.py``), in its README's CIFAR setting: the ``int(beta n)`` lowest-AUM samples are
cut first (``--hard-cutoff``, default as ``ccs``); the keep budget is split over the classes
(``bin_allocate``, uniform); per class, a k = 5 nearest-neighbour graph on the final features
(Euclidean, symmetrised) carries forward messages ``exp(-d_ij) max(s_j, 1e-7)`` with s = forgetting
events, node score ``sum_j + s_i``; greedy selection takes the highest node and sends reverse messages
``density_j -= exp(-gamma_r d_ij) density_sel`` (gamma_r = 0.1) to its graph neighbours.
"""

from __future__ import annotations

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.base import Context, Selector
from dpcli.select.methods.ccs import aum, resolve_cutoff
from dpcli.select.scoring import check_count

K = 5  # --n-neighbor in the README
GAMMA_R = 0.1  # --gamma (reverse message kernel) in the README
EPS = 1e-7


def forgetting_events(correct: np.ndarray) -> np.ndarray:
    """Correct -> wrong transitions between consecutive records, as the reference counts them (no
    special value for never-learned samples, unlike ``--method forgetting``)."""
    correct = np.asarray(correct)
    events = np.zeros(correct.shape[1])
    last = np.zeros(correct.shape[1], dtype=bool)  # the reference starts from "not correct"
    for e in range(correct.shape[0]):  # one step per epoch, vectorized over samples
        seen = correct[e] != 255
        now = correct[e] == 1
        events += seen & last & ~now
        last = np.where(seen, now, last)
    return events


def knn(X: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """The ``k`` nearest other rows of every row (n x k), by squared distances from BLAS in chunks."""
    sq = np.einsum("ij,ij->i", X, X)
    out = np.empty((len(X), k), dtype=np.int64)
    for s in range(0, len(X), chunk):
        d = sq[s : s + chunk, None] + sq[None, :] - 2.0 * (X[s : s + chunk] @ X.T)
        d[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf  # not its own neighbour
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        rows = np.arange(len(d))[:, None]
        out[s : s + chunk] = part[rows, np.lexsort((part, d[rows, part]), axis=1)]
    return out


def graph(X: np.ndarray, s: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The symmetrised kNN graph as CSR (indptr, neighbours, distances) and the forward-pass density."""
    n = len(X)
    nn = knn(X, k)
    i = np.concatenate([np.repeat(np.arange(n), k), nn.ravel()])
    j = np.concatenate([nn.ravel(), np.repeat(np.arange(n), k)])
    key = np.unique(i * n + j)  # an edge found from both ends is one edge
    i, j = key // n, key % n
    d = np.linalg.norm(X[i] - X[j], axis=1)  # exact, unsquared distances of the edges only
    w = np.exp(-d) * np.maximum(s[j], EPS)
    live = w > 0  # the reference finds neighbours as weight > 0: underflowed edges vanish
    i, j, d, w = i[live], j[live], d[live], w[live]
    density = np.bincount(i, weights=w, minlength=n) + s
    indptr = np.concatenate([[0], np.cumsum(np.bincount(i, minlength=n))])
    return indptr, j, d, density


def d2_greedy(X: np.ndarray, s: np.ndarray, budget: int, k: int = K, gamma_r: float = GAMMA_R) -> np.ndarray:
    """Indices of ``budget`` rows chosen by reverse message passing (ties: lowest index first)."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    s = np.asarray(s, dtype=np.float64)
    k = min(k, len(X) - 1)  # the reference keeps every sample of a class with <= k members
    if budget >= len(X) or k < 1:
        return np.arange(min(budget, len(X)))
    indptr, nbr, dist, density = graph(X, s, k)
    free = np.ones(len(X), dtype=bool)
    chosen = np.empty(budget, dtype=np.int64)
    for t in range(budget):  # inherently sequential: each choice lowers its neighbours
        sel = int(np.argmax(np.where(free, density, -np.inf)))
        a, b = indptr[sel], indptr[sel + 1]
        density[nbr[a:b]] -= np.exp(-dist[a:b] * gamma_r) * density[sel]
        free[sel] = False
        chosen[t] = sel
    return chosen


def bin_allocate_uniform(num: int, counts: np.ndarray) -> np.ndarray:
    """D2's class budgets: ascending class size, ``min(size, rest // non-empty classes left)``, then one
    more for each class with room, largest first, until the budget is spent."""
    counts = np.asarray(counts, dtype=np.int64)
    order = np.argsort(counts, kind="stable")
    sc = counts[order]
    budgets = np.zeros(len(sc), dtype=np.int64)
    rest = int(num)
    for i, c in enumerate(sc):  # one step per class
        if c:
            budgets[i] = min(int(c), rest // np.count_nonzero(sc[i:]))
            rest -= int(budgets[i])
    delta = int(num - budgets.sum())
    for i in range(len(sc) - 1, -1, -1):
        if delta == 0:
            break
        if budgets[i] < sc[i]:
            budgets[i] += 1
            delta -= 1
    out = np.zeros(len(sc), dtype=np.int64)
    out[order] = budgets
    return out


def d2_select(
    features: np.ndarray,
    labels: np.ndarray,
    importance: np.ndarray,
    hardness: np.ndarray,
    m: int,
    cutoff: float,
    k: int = K,
    gamma_r: float = GAMMA_R,
) -> np.ndarray:
    """The pruned mask: cut the ``int(cutoff n)`` lowest ``hardness`` (AUM), then per class graph selection."""
    n = len(labels)
    check_count(m, n)
    keep_n = n - m
    cut = min(int(cutoff * n), m)
    pool = np.argsort(hardness, kind="stable")[cut:]
    classes, inverse = np.unique(labels[pool], return_inverse=True)
    budgets = bin_allocate_uniform(keep_n, np.bincount(inverse, minlength=len(classes)))
    keep = np.zeros(n, dtype=bool)
    for c, b in enumerate(budgets):
        members = pool[inverse == c]
        keep[members[d2_greedy(features[members], importance[members], int(b), k, gamma_r)]] = True
    if keep.sum() != keep_n:
        raise DpcliError(f"D2 kept {int(keep.sum())} samples instead of {keep_n}")
    return ~keep


class D2(Selector):
    name = "d2"
    coverage = True
    auto_cutoff = True
    needs = frozenset({"features", "dynamics"})
    help = "D2 pruning: forgetting-weighted message passing on per-class kNN feature graphs, after an AUM cutoff"

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        assert m is not None  # no epsilon mode: base.select refuses --epsilon for it
        dyn = ctx.dynamics()
        cutoff = resolve_cutoff(self.cfg, m, ctx.n)
        pruned = d2_select(
            ctx.features(),
            ctx.labels,
            forgetting_events(dyn.correct),
            aum(dyn.require("margin", "--method d2")),
            m,
            cutoff,
        )
        return pruned, f"d2(k={K}, gamma_r={GAMMA_R}, cutoff={cutoff:g})"
