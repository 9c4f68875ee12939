"""The influence objective under coverage constraints: what makes it win at small scale.

Minimizing ``||sum_W S_i||`` alone prefers easy samples (their influence is small), so
the kept set drifts to the hard end and, at high prune ratios, to a few classes; on
scarce data that costs accuracy (see docs/benchmarks.md).  Here the solver keeps the
objective but must prune, in every group, the same share as the whole: groups are the
classes (``balance``) crossed with ``strata`` quantile bins of a difficulty score, and the
hardest ``cutoff`` share (of each class under ``balance``) can be pruned up front (CCS's hard
cutoff).  Counts are allocated per class first, then per stratum (:func:`allocate`).  The kept set then
covers the classes and the difficulty distribution like a stratified random sample, and
inside each stratum the solver picks the samples whose influences cancel.

The count constraints enter the unchanged swap solver as extra columns: column g holds
``lam * (1[i in g] - c_g / m)``, whose sum over any ``m``-subset is ``lam`` times that
group's count error, so with ``lam`` large a violated count costs more than any norm
gain; the rare leftover violation is repaired by best pairwise moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dpcli.env import solve_budget
from dpcli.errors import DpcliError
from dpcli.select import solvers as selection
from dpcli.select.linalg import Rows, device_of, masked_sum, row_step
from dpcli.select.scoring import proportional_counts

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Coverage:
    balance: bool = False  # per-class prune counts
    strata: int = 1  # difficulty quantile bins (per class when balance)
    cutoff: float = 0.0  # share of all samples, the hardest, pruned before solving

    def validate(self) -> "Coverage":
        if isinstance(self.strata, bool) or int(self.strata) != self.strata or self.strata < 1:
            raise DpcliError(f"--strata must be an integer >= 1, got {self.strata}")
        if not (0.0 <= self.cutoff < 1.0):
            raise DpcliError(f"--hard-cutoff must lie in [0, 1), got {self.cutoff}")
        return self


_FEATURE_ROWS = 8192


def covered_bytes(rows: int, d: int, extra: int, itemsize: int) -> int:
    """Size of the covered solve's matrix: S's rows plus one column per count group and feature."""
    return int(rows) * (int(d) + int(extra)) * int(itemsize)


def count_columns(classes: int, balance: bool, strata: int) -> int:
    """Count-constraint columns of a covered solve: one per class (if balanced) x stratum, none for one group."""
    groups = (int(classes) if balance else 1) * int(strata)
    return groups if groups > 1 else 0


def check_budget(rows: int, d: int, group_cols: int, feature_cols: int, itemsize: int) -> None:
    """One clear line, before anything is allocated, when the covered solve would pass its budget.

    The count and feature constraints are dense columns (one per class x stratum, one per class x
    feature), so they grow with the number of classes: 100 classes x 10 strata x 160,000 rows is
    0.6 GB, and feature matching with 32 features adds 2 GB more.
    """
    need, budget = covered_bytes(rows, d, group_cols + feature_cols, itemsize), solve_budget()
    if need > budget:
        raise DpcliError(
            f"the covered solve needs {need / 2**30:.2f} GiB ({rows:,} rows x ({d:,} of S + {group_cols:,} count + "
            f"{feature_cols:,} feature columns)), above DPCLI_SOLVE_BUDGET = {budget / 2**30:.2f} GiB; use fewer "
            f"--strata, drop --match-features or --balance, or raise DPCLI_SOLVE_BUDGET"
        )


def solve_dtype(S: np.ndarray) -> np.dtype:
    """The precision the covered solve works in: S's own float type, else float64."""
    return np.dtype(S.dtype if S.dtype in (np.float32, np.float64) else np.float64)


def groups_of(labels: np.ndarray, difficulty: np.ndarray | None, cov: Coverage) -> np.ndarray:
    """Group id per sample: class (if balanced) x difficulty quantile bin (within the class)."""
    return _grouped(_parts(labels, cov.balance), difficulty, cov.strata)


def _parts(labels: np.ndarray, balance: bool) -> np.ndarray:
    """The class index of every sample under ``balance``, else one part."""
    return np.unique(labels, return_inverse=True)[1].astype(np.int64) if balance else np.zeros(len(labels), np.int64)


