"""The last layer fitted on frozen features: L2-regularized softmax regression, solved to its optimum.

The objective is ``mean CE + damping/2 ||[W, b]||^2``; it is strongly convex, so its optimum is unique
and S with the same ``damping`` is the exact first-order change of that optimum (Theorem 1).

The solver is a truncated Newton method (Newton-CG): each step solves ``(H + damping I) s = g`` by
conjugate gradients with closed-form Hessian-vector products (no ``d x d`` matrix), preconditioned by the
Kronecker factorization ``mean(diag p - p p^T) (x) mean(phi~ phi~^T) + damping I``, whose feature factor
absorbs the scale, offset and correlation of the features that make first-order methods (L-BFGS)
crawl on real embeddings.  The inner tolerance shrinks with the gradient (superlinear convergence), the
step is Armijo-backtracked, and the stopping test is the full gradient norm.  Everything runs in torch
on the features' device, with one host sync per CG iteration: the gradient and objective in float64, the
inner products (which only steer the step) in float32.
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from torch import Tensor

    from dpcli.influence.cg import KroneckerPreconditioner

DEFAULT_DAMPING = 1e-3  # L2 coefficient of the head fit = the Hessian's damping
DEFAULT_TOL = 1e-7  # head fit: stop when ||grad of the regularized objective|| <= this
DEFAULT_MAX_ITER = 100  # Newton steps
CG_MAX_ITER = 250  # CG iterations per Newton step (a truncated step is still a descent direction)
# the Newton steps' curvature from at most this many (strided) rows, the gradient from all: a smaller share of
# the rows' curvature slows convergence (at 100,000 x 768 x 100: 17 steps from 65,536 rows, 6 from all, 2.6x
# the time), while a float32 product over all of them costs less than a float64 gradient pass
_HESSIAN_ROWS = 1 << 18
_FACTOR_ROWS = 16384  # the preconditioner's feature factor from at most this many of them
_F64_COPY_BYTES = 256 << 20  # features held as one float64 copy up to this size; converted by chunks above
_CHUNK = 8192
# one pass over the rows (n D C multiply-adds) below this runs on one CPU thread: the fit is hundreds of
# such small products and eigen/triangular solves, whose parallel regions cost more to synchronize than
# they save (3-8x slower with two threads on a shared 2-core machine; benchmarks/head_fit.py)
_SMALL_PASS = 1 << 27


@dataclass(repr=False)
class HeadFit:
    """The regularized softmax-regression optimum and how close to it the solver got."""

    weight: "Tensor"  # (C, D) float64
    bias: "Tensor"  # (C,) float64
    damping: float
    grad_norm: float  # ||grad of mean CE + damping/2 ||theta||^2|| at the returned point
    iterations: int  # Newton steps
    solver: str
    loss: float
    hvps: int = 0  # Hessian-vector products of the inner CG solves

    def advice(self, tol: float) -> str:
        """What to do when the fit stopped short of ``tol``."""
        return (
            f"the head fit stopped at gradient norm {self.grad_norm:.3g} > --tol {tol:g} after {self.iterations} "
            "Newton steps, so S is taken at a point short of the optimum; raise --max-iter, loosen --tol, or "
            "raise --damping (a stronger L2 makes the problem better conditioned)"
        )

    def __repr__(self) -> str:  # one line, not the weights
        c, dim = self.weight.shape
        return (
            f"HeadFit(classes={c}, dim={dim}, damping={self.damping:g}, loss={self.loss:.6g}, "
            f"grad_norm={self.grad_norm:.3g}, iterations={self.iterations}, solver={self.solver!r})"
        )


def _float64_rows(x: "Tensor") -> Callable[[], Any]:
    """A fresh iterator of ``(start, float64 rows)`` chunks of ``x`` per call: views of one float64 copy
    where that is small (no conversion per pass), else converted chunk by chunk."""
    import torch

    src = x.to(torch.float64) if x.dtype == torch.float64 or x.numel() * 8 <= _F64_COPY_BYTES else x
    return lambda: ((a, src[a : a + _CHUNK].to(torch.float64)) for a in range(0, x.shape[0], _CHUNK))


def objective(
    x: "Tensor", y: "Tensor", w: "Tensor", b: "Tensor", damping: float, rows: Callable[[], Any] | None = None
) -> tuple[float, "Tensor", "Tensor"]:
    """Mean CE + damping/2 ||[W, b]||^2 and its gradient, float64, one pass over the rows."""
    import torch

    n = x.shape[0]
    gw = torch.zeros_like(w)
    gb = torch.zeros_like(b)
    total = torch.zeros((), dtype=torch.float64, device=w.device)
    for a, phi in (rows or _float64_rows(x))():
        logits = torch.addmm(b, phi, w.T)
        lse = torch.logsumexp(logits, 1)
        yy = y[a : a + phi.shape[0]]
        total += (lse - logits.gather(1, yy[:, None])[:, 0]).sum()
        e = torch.exp(logits - lse[:, None])
        e[torch.arange(phi.shape[0], device=phi.device), yy] -= 1.0
        gw.addmm_(e.T, phi)
        gb += e.sum(0)
    reg = 0.5 * damping * (w.pow(2).sum() + b.pow(2).sum())
    return float(total / n + reg), gw / n + damping * w, gb / n + damping * b


def hessian_rows(n: int, device: Any = None) -> "Tensor | None":
    """Rows the Newton steps' curvature comes from: all up to ``_HESSIAN_ROWS``, else that many evenly
    strided ones (deterministic).  The gradient stays exact, so the fit still converges to the exact
    optimum (linearly, at a rate set by how well the subsample's curvature matches, instead of
    quadratically), at a fraction of the cost of each inner product at large n."""
    import torch

    if n <= _HESSIAN_ROWS:
        return None
    return (torch.arange(_HESSIAN_ROWS, device=device) * n) // _HESSIAN_ROWS


def check_options(tol: float, max_iter: int) -> tuple[float, int]:
    """``--tol`` and ``--max-iter`` of the head fit, refused in one line before any work."""
    from dpcli.errors import DpcliError

    if not (math.isfinite(float(tol)) and float(tol) > 0):
        raise DpcliError(f"--tol must be a positive number, got {tol!r}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or int(max_iter) < 1:
        raise DpcliError(f"--max-iter must be a positive integer, got {max_iter!r}")
    return float(tol), int(max_iter)


def fit_head(
    x: "Tensor",
    y: "Tensor",
    num_classes: int,
    damping: float = DEFAULT_DAMPING,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    init: tuple | None = None,
    info: Callable[[str], None] | None = None,
) -> HeadFit:
    """Fit the head to the optimum (Newton-CG) from zero or from ``init = (W, b)``: the objective is strongly
    convex, so the start changes only the number of steps.  ``info`` hears what to do if it stops short."""
    import torch

    from dpcli.influence import kernels as infl

    damping = infl.check_damping(damping)
    tol, max_iter = check_options(tol, max_iter)
    dim = x.shape[1]
    if init is None:
        w = torch.zeros(num_classes, dim, dtype=torch.float64, device=x.device)
        b = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
    else:
        w, b = (t.detach().to(device=x.device, dtype=torch.float64).clone() for t in init)
    with _threads_for(x, num_classes):
        out = _newton_cg(x, y, w, b, damping, tol, max_iter)
    if out.grad_norm > tol and info is not None:
        info(f"warning: {out.advice(tol)}")
    return out


@contextmanager
def _threads_for(x: "Tensor", num_classes: int) -> Iterator[None]:
    """One intra-op thread for a small fit on the CPU (see ``_SMALL_PASS``); the caller's setting otherwise."""
    import torch

    if x.device.type != "cpu" or x.shape[0] * x.shape[1] * num_classes >= _SMALL_PASS:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Curvature:
    """Products with ``H + damping I`` on the Hessian rows at one point, and the preconditioner there.

    The products run in float32 (2-3x faster than float64 on a CPU, more on a GPU): they only steer the
    inner solve, whose inexactness the forcing tolerance already allows; the gradient, the objective and
    the stopping test stay float64, so the optimum reached is the float64 one."""

    def __init__(
        self, xh: "Tensor", w: "Tensor", b: "Tensor", damping: float, factor: tuple["Tensor", "Tensor"]
    ) -> None:
        import torch

        from dpcli.influence.cg import KroneckerPreconditioner

        self.xh, self.n, self.damping = xh, xh.shape[0], damping
        self.w, self.b = w.to(torch.float32), b.to(torch.float32)
        probs = [self._probs(phi) for phi in self._rows()]
        a = functools.reduce(torch.add, [torch.diag(p.sum(0)) - p.T @ p for p in probs]) / self.n
        self.precond: KroneckerPreconditioner = KroneckerPreconditioner(a, factor, damping)  # float32 too
        # kept for the products where they fit (n_h x C), else recomputed with each product
        self.p = probs if xh.shape[0] * w.shape[0] * 4 <= _F64_COPY_BYTES else None

    def _rows(self):
        return (self.xh[a : a + _CHUNK] for a in range(0, self.n, _CHUNK))

    def _probs(self, phi: "Tensor") -> "Tensor":
        import torch

        return torch.softmax(torch.addmm(self.b, phi, self.w.T), dim=1)

    def __call__(self, v: "Tensor") -> "Tensor":
        """``(H + damping I) v`` for ``v`` in the augmented layout ``(C, D+1)``."""
        import torch

        dim = v.shape[1] - 1
        v32 = v.to(torch.float32)
        out_w = v32.new_zeros(v.shape[0], dim)  # contiguous: a GEMM into a strided view is twice as slow
        out_b = v32.new_zeros(v.shape[0])
        for i, phi in enumerate(self._rows()):
            p = self.p[i] if self.p is not None else self._probs(phi)
            u = torch.addmm(v32[:, dim], phi, v32[:, :dim].T)  # logit perturbations J_i v
            q = p * (u - (u * p).sum(1, keepdim=True))  # A_i J_i v
            out_w.addmm_(q.T, phi)
            out_b += q.sum(0)
        hv = torch.cat([out_w, out_b[:, None]], dim=1).to(torch.float64)
        return hv.div_(self.n).add_(v, alpha=self.damping)


