"""exact: one Cholesky factorization of the damped float64 Hessian, then a triangular solve per chunk.

Above the dense limit (``d > max_dense_dim()``, where the Hessian and its factor would pass ~4 GiB) it
switches to conjugate gradients solved to ``--cg-tol``, with an info line.
"""

from __future__ import annotations

from typing import Any

from dpcli.influence.base import Estimator, LastLayer
from dpcli.influence.estimators.cg import CG


class Exact(Estimator):
    name = "exact"
    help = "dense Hessian, Cholesky, float64 (switches to cg above d = 16384)"

    def solve(
        self, problem: LastLayer, *, damping, rows, sink, progress=None, info=None, chunk_size: int = 4096
    ) -> dict[str, Any]:
        from dpcli.influence import kernels as infl
        from dpcli.influence import precision as refined
        from dpcli.influence.rows import dense_fits, exact_rows

        f, y, w, b = problem.features, problem.labels, problem.weight, problem.bias
        if not dense_fits(w.shape[0], w.shape[1]):
            if info is not None:
                info(
                    f"d={problem.d} exceeds the dense limit {infl.max_dense_dim()}; solving exactly by "
                    f"conjugate gradients (relative residual {self.cfg.cg_tol:g})"
                )
            return CG(self.cfg).solve(
                problem, damping=damping, rows=rows, sink=sink, progress=progress, chunk_size=chunk_size
            )
        precision = refined.resolve_precision(getattr(self.cfg, "precision", "float64"), f.device)
        if precision == "float32-refined":
            refined.exact_influence_refined(
                f,
                y,
                w,
                b,
                damping=damping,
                chunk_size=chunk_size,
                sink=sink,
                progress=progress,
                tol=self.cfg.cg_tol,
                rows=rows,
            )
            return {"solver": "exact", "precision": precision, "refinement_tol": self.cfg.cg_tol}
        if rows == (0, problem.n):
            infl.exact_influence(f, y, w, b, damping=damping, chunk_size=chunk_size, sink=sink, progress=progress)
        else:
            infl.check_labels(y, problem.n, w.shape[0])
            exact_rows(f, y, w, b, damping, rows, chunk_size, sink, progress)
        return {"solver": "exact"}
