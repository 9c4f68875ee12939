"""The solver registry and the device backend: names, errors, a new solver, torch against numpy."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from dpcli.errors import DpcliError
from dpcli.select import coverage, linalg
from dpcli.select import solvers as selection
from dpcli.select.registry import SOLVERS
from dpcli.select.solvers import Solver

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _S(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * rng.lognormal(0, 1, (n, 1))).astype(np.float32)


def _norm(S: np.ndarray, mask: np.ndarray) -> float:
    return float(np.linalg.norm(S[mask].astype(np.float64).sum(0)))


# ---------------------------------------------------------------------------------------------
# Registry


def test_solver_names_are_listed_without_importing_any_solver():
    code = (
        "import sys; from dpcli.select.registry import SOLVERS; print(','.join(SOLVERS)); "
        "print(any(m.startswith('dpcli.select.solvers') for m in sys.modules)); print('numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["anneal,brute,swap", "False", "False"]


def test_unknown_solver_is_one_line_with_the_closest_name():
    S = _S(30, 3, 0)
    with pytest.raises(
        DpcliError,
        match=r"unknown --solver 'swp' \(did you mean 'swap'\?\); choose one of "
        r"anneal, brute, swap",
    ):
        selection.minimize_norm(S, 5, solver="swp")
    with pytest.raises(DpcliError, match="unknown --solver"):
        selection.maximize_pruned(S, 1.0, solver="gurobi")


def test_a_new_solver_registers_by_subclassing_and_is_certified_like_the_others(monkeypatch):
    """A subclass with a name is what ``--solver NAME`` finds; its mask is recounted, not trusted."""
    monkeypatch.setattr(SOLVERS, "_items", dict(SOLVERS._items))

    class FirstRows(Solver):
        name = "first-rows"

        def cardinality(self, rows, q, m, clock, rng, proposals=None):
            return np.arange(rows.n) < m, m

        def epsilon(self, rows, q, eps, clock, rng):
            return np.arange(rows.n) < 4, 4

    assert "first-rows" in SOLVERS and SOLVERS.get("first-rows") is FirstRows
    S = _S(40, 5, 1)
    sel = selection.minimize_norm(S, 7, solver="first-rows")
    assert sel.solver == "first-rows" and np.flatnonzero(sel.pruned).tolist() == list(range(7))
    assert sel.norm == pytest.approx(_norm(S, np.arange(40) < 7), rel=1e-12)
    eps = _norm(S, np.arange(40) < 4)
    assert selection.maximize_pruned(S, eps, solver="first-rows").n_pruned == 4
    with pytest.raises(DpcliError, match="exceeds epsilon"):  # the same set, refused under a smaller bound
        selection.maximize_pruned(S, 0.5 * eps, solver="first-rows")


def test_brute_refuses_large_problems_by_its_own_limit():
    with pytest.raises(DpcliError, match="at most 20 samples, got 21; use --solver swap"):
        selection.minimize_norm(_S(21, 2, 0), 3, solver="brute")


# ---------------------------------------------------------------------------------------------
# The backend: numpy on the CPU, torch elsewhere (a torch tensor on the CPU takes the torch path)


@pytest.mark.parametrize("d", [6, 1500])  # float64 Gram blocks on the CPU up to EXACT_MAX_D, float32 above
def test_rows_primitives_match_float64_references_on_both_backends(d):
    rng = np.random.default_rng(2)
    S = _S(300, d, 3)
    S64 = S.astype(np.float64)
    x = rng.standard_normal(d)
    idx = rng.choice(300, 40, replace=False)
    for rows in (linalg.Rows(S), linalg.Rows(torch.from_numpy(S))):
        tol = 1e-12 if rows.rel_err < 1e-9 else 1e-5
        scale = np.abs(S64).max() ** 2 * d
        np.testing.assert_allclose(rows.matvec(x), S64 @ x, rtol=1e-5, atol=1e-5 * np.abs(S64 @ x).max())
        np.testing.assert_allclose(rows.gram(idx), S64[idx] @ S64[idx].T, rtol=tol, atol=tol * scale)
        np.testing.assert_allclose(rows.sum_rows(idx), S64[idx].sum(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rows.sq_norms(), (S64**2).sum(1), rtol=1e-12)
        np.testing.assert_allclose(rows.take(idx), S64[idx], rtol=0, atol=0)
        mask = rng.random(300) < 0.3
        assert rows.norm(mask) == pytest.approx(np.linalg.norm(S64[mask].sum(0)), rel=1e-12)


def test_a_reused_block_multiplies_only_new_rows_and_equals_a_fresh_gram():
    """Successive pools share rows: the Gram block built from the previous one must equal X X^T."""
    rng = np.random.default_rng(4)
    S = _S(500, 2000, 5)
    S64 = S.astype(np.float64)
    for rows in (linalg.Rows(S), linalg.Rows(torch.from_numpy(S))):
        first = rows.block(np.sort(rng.choice(500, 120, replace=False)))
        P = np.concatenate(
            [
                rng.choice(first.P, 90, replace=False),
                rng.choice(np.setdiff1d(np.arange(500), first.P), 30, replace=False),
            ]
        )
        nxt = rows.block(P, first)
        assert sorted(nxt.P.tolist()) == sorted(P.tolist()) and set(nxt.P[:90]) <= set(first.P)
        X = S64[nxt.P]
        np.testing.assert_allclose(nxt.G, X @ X.T, rtol=1e-5, atol=1e-5 * np.abs(X @ X.T).max())
        np.testing.assert_allclose(nxt.dot(np.ones(2000)), X.sum(1), rtol=1e-5, atol=1e-3)
        assert rows.block(nxt.P, nxt) is nxt  # the same pool again: nothing recomputed


def test_the_torch_backend_solves_as_well_as_numpy():
    """The same solver code on torch (a tensor on the CPU) and on numpy: both valid, norms within rounding
    of each other's quality, both far below a random set."""
    S = _S(1500, 12, 6)
    m = 500
    rand = _norm(S, np.random.default_rng(0).permutation(1500) < m)
    a = selection.minimize_norm(S, m, seed=1)
    b = selection.minimize_norm(torch.from_numpy(S), m, seed=1)
    assert a.n_pruned == b.n_pruned == m
    assert b.norm == pytest.approx(_norm(S, b.pruned), rel=1e-9)
    assert max(a.norm, b.norm) < rand / 100 and b.norm <= 2.0 * a.norm + 1e-9


