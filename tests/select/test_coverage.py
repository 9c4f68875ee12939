"""The covered influence objective: exact group counts, and the optimum of the constrained
problem (checked by enumerating every feasible subset)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dpcli.errors import DpcliError
from dpcli.select import coverage
from dpcli.select import solvers as selection
from dpcli.select.coverage import Coverage, groups_of, maximize_pruned_covered, minimize_norm_covered
from tests.select.quotas import class_quotas as quotas_of
from tests.select.quotas import largest_remainder, quantile_bins


def _enumerate_optimum(S, groups, counts, forced):
    """min ||sum S_W|| over W = forced + counts[g] free samples of every group g."""
    per_group = []
    for g, c in enumerate(counts):
        idx = [i for i in np.flatnonzero(groups == g) if not forced[i]]
        per_group.append(list(itertools.combinations(idx, c)))
    best = np.inf
    base = S[forced].sum(0)
    for combo in itertools.product(*per_group):
        idx = [i for part in combo for i in part]
        best = min(best, np.linalg.norm(base + S[idx].sum(0)))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_brute_solve_is_the_constrained_optimum(seed):
    rng = np.random.default_rng(seed)
    S = rng.normal(size=(14, 5)) * rng.lognormal(size=(14, 1))
    labels = np.repeat([0, 1], 7)
    pruned = minimize_norm_covered(S, 6, labels, None, Coverage(balance=True), solver="brute")
    assert pruned.sum() == 6 and pruned[:7].sum() == 3 and pruned[7:].sum() == 3
    opt = _enumerate_optimum(S, labels, [3, 3], np.zeros(14, bool))
    assert selection.subset_norm(S, pruned) == pytest.approx(opt, rel=1e-9)


def test_swap_solve_meets_counts_and_is_near_optimal():
    rng = np.random.default_rng(7)
    S = rng.normal(size=(16, 6))
    labels = np.repeat([0, 1, 2, 3], 4)
    pruned = minimize_norm_covered(S, 8, labels, None, Coverage(balance=True))
    assert [int(pruned[labels == c].sum()) for c in range(4)] == [2, 2, 2, 2]
    opt = _enumerate_optimum(S, labels, [2, 2, 2, 2], np.zeros(16, bool))
    assert selection.subset_norm(S, pruned) <= opt * 1.05 + 1e-12


def _expected_counts(labels, diff, m, strata, cutoff):
    """Per (class, stratum) prune counts and the forced set, from :mod:`tests.select.quotas` alone: class quotas
    first, then the hardest ``cutoff`` share of each class, then each class's rest split over its strata."""
    classes = sorted(set(labels.tolist()))
    members = {c: [i for i in range(len(labels)) if labels[i] == c] for c in classes}
    quotas = dict(zip(classes, quotas_of([len(members[c]) for c in classes], m)))
    forced, expected = set(), {}
    for c in classes:
        hardest = sorted(members[c], key=lambda i: (-diff[i], i))[: min(round(cutoff * len(members[c])), quotas[c])]
        forced |= set(hardest)
        free = [i for i in members[c] if i not in forced]
        bins = quantile_bins([diff[i] for i in free], strata)
        sizes = [bins.count(b) for b in range(strata)]
        for b, k in enumerate(largest_remainder(sizes, quotas[c] - len(hardest))):
            expected[c, b] = (k, [i for i, bb in zip(free, bins) if bb == b])
    return quotas, forced, expected


@pytest.mark.parametrize("cutoff", [0.0, 0.1])
def test_each_class_then_each_stratum_prunes_its_exact_share(cutoff):
    """Classes of 210/114/53/21/2 at 50 % with 10 strata: every class prunes its largest-remainder share of the
    count (105/57/27/10/1), the hard cutoff takes each class's hardest, and each stratum its share of the rest.
    Rounding over class x stratum groups at once pruned 9 of 21 and 0 of 2."""
    rng = np.random.default_rng(4)
    labels = rng.permutation(np.repeat(np.arange(5), [210, 114, 53, 21, 2]))
    n, m = len(labels), 200
    S = rng.normal(size=(n, 6)) / n
    diff = rng.random(n)
    pruned = minimize_norm_covered(S, m, labels, diff, Coverage(balance=True, strata=10, cutoff=cutoff))
    quotas, forced, expected = _expected_counts(labels, diff, m, 10, cutoff)
    assert list(quotas.values()) == [105, 57, 27, 10, 1]
    assert [int(pruned[labels == c].sum()) for c in range(5)] == [105, 57, 27, 10, 1]
    assert pruned[sorted(forced)].all() and len(forced) == (0 if cutoff == 0 else 21 + 11 + 5 + 2 + 0)
    for (c, b), (k, free) in expected.items():
        assert int(pruned[free].sum()) == k, (c, b)
    # the objective still acts: better than a random choice with the same counts
    rand = np.zeros(n, bool)
    rand[sorted(forced)] = True
    for k, free in expected.values():
        rand[rng.choice(np.array(free, dtype=int), size=k, replace=False)] = True
    assert selection.subset_norm(S, pruned) < 0.5 * selection.subset_norm(S, rand)