def _pcg(apply: _Curvature, g: "Tensor", rtol: float, max_iter: int) -> tuple["Tensor", int]:
    """``s`` with ``||(H + damping I) s - g|| <= rtol ||g||`` (or ``max_iter`` steps), preconditioned CG."""
    s = g.new_zeros(g.shape)
    r = g.clone()
    z = apply.precond.apply(r)
    p = z.clone()
    rz = (r * z).sum()
    stop = rtol * float(g.norm())
    k = 0
    while k < max_iter:
        k += 1
        hp = apply(p)
        alpha = rz / (p * hp).sum()
        s.add_(alpha * p)
        r.sub_(alpha * hp)
        if float(r.norm()) <= stop:
            break
        z = apply.precond.apply(r)
        rz, rz_old = (r * z).sum(), rz
        p = z + (rz / rz_old) * p
    return s, k


def _feature_factor(xh: "Tensor") -> tuple["Tensor", "Tensor"]:
    """Eigendecomposition of ``mean(phi~ phi~^T)`` over at most ``_FACTOR_ROWS`` strided Hessian rows (float32)."""
    import torch

    n, dim = xh.shape
    take = xh if n <= _FACTOR_ROWS else xh[(torch.arange(_FACTOR_ROWS, device=xh.device) * n) // _FACTOR_ROWS]
    phi = torch.cat([take, torch.ones(take.shape[0], 1, dtype=take.dtype, device=xh.device)], 1)
    return torch.linalg.eigh(phi.T @ phi / phi.shape[0])  # float32, like the products it preconditions


def _newton_cg(
    x: "Tensor", y: "Tensor", w: "Tensor", b: "Tensor", damping: float, tol: float, max_iter: int
) -> HeadFit:
    """Truncated Newton with an Armijo backtracking line search, from ``(w, b)``."""
    import torch

    dim = x.shape[1]
    rows = _float64_rows(x)
    sub = hessian_rows(x.shape[0], x.device)
    xh = (x if sub is None else x[sub]).to(torch.float32)
    factor = _feature_factor(xh)
    f, gw, gb = objective(x, y, w, b, damping, rows)
    it = hvps = 0
    while True:
        g = torch.cat([gw, gb[:, None]], dim=1)  # augmented layout (C, D+1)
        gn = float(g.norm())
        if gn <= tol or it >= max_iter:
            break
        curvature = _Curvature(xh, w, b, damping, factor)
        step, k = _pcg(curvature, g, min(0.5, math.sqrt(gn)), CG_MAX_ITER)
        hvps += k
        slope = float((g * step).sum())
        t = 1.0
        while True:
            w_new, b_new = w - t * step[:, :dim], b - t * step[:, dim]
            f_new, gw_new, gb_new = objective(x, y, w_new, b_new, damping, rows)
            # near the optimum the decrease drops below float64 resolution of f: take a full step that
            # halves the gradient instead
            if (
                f_new <= f - 1e-4 * t * slope
                or t < 1e-10
                or (
                    t == 1.0
                    and f_new - f <= 1e-12 * abs(f)
                    and float(torch.cat([gw_new, gb_new[:, None]], 1).norm()) < 0.5 * gn
                )
            ):
                break
            t *= 0.5
        w, b, f, gw, gb = w_new, b_new, f_new, gw_new, gb_new
        it += 1
    return HeadFit(w, b, damping, gn, it, "newton-cg", f, hvps)