def _grouped(parts: np.ndarray, difficulty: np.ndarray | None, strata: int) -> np.ndarray:
    """``part * strata + bin``: the bin of each sample's difficulty among its part's quantiles."""
    if strata <= 1:
        return parts
    if difficulty is None:
        raise DpcliError("--strata needs a difficulty score (training dynamics or the influence artifact's loss)")
    bins = np.zeros(len(parts), dtype=np.int64)
    for p in np.unique(parts):
        idx = np.flatnonzero(parts == p)
        order = idx[np.lexsort((idx, difficulty[idx]))]
        bins[order] = (np.arange(len(order)) * strata) // len(order)
    return parts * strata + bins


def class_quotas(sizes: np.ndarray, m: int) -> np.ndarray:
    """Prune counts per class: each class its share of ``m`` (largest remainder, summing to ``m``), and none
    emptied while ``m`` leaves every class a sample (a class of 1 at 50 % keeps its sample)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return proportional_counts(sizes, m, caps=sizes - 1 if m <= int(sizes.sum()) - len(sizes) else sizes)


def allocate(
    labels: np.ndarray, difficulty: np.ndarray | None, cov: Coverage, m: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Who is pruned up front and how many of the rest each group prunes: ``(forced, ginv, counts)``.

    Under ``balance`` every class gets its quota first (:func:`class_quotas`); the hard cutoff then
    prunes the hardest ``cutoff`` share of each class (never more than its quota), and the class's
    remaining quota is split over its strata.  Rounding over class x stratum groups at once would let
    a rare class drift from its share (or vanish when its groups hold ~3 samples).  ``ginv``: the group
    (0..G-1, each non-empty) of every sample not forced, in index order; ``counts``: their prune counts.
    """
    n = len(labels)
    parts = _parts(labels, cov.balance)
    sizes = np.bincount(parts)
    quotas = class_quotas(sizes, m) if cov.balance else np.array([m])
    forced = np.zeros(n, dtype=bool)
    if cov.cutoff > 0:
        if difficulty is None:
            raise DpcliError("--hard-cutoff needs a difficulty score")
        for p, idx in enumerate(_members(parts, len(sizes))):
            k = min(int(round(cov.cutoff * len(idx))), int(quotas[p]))
            forced[idx[np.lexsort((idx, -difficulty[idx]))[:k]]] = True
    free = np.flatnonzero(~forced)
    groups = _grouped(parts[free], None if difficulty is None else difficulty[free], cov.strata)
    gid, ginv, gsize = np.unique(groups, return_inverse=True, return_counts=True)
    left = quotas - np.bincount(parts[forced], minlength=len(sizes))
    counts = np.zeros(len(gid), dtype=np.int64)
    owner = gid // max(cov.strata, 1)  # the class (or the one part) of each group
    for p in range(len(sizes)):
        mine = np.flatnonzero(owner == p)
        counts[mine] = proportional_counts(gsize[mine], int(left[p]))
    return forced, ginv.astype(np.int64), counts


def _members(parts: np.ndarray, count: int) -> list[np.ndarray]:
    order = np.argsort(parts, kind="stable")
    return np.split(order, np.cumsum(np.bincount(parts, minlength=count))[:-1])