def test_coverage_columns_are_the_same_on_torch_and_numpy():
    """The covered solve's matrix pieces written through torch equal the numpy ones."""
    rng = np.random.default_rng(7)
    n, G = 50, 4
    ginv = rng.integers(0, G, n)
    base = rng.standard_normal(G)
    a, b = np.zeros((n, G)), torch.zeros((n, G), dtype=torch.float64)
    coverage._count_columns(a, ginv, 2.5, base)
    coverage._count_columns(b, ginv, 2.5, base)
    expected = base[None, :] + 2.5 * (np.arange(G)[None, :] == ginv[:, None])
    np.testing.assert_allclose(a, expected, rtol=1e-15)
    np.testing.assert_allclose(b.numpy(), expected, rtol=1e-15)
    vals = rng.standard_normal((7, 3))
    rows = rng.choice(n, 7, replace=False)
    coverage._put(a, rows, slice(1, 4), vals)
    coverage._put(b, rows, slice(1, 4), vals)
    np.testing.assert_allclose(b.numpy(), a, rtol=1e-15)
    Sf = _S(n, 6, 8)
    counts = np.bincount(ginv, minlength=G) // 2
    lam_np = coverage._penalty_weight(Sf, ginv, counts, 0)
    assert coverage._penalty_weight(torch.from_numpy(Sf), ginv, counts, 0) == pytest.approx(lam_np, rel=1e-12)
    mask = np.zeros(n, bool)
    mask[: counts.sum()] = True
    fixed = coverage._repair_counts(Sf, mask.copy(), ginv, counts)
    assert np.array_equal(coverage._repair_counts(torch.from_numpy(Sf), mask.copy(), ginv, counts), fixed)
    assert np.array_equal(np.bincount(ginv[fixed], minlength=G), counts)


@cuda
def test_cuda_solve_and_covered_solve_match_the_cpu():
    S = _S(3000, 300, 9)
    labels = np.random.default_rng(9).integers(0, 5, 3000)
    m = 900
    cpu = selection.minimize_norm(S, m)
    gpu = selection.minimize_norm(S, m, device="cuda")
    assert gpu.n_pruned == m and gpu.norm == pytest.approx(_norm(S, gpu.pruned), rel=1e-9)
    assert gpu.norm <= 1.5 * cpu.norm
    cov = coverage.Coverage(balance=True)
    pc = coverage.minimize_norm_covered(S, m, labels, None, cov, device="cuda")
    assert pc.sum() == m
    for c in range(5):
        assert pc[labels == c].sum() in (np.floor(m * np.mean(labels == c)), np.ceil(m * np.mean(labels == c)))
    eps = 1.5 * cpu.norm
    e = selection.maximize_pruned(S, eps, device="cuda")
    assert _norm(S, e.pruned) <= eps and e.n_pruned >= m


# ---------------------------------------------------------------------------------------------
# Memory: an S given as a float32 .npy is read through a memory map, not copied


def test_an_external_float32_npy_S_is_mapped_and_checked_not_copied(tmp_path):
    import tracemalloc

    from dpcli.data.embeddings import load_external_S

    S = _S(12000, 512, 10)  # 24.6 MB: three row chunks of the finiteness check
    np.save(tmp_path / "S.npy", S)
    tracemalloc.start()
    got, _ = load_external_S(tmp_path / "S.npy")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(got, S) and not got.flags.writeable
    assert peak < S.nbytes / 3, (peak, S.nbytes)  # chunk temporaries of the finiteness check only
    bad = S.copy()
    bad[[5, 11000], 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(DpcliError, match="2 rows with NaN or inf"):
        load_external_S(tmp_path / "bad.npy")
    np.save(tmp_path / "S64.npy", S.astype(np.float64))  # another precision: copied to float32 as before
    got64, _ = load_external_S(tmp_path / "S64.npy")
    assert got64.dtype == np.float32 and got64.flags.writeable and np.array_equal(got64, S)


def test_api_prune_checks_S_by_row_chunks_and_refuses_nan(tmp_path, monkeypatch):
    """dpcli.api.prune on a memory-mapped S: the finiteness check streams (no n x d temporary), and a NaN
    anywhere is one clear error."""
    import tracemalloc

    import dpcli.api as dp
    import dpcli.select.base as base

    S = _S(12000, 512, 11)
    np.save(tmp_path / "S.npy", S)
    mapped = np.load(tmp_path / "S.npy", mmap_mode="r")
    monkeypatch.setattr(base, "select", lambda cfg, ctx: (np.arange(ctx.n) < 10, "first-10"))
    tracemalloc.start()
    sel = dp.prune(mapped, prune_count=10, method="optimization")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sel.norm == pytest.approx(_norm(S, np.arange(12000) < 10), rel=1e-12)
    assert peak < S.nbytes / 3, (peak, S.nbytes)
    S[9000, 100] = np.inf
    with pytest.raises(DpcliError, match="NaN or inf"):
        dp.prune(S, prune_count=10, method="optimization")
