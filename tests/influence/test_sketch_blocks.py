"""The sketch's R over more rows than one block: every block is its own Gaussian draw, so R's rows are
independent (blocks drawn from one seed would repeat rows and zero out ||v R|| for v = e_i - e_{i+block})."""

from __future__ import annotations

import numpy as np

from dpcli.influence.sketch import _R_BLOCK_ROWS, Sketch


def test_blocks_are_independent_draws_at_the_default_block_size():
    d, k = 2 * _R_BLOCK_ROWS + 5, 64  # three blocks, the last partial
    sk = Sketch(d, k, seed=3)
    R = sk.matrix()
    assert R.shape == (d, k) and sk.n_blocks == 3
    # rows a block apart: independent N(0, 1/k) vectors have dot ~ N(0, 1/k), so the mean of m such dots is
    # within 5 standard errors of 0; rows repeated across blocks give dots ~ 1
    for shift in (_R_BLOCK_ROWS, 2 * _R_BLOCK_ROWS):
        top = R[: d - shift]
        dots = np.einsum("ij,ij->i", top, R[shift:])
        assert abs(dots.mean()) < 5 / np.sqrt(k * len(dots)), (shift, dots.mean())
    # each row has squared norm ~ 1 (chi-square k / k) and the entries variance 1/k
    assert abs(np.einsum("ij,ij->i", R, R).mean() - 1) < 0.02 and abs(R.var() * k - 1) < 0.02


def test_projection_of_many_rows_matches_dense_and_preserves_norms():
    rng = np.random.default_rng(0)
    d, k, block = 50, 3000, 16  # four blocks
    sk = Sketch(d, k, seed=7, block_rows=block)
    rows = rng.normal(size=(20, d)).astype(np.float32)
    R = sk.matrix()
    np.testing.assert_allclose(sk.apply(rows), (rows.astype(np.float64) @ R).astype(np.float32), rtol=1e-5, atol=1e-5)
    # v = e_i - e_{i+block}: with independent blocks ||v R|| ~ sqrt(2); a repeated block gives 0
    v = np.zeros((block, d))
    v[np.arange(block), np.arange(block)] = 1.0
    v[np.arange(block), np.arange(block) + block] = -1.0
    ratio = np.linalg.norm(sk.apply(v), axis=1) / np.sqrt(2)
    assert np.all(np.abs(ratio - 1) < 0.1), ratio  # JL: P(|ratio - 1| > 0.1) <= 2 exp(-3000 * 0.01 / 8) = 0.05
    # the same seed draws the same R; another seed another
    assert np.array_equal(Sketch(d, k, seed=7, block_rows=block).matrix(), R)
    assert not np.allclose(Sketch(d, k, seed=8, block_rows=block).matrix(), R)