def minimize_norm_covered(
    S: np.ndarray,
    m: int,
    labels: np.ndarray,
    difficulty: np.ndarray | None,
    cov: Coverage,
    *,
    seed: int = 0,
    solver: str = "swap",
    time_budget: float | None = None,
    progress=None,
    features: np.ndarray | None = None,
    proposals: int | None = None,
    device=None,
) -> np.ndarray:
    """Eq. 4 with per-group counts: the pruned mask (``m`` True) of smallest ``||sum S_i||``.

    With ``features`` (penultimate features, n x D) the objective also asks the pruned samples
    of every group to have the group's mean feature, so the kept set keeps each class's and
    stratum's feature mean (herding's criterion) while the influence still cancels.  With a
    ``device`` other than the CPU the augmented matrix is built there (float32) and solved there.
    """
    cov.validate()
    S = np.asarray(S)
    n = S.shape[0]
    if not 0 <= m <= n:
        raise DpcliError(f"the prune count must lie in [0, {n}], got {m}")
    forced, ginv, counts = allocate(labels, difficulty, cov, m)
    free = np.flatnonzero(~forced)
    m_free = m - int(forced.sum())
    pruned = forced.copy()
    if m_free == 0:
        return pruned
    if m_free == len(free):
        pruned[free] = True
        return pruned
    gid = np.arange(len(counts))
    feature_cols = 0 if features is None else len(np.unique(labels[free])) * np.asarray(features).shape[1]
    group_cols = len(gid) if len(gid) > 1 else 0
    check_budget(len(free), S.shape[1], group_cols, feature_cols, solve_dtype(S).itemsize)
    Sa = _augmented(S, free, forced, m_free, extra=group_cols + feature_cols, device=device)
    d = S.shape[1]
    Sf = Sa[:, :d]  # a view: the group and feature columns follow
    col = d
    if features is not None:
        _write_feature_block(
            Sa[:, col : col + feature_cols], np.asarray(features)[free], labels[free], ginv, Sf, counts, seed
        )
        col += feature_cols
    if len(gid) > 1:
        lam = _penalty_weight(Sf, ginv, counts, seed)
        _count_columns(Sa[:, col:], ginv, lam, -lam * counts / m_free)
    sel = selection.minimize_norm(
        Sa,
        m_free,
        solver=solver,
        time_budget=time_budget,
        seed=seed,
        progress=progress,
        proposals=proposals,
        device=device,
    )
    mask = _repair_counts(Sf, sel.pruned.copy(), ginv, counts)
    pruned[free[mask]] = True
    return pruned


def _augmented(S: np.ndarray, free: np.ndarray, forced: np.ndarray, m_free: int, extra: int, device=None):
    """``[S_free + offset / m_free, 0...]`` in S's precision (float32 on a device), filled by byte-sized chunks.

    One (n_free, d + extra) array is the only copy of S the covered solve makes (float32 for a float32
    S), so its peak is about twice S rather than the three float64 copies an hstack would build.  On a
    device other than the CPU it is a torch tensor there, and S crosses once.
    """
    dtype = solve_dtype(S)
    d = S.shape[1]
    offset = masked_sum(S, forced) if forced.any() else np.zeros(d)
    shift = offset / m_free  # |W| = m_free: the offset sums to the forced part
    out: np.ndarray | torch.Tensor
    if device_of(device) == "cpu":
        out = np.zeros((len(free), d + extra), dtype=dtype)
    else:
        import torch

        out = torch.zeros((len(free), d + extra), dtype=torch.float32, device=device)
    step = row_step(d)
    for a in range(0, len(free), step):
        _put(out, slice(a, a + step), slice(0, d), S[free[a : a + step]] + shift.astype(dtype))
    return out


def _put(out, rows: "slice | np.ndarray", cols: slice, values: np.ndarray) -> None:
    """``out[rows, cols] = values`` for a numpy array or a torch tensor (values from the host)."""
    if isinstance(out, np.ndarray):
        out[rows, cols] = values
        return
    import torch

    r = rows if isinstance(rows, slice) else torch.as_tensor(rows, device=out.device)
    out[r, cols] = torch.as_tensor(np.ascontiguousarray(values), dtype=out.dtype, device=out.device)


def _count_columns(out, ginv: np.ndarray, lam: float, base: np.ndarray) -> None:
    """``out[i, g] = base[g] + lam 1[g = ginv[i]]``: the count constraints' columns, where ``out`` lives."""
    n = len(ginv)
    if isinstance(out, np.ndarray):
        out[:] = base
        out[np.arange(n), ginv] += lam
        return
    import torch

    out.copy_(torch.as_tensor(base, dtype=out.dtype, device=out.device).expand(n, -1))
    out[torch.arange(n, device=out.device), torch.as_tensor(ginv, device=out.device)] += lam