def test_strata_of_three_samples_never_empty_a_class():
    """--balance --strata 10 at 60 %: a class of 3 is 3 groups of one sample; rounded together they were all
    pruned.  Per class first, each small class prunes its share and keeps the rest."""
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), [200, 3, 3, 3])
    n = len(labels)
    S, diff = rng.normal(size=(n, 5)), rng.random(n)
    m = int(0.6 * n)
    pruned = minimize_norm_covered(S, m, labels, diff, Coverage(balance=True, strata=10))
    assert [int(pruned[labels == c].sum()) for c in range(4)] == quotas_of([200, 3, 3, 3], m) == [119, 2, 2, 2]
    # a class of one at 50 % keeps its sample (its share, 0.5, ties 1.5's and wins on index); the count goes on
    assert largest_remainder([1, 3], 2) == [1, 1] and quotas_of([1, 3], 2) == [0, 2]
    one = np.array([0, 1, 1, 1])
    small = minimize_norm_covered(S[:4], 2, one, None, Coverage(balance=True))
    assert not small[0] and small.sum() == 2


def test_hard_cutoff_under_balance_is_per_class():
    """The hardest share of each class goes first, never a whole rare class whose samples are the hardest."""
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], [60, 4])
    diff = np.concatenate([rng.random(60), [5.0, 6.0, 7.0, 8.0]])  # the rare class is the hardest
    S = rng.normal(size=(64, 4))
    pruned = minimize_norm_covered(S, 32, labels, diff, Coverage(balance=True, cutoff=0.3))
    assert [int(pruned[labels == c].sum()) for c in (0, 1)] == [30, 2]
    hardest0 = np.argsort(-diff[:60])[:18]
    assert pruned[hardest0].all() and pruned[[62, 63]].all() and not pruned[[60, 61]].any()


def test_groups_are_quantile_bins_within_classes():
    labels = np.array([0] * 6 + [1] * 4)
    diff = np.array([5, 4, 3, 2, 1, 0, 9, 8, 7, 6], dtype=float)
    g = groups_of(labels, diff, Coverage(balance=True, strata=2))
    np.testing.assert_array_equal(g, [1, 1, 1, 0, 0, 0, 3, 3, 2, 2])


def test_epsilon_mode_is_the_largest_feasible_covered_count():
    rng = np.random.default_rng(9)
    S = rng.normal(size=(12, 4))
    labels = np.repeat([0, 1], 6)
    eps = 1.5
    cov = Coverage(balance=True)
    pruned = maximize_pruned_covered(S, eps, labels, None, cov, solver="brute")
    assert selection.subset_norm(S, pruned) <= eps
    m = int(pruned.sum())
    for bigger in range(m + 1, 13):  # no larger covered count is feasible
        p = minimize_norm_covered(S, bigger, labels, None, cov, solver="brute")
        assert selection.subset_norm(S, p) > eps


