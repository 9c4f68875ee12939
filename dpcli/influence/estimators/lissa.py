"""lissa: the paper's stochastic Neumann series, with a convergence check it reports.

LiSSA's recursion ``h <- v + (I - (H_B + lambda I)/scale) h`` converges along a Hessian direction of
curvature ``mu`` like ``1 - (1 - (mu + lambda)/scale)^depth``: with the defaults (depth 1000, scale 10)
directions with ``mu + lambda`` below about ``scale / depth = 0.01`` reach only a fraction of their
value, so LiSSA under-estimates S there (a bias, not noise).  After solving, this estimator therefore
re-solves a seeded block of rows by conjugate gradients to 1e-8 and records the relative error
``||S_lissa - S_cg|| / ||S_cg||`` per row (median and max) in ``influence.h5``; above ``WARN_ERROR`` it
says so in one line and suggests a fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dpcli.influence.base import Estimator, LastLayer

CHECK_ROWS = 32
WARN_ERROR = 0.05


class LiSSA(Estimator):
    name = "lissa"
    help = "the paper's LiSSA (--lissa-depth, --lissa-scale, ...), with a reported residual check against cg"

    def solve(
        self, problem: LastLayer, *, damping, rows, sink, progress=None, info=None, chunk_size: int = 4096
    ) -> dict[str, Any]:
        from dpcli.influence.lissa import lissa_influence

        cfg = self.cfg
        check = self._check_rows(rows)
        captured: dict[int, np.ndarray] = {}

        def keep(start: int, block: np.ndarray) -> None:
            lo, hi = max(start, check[0]), min(start + len(block), check[1])
            for i in range(lo, hi):
                captured[i] = np.array(block[i - start], dtype=np.float64)
            sink(start, block)

        kw = dict(
            depth=cfg.lissa_depth,
            scale=cfg.lissa_scale,
            batch_size=cfg.lissa_batch_size,
            repeats=cfg.lissa_repeats,
            seed=cfg.seed,
            damping=damping,
            chunk_size=chunk_size,
        )
        f, y, w, b = problem.features, problem.labels, problem.weight, problem.bias
        lissa_influence(f, y, w, b, sink=keep, progress=progress, rows=rows, **kw)
        errors = self._errors(problem, damping, check, captured, chunk_size)
        attrs: dict[str, Any] = {
            "solver": "lissa",
            "lissa_check_rows": list(check),
            "lissa_rel_error_median": float(np.median(errors)),
            "lissa_rel_error_max": float(np.max(errors)),
        }
        if info is not None and attrs["lissa_rel_error_median"] > WARN_ERROR:
            info(
                f"warning: LiSSA has not converged: median relative error {attrs['lissa_rel_error_median']:.3g} "
                f"(max {attrs['lissa_rel_error_max']:.3g}) against cg on rows {check[0]}..{check[1] - 1}; raise "
                f"--lissa-depth, lower --lissa-scale towards the largest eigenvalue, or use --estimator exact"
            )
        return attrs

    def _check_rows(self, rows: tuple[int, int]) -> tuple[int, int]:
        """A seeded block of at most CHECK_ROWS consecutive rows inside ``rows``."""
        start, stop = rows
        size = min(CHECK_ROWS, stop - start)
        first = start + int(np.random.default_rng(self.cfg.seed).integers(0, stop - start - size + 1))
        return first, first + size

    @staticmethod
    def _errors(
        problem: LastLayer, damping: float, check: tuple[int, int], captured: dict[int, np.ndarray], chunk_size: int
    ) -> np.ndarray:
        from dpcli.influence.cg import cg_influence

        ref = cg_influence(
            problem.features,
            problem.labels,
            problem.weight,
            problem.bias,
            damping,
            tol=1e-8,
            max_iter=10_000,
            chunk_size=chunk_size,
            rows=check,
        )
        assert ref is not None  # no sink: the rows are returned
        got = np.stack([captured[i] for i in range(*check)])
        ref = ref.astype(np.float64)
        return np.linalg.norm(got - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-300)
