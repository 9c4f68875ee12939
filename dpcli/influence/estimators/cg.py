"""cg: preconditioned conjugate gradients to a relative residual, no d x d matrix (large last layers)."""

from __future__ import annotations

from typing import Any

from dpcli.influence.base import Estimator, LastLayer


class CG(Estimator):
    name = "cg"
    help = "preconditioned conjugate gradients to --cg-tol, no d x d matrix"

    def solve(
        self, problem: LastLayer, *, damping, rows, sink, progress=None, info=None, chunk_size: int = 4096
    ) -> dict[str, Any]:
        from dpcli.influence.cg import CGStats, cg_influence

        stats = CGStats()
        cg_influence(
            problem.features,
            problem.labels,
            problem.weight,
            problem.bias,
            damping,
            tol=self.cfg.cg_tol,
            max_iter=self.cfg.cg_max_iter,
            chunk_size=chunk_size,
            sink=sink,
            progress=progress,
            rows=rows,
            stats=stats,
        )
        return {
            "solver": "cg",
            "cg_iterations": stats.total_iterations,
            "cg_max_relative_residual": stats.max_relative_residual,
        }