def test_feature_matching_keeps_each_group_mean():
    rng = np.random.default_rng(11)
    n, d = 300, 6
    S = rng.normal(size=(n, 4)) * 1e-3
    F = rng.normal(size=(n, d)) + rng.normal(size=(1, d))
    labels = np.repeat([0, 1, 2], 100)
    cov = Coverage(balance=True)
    with_f = minimize_norm_covered(S, 150, labels, None, cov, features=F)
    without = minimize_norm_covered(S, 150, labels, None, cov)

    def mean_gap(pruned):
        return sum(np.linalg.norm(F[(labels == c) & ~pruned].mean(0) - F[labels == c].mean(0)) for c in range(3))

    assert [int(with_f[labels == c].sum()) for c in range(3)] == [50, 50, 50]
    assert mean_gap(with_f) < 0.2 * mean_gap(without)
    # the influence part still counts: far below a random choice with the same counts
    rand = np.zeros(n, bool)
    for c in range(3):
        rand[rng.choice(np.flatnonzero(labels == c), 50, replace=False)] = True
    assert selection.subset_norm(S, with_f) < selection.subset_norm(S, rand)


def test_feature_block_equals_a_dense_construction():
    """Written class by class into the solve's matrix, the feature block equals the plain dense recipe:
    per-group centred features in their class's columns, scaled to the influence part's weight at the
    stratified start."""
    rng = np.random.default_rng(5)
    n, dim = 230, 3
    labels = rng.integers(0, 4, n)
    ginv = labels * 2 + rng.integers(0, 2, n)
    F = rng.normal(size=(n, dim)).astype(np.float32)
    Sf = rng.normal(size=(n, 5))
    counts = np.array([int(np.sum(ginv == g)) // 3 for g in range(8)])
    out = np.zeros((n, 4 * dim))
    coverage._write_feature_block(out, F, labels, ginv, Sf, counts, seed=3)

    centred = F.astype(np.float64).copy()
    for g in range(8):
        centred[ginv == g] -= F[ginv == g].astype(np.float64).mean(0)
    dense = np.zeros((n, 4 * dim))
    for i in range(n):
        dense[i, labels[i] * dim : (labels[i] + 1) * dim] = centred[i]
    start = coverage._stratified_start(ginv, counts, 3)
    dense *= np.linalg.norm(Sf[start].sum(0)) / np.linalg.norm(dense[start].sum(0))
    np.testing.assert_allclose(out, dense, rtol=1e-12, atol=1e-14)


def test_covered_solve_over_its_budget_fails_in_one_line_before_allocating(monkeypatch):
    rng = np.random.default_rng(6)
    n = 400
    S = rng.normal(size=(n, 8)).astype(np.float32)
    labels = np.repeat(np.arange(4), 100)
    diff, F = rng.random(n), rng.normal(size=(n, 5))
    cov = Coverage(balance=True, strata=3)
    need = n * (8 + 12 + 4 * 5) * 4  # 12 count columns (4 classes x 3 strata), 20 feature columns, float32
    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", str(need))
    assert minimize_norm_covered(S, 100, labels, diff, cov, features=F).sum() == 100
    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", str(need - 1))
    monkeypatch.setattr(coverage, "_augmented", lambda *a, **k: pytest.fail("allocated past the budget"))
    with pytest.raises(
        DpcliError,
        match=r"^the covered solve needs 0\.00 GiB \(400 rows x \(8 of S \+ 12 count \+ "
        r"20 feature columns\)\), above DPCLI_SOLVE_BUDGET",
    ) as err:
        minimize_norm_covered(S, 100, labels, diff, cov, features=F)
    assert "\n" not in str(err.value)


def test_cli_explicit_coverage_over_the_budget_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import h5py

    from tests.conftest import run_cli

    rng = np.random.default_rng(7)
    path = tmp_path / "S.h5"
    with h5py.File(path, "w") as f:
        f["S"] = rng.normal(size=(300, 6)).astype(np.float32)
        f["labels"] = np.repeat(np.arange(3), 100)
    args = ["prune", path, "--prune-ratio", "0.5", "--method", "optimization", "--balance", "--out", tmp_path / "m.h5"]
    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", "1K")
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == "" and not (tmp_path / "m.h5").exists()
    errors = [ln for ln in err.splitlines() if ln.startswith("dpcli: error:")]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1]
    assert errors[0].startswith(
        "dpcli: error: the covered solve needs 0.00 GiB (300 rows x (6 of S + 3 count + "
        "0 feature columns)), above DPCLI_SOLVE_BUDGET = 0.00 GiB"
    )
    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", "lots")
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err == "dpcli: error: DPCLI_SOLVE_BUDGET must be a size such as 512M or 2G, got 'lots'\n"
    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", "1M")
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert int((~f["keep"][()].astype(bool)).sum()) == 150