def maximize_pruned_covered(
    S: np.ndarray,
    epsilon: float,
    labels: np.ndarray,
    difficulty: np.ndarray | None,
    cov: Coverage,
    *,
    seed: int = 0,
    solver: str = "swap",
    device=None,
) -> np.ndarray:
    """Eq. 3 with per-group counts: the largest covered prune set with ``||sum S_i|| <= epsilon``
    (bisection on the count; every probe is a covered Eq. 4 solve)."""
    n = S.shape[0]

    def solve(m: int) -> np.ndarray | None:
        p = minimize_norm_covered(S, m, labels, difficulty, cov, seed=seed, solver=solver, device=device)
        return p if selection.subset_norm(S, p) <= epsilon else None

    best = np.zeros(n, dtype=bool)
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        p = solve(mid)
        if p is not None:
            best, lo = p, mid
        else:
            hi = mid - 1
    return best


def _write_feature_block(
    out: np.ndarray, F: np.ndarray, labels: np.ndarray, ginv: np.ndarray, Sf: np.ndarray, counts: np.ndarray, seed: int
) -> None:
    """Fill ``out`` (zeros, n x C*D) with per-class column blocks of the features centred on their group's
    mean, scaled so that at a stratified random start they weigh as much as the influence part.

    Written class by class into the solve's own matrix: the whole block as a float64 array, then scaled,
    was two n x C x D float64 copies (8 GB at 160,000 rows of 100 classes x 32 features).
    """
    dim = F.shape[1]
    means = np.zeros((int(ginv.max()) + 1, dim))  # ginv: 0..G-1, every group non-empty
    for g in range(len(means)):
        means[g] = np.asarray(F[ginv == g], dtype=np.float64).mean(0)
    classes, cls = np.unique(labels, return_inverse=True)
    start = _stratified_start(ginv, counts, seed)

    def centred(rows: np.ndarray) -> np.ndarray:
        return np.asarray(F[rows], dtype=np.float64) - means[ginv[rows]]

    got = 0.0
    for c in range(len(classes)):
        got += float(np.sum(centred(np.flatnonzero(start & (cls == c))).sum(0) ** 2))
    ref = np.linalg.norm(Rows(Sf).masked_sum(start))
    scale = ref / np.sqrt(got) if got > 0 else 1.0
    for c in range(len(classes)):
        rows = np.flatnonzero(cls == c)
        for a in range(0, len(rows), _FEATURE_ROWS):
            part = rows[a : a + _FEATURE_ROWS]
            _put(out, part, slice(c * dim, (c + 1) * dim), centred(part) * scale)


def _stratified_start(ginv: np.ndarray, counts: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    start = np.zeros(len(ginv), dtype=bool)
    for g, c in enumerate(counts):
        idx = np.flatnonzero(ginv == g)
        start[rng.choice(idx, size=int(c), replace=False)] = True
    return start


def _penalty_weight(Sf, ginv: np.ndarray, counts: np.ndarray, seed: int) -> float:
    """Large enough that one unit of count error costs more than any swap can gain."""
    start = _stratified_start(ginv, counts, seed)
    rows = Rows(Sf)
    r = float(np.sqrt(rows.sq_norms().max()))
    v0 = float(np.linalg.norm(rows.masked_sum(start)))
    return 3.0 * (r + v0) + 1e-12


def _repair_counts(Sf, mask: np.ndarray, ginv: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Move samples between over- and under-pruned groups, each time the move that keeps the norm lowest."""
    rows = Rows(Sf)
    v = rows.masked_sum(mask)
    q: np.ndarray | None = None
    while True:
        have = np.bincount(ginv[mask], minlength=len(counts))
        over, under = np.flatnonzero(have > counts), np.flatnonzero(have < counts)
        if len(over) == 0:
            return mask
        q = rows.sq_norms() if q is None else q
        out_idx = np.flatnonzero(mask & np.isin(ginv, over))
        in_idx = np.flatnonzero(~mask & (ginv == under[0]))
        # ||v - S_i + S_j||^2 = const - 2 v.S_i + 2 v.S_j + ||S_i - S_j||^2; pick i then j greedily
        i = int(out_idx[np.argmax(2 * rows.dot_rows(out_idx, v) - q[out_idx])])
        w = v - rows.row(i)
        j = int(in_idx[np.argmin(2 * rows.dot_rows(in_idx, w) + q[in_idx])])
        mask[i], mask[j] = False, True
        v = w + rows.row(j)
