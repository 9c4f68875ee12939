"""The last layer fitted on frozen features: L2-regularized softmax regression, solved to its optimum.

The objective is ``mean CE + damping/2 ||[W, b]||^2``; it is strongly convex, so its optimum is unique
and S with the same ``damping`` is the exact first-order change of that optimum (Theorem 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from torch import Tensor

DEFAULT_DAMPING = 1e-3  # L2 coefficient of the head fit = the Hessian's damping
DEFAULT_TOL = 1e-7      # head fit: stop when ||grad of the regularized objective|| <= this
DEFAULT_MAX_ITER = 500
_DENSE_NEWTON_DIM = 4096  # Newton with the dense Hessian up to this d, L-BFGS above
_HESSIAN_ROWS = 65536     # Newton's Hessian from at most this many (strided) rows; the gradient uses all
_CHUNK = 8192


@dataclass
class HeadFit:
    """The regularized softmax-regression optimum and how close to it the solver got."""

    weight: "Tensor"  # (C, D) float64
    bias: "Tensor"    # (C,) float64
    damping: float
    grad_norm: float  # ||grad of mean CE + damping/2 ||theta||^2|| at the returned point
    iterations: int
    solver: str
    loss: float


def objective(x: "Tensor", y: "Tensor", w: "Tensor", b: "Tensor", damping: float) -> tuple[float, "Tensor", "Tensor"]:
    """Mean CE + damping/2 ||[W, b]||^2 and its gradient, float64, chunked over rows."""
    import torch

    from dpcli.influence import kernels as infl

    n = x.shape[0]
    gw = torch.zeros_like(w)
    gb = torch.zeros_like(b)
    total = 0.0
    for a in range(0, n, _CHUNK):
        phi = x[a:a + _CHUNK].to(torch.float64)
        logits = torch.addmm(b, phi, w.T)
        lse = torch.logsumexp(logits, 1)
        yy = y[a:a + _CHUNK]
        total += float((lse - logits.gather(1, yy[:, None])[:, 0]).sum())
        e = infl.residuals(phi, yy, w, b)
        gw.addmm_(e.T, phi)
        gb += e.sum(0)
    reg = 0.5 * damping * float(w.pow(2).sum() + b.pow(2).sum())
    return total / n + reg, gw / n + damping * w, gb / n + damping * b


def fit_head(x: "Tensor", y: "Tensor", num_classes: int, damping: float = DEFAULT_DAMPING, *,
             tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER, init: tuple | None = None,
             info: Callable[[str], None] | None = None, dense_limit: int = _DENSE_NEWTON_DIM) -> HeadFit:
    """Fit the head to the optimum: Newton (dense Hessian) for d <= ``dense_limit``, L-BFGS above; from zero."""
    import torch

    from dpcli.influence import kernels as infl

    damping = infl.check_damping(damping)
    n, dim = x.shape
    d = num_classes * (dim + 1)
    if init is None:
        w = torch.zeros(num_classes, dim, dtype=torch.float64, device=x.device)
        b = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
    else:
        w, b = (t.detach().to(device=x.device, dtype=torch.float64).clone() for t in init)
    fit = _newton if d <= dense_limit else _lbfgs
    out = fit(x, y, w, b, damping, tol, max_iter)
    if out.grad_norm > tol and info is not None:
        info(f"warning: the head fit stopped at gradient norm {out.grad_norm:.3g} > {tol:g} after "
             f"{out.iterations} iterations; S assumes the optimum")
    return out


def hessian_rows(n: int, device: Any = None) -> "Tensor | None":
    """Rows the Newton steps' Hessian is built from: all up to ``_HESSIAN_ROWS``, else that many evenly
    strided ones (deterministic).  Building the dense Hessian costs n d^2 and dominated the fit at large n;
    the gradient stays exact, so Newton still converges to the exact optimum (linearly, at a rate set by
    how well the subsample's curvature matches, instead of quadratically)."""
    import torch

    if n <= _HESSIAN_ROWS:
        return None
    return (torch.arange(_HESSIAN_ROWS, device=device) * n) // _HESSIAN_ROWS


def _newton(x, y, w, b, damping: float, tol: float, max_iter: int) -> HeadFit:
    """Damped Newton with a backtracking line search: quadratic convergence on small heads."""
    import torch

    from dpcli.influence import kernels as infl

    c, dim = w.shape
    f, gw, gb = objective(x, y, w, b, damping)
    it = 0
    eye = torch.eye(c * (dim + 1), dtype=torch.float64, device=x.device)
    rows = hessian_rows(x.shape[0], x.device)
    xh, yh = (x, y) if rows is None else (x[rows], y[rows])
    while it < max_iter:
        g = torch.cat([gw.reshape(-1), gb])
        if float(g.norm()) <= tol:
            break
        h = infl.last_layer_hessian(xh, yh, w, b) + damping * eye
        step = torch.linalg.solve(h, g)
        sw, sb = step[:c * dim].reshape(c, dim), step[c * dim:]
        t = 1.0
        while True:
            f_new, gw_new, gb_new = objective(x, y, w - t * sw, b - t * sb, damping)
            if f_new <= f - 1e-4 * t * float(g @ step) or t < 1e-10:
                break
            t *= 0.5
        w, b, f, gw, gb = w - t * sw, b - t * sb, f_new, gw_new, gb_new
        it += 1
    gn = float(torch.cat([gw.reshape(-1), gb]).norm())
    return HeadFit(w, b, damping, gn, it, "newton", f)


def _lbfgs(x, y, w, b, damping: float, tol: float, max_iter: int) -> HeadFit:
    """Full-batch L-BFGS with a strong-Wolfe line search (deterministic), gradients in closed form."""
    import torch

    c, dim = w.shape
    theta = torch.cat([w.reshape(-1), b]).requires_grad_(False)
    param = torch.nn.Parameter(theta)
    opt = torch.optim.LBFGS([param], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, history_size=20,
                            tolerance_grad=tol / math.sqrt(param.numel()), tolerance_change=0.0,
                            line_search_fn="strong_wolfe")

    def closure() -> "Tensor":
        p = param.detach()
        f, gw, gb = objective(x, y, p[:c * dim].reshape(c, dim), p[c * dim:], damping)
        param.grad = torch.cat([gw.reshape(-1), gb])
        return torch.tensor(f, dtype=torch.float64)

    opt.step(closure)
    p = param.detach()
    w, b = p[:c * dim].reshape(c, dim).clone(), p[c * dim:].clone()
    f, gw, gb = objective(x, y, w, b, damping)
    state = opt.state[param]
    return HeadFit(w, b, damping, float(torch.cat([gw.reshape(-1), gb]).norm()), int(state.get("n_iter", 0)),
                   "lbfgs", f)

