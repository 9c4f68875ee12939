"""The head fit (dpcli.influence.head): Newton-CG to the optimum of mean CE + lam/2 ||[W, b]||^2, checked
against autograd's gradient and an independent dense Newton method in numpy, on features conditioned as badly as a
network's penultimate layer, with a subsampled curvature, and when it stops short."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpcli.errors import DpcliError
from dpcli.influence import head as H
from tests.influence.test_embeddings import blobs


def relu_features(n: int, dim: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Nonnegative, offset, correlated features with per-dimension scales over e^+-2 (a network's penultimate
    layer): the Hessian's condition number is in the 10^5s, where first-order methods take thousands of steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    z = (rng.normal(size=(c, dim)) / np.sqrt(dim) * 3)[y] + rng.normal(size=(n, dim))
    x = np.maximum(z @ rng.normal(size=(dim, dim)) / np.sqrt(dim) + 0.5, 0) * np.exp(rng.normal(size=dim))
    return x.astype(np.float32), y


def grad_norm(x, y, w, b, lam) -> float:
    _, gw, gb = H.objective(torch.from_numpy(x), torch.from_numpy(y), w, b, lam)
    return float(torch.cat([gw.reshape(-1), gb]).norm())


def newton_dense(x: np.ndarray, y: np.ndarray, c: int, lam: float) -> np.ndarray:
    """Damped Newton on the same objective in numpy, with the dense Hessian from its definition,
    sum_i (diag p_i - p_i p_i^T) kron [x_i, 1][x_i, 1]^T / n + lam I (none of dpcli's kernels); ``[W, b]``."""
    n, dim = x.shape
    xa = np.hstack([x.astype(np.float64), np.ones((n, 1))])
    onehot = np.eye(c)[y]

    def f_g_p(t):
        logits = xa @ t.reshape(c, dim + 1).T
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        f = -np.mean(np.log(p[np.arange(n), y])) + 0.5 * lam * t @ t
        return f, ((p - onehot).T @ xa / n).ravel() + lam * t, p

    t = np.zeros(c * (dim + 1))
    for _ in range(100):
        f, g, p = f_g_p(t)
        if np.linalg.norm(g) < 1e-11:
            break
        a = np.einsum("ic,cd->icd", p, np.eye(c)) - np.einsum("ic,id->icd", p, p)
        h = np.einsum("icd,ij,ik->cjdk", a, xa, xa).reshape(c * (dim + 1), -1) / n + lam * np.eye(len(t))
        step, s = np.linalg.solve(h, g), 1.0
        while f_g_p(t - s * step)[0] > f and s > 1e-8:
            s *= 0.5
        t = t - s * step
    assert np.linalg.norm(f_g_p(t)[1]) < 1e-10
    w = t.reshape(c, dim + 1)
    return np.concatenate([w[:, :dim].ravel(), w[:, dim]])


def test_head_fit_converges_to_the_optimum_and_its_gradient_is_autograds():
    x, y = blobs(200, 6, 4, seed=1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    fit = H.fit_head(xt, yt, 4, 1e-3, tol=1e-8)
    f, gw, gb = H.objective(xt, yt, fit.weight, fit.bias, 1e-3)
    grad = float(torch.cat([gw.reshape(-1), gb]).norm())
    assert grad <= 1e-8 and abs(grad - fit.grad_norm) < 1e-12 and fit.solver == "newton-cg"
    w = fit.weight.clone().requires_grad_(True)
    b = fit.bias.clone().requires_grad_(True)
    obj = torch.nn.functional.cross_entropy(xt.double() @ w.T + b, yt) + 0.5e-3 * (w.pow(2).sum() + b.pow(2).sum())
    obj.backward()
    torch.testing.assert_close(w.grad, gw, atol=1e-12, rtol=0)
    torch.testing.assert_close(b.grad, gb, atol=1e-12, rtol=0)
    assert abs(float(obj.detach()) - f) < 1e-12 and abs(fit.loss - f) < 1e-12


def test_badly_conditioned_features_converge_in_few_steps_to_the_independent_optimum():
    """The Kronecker preconditioner absorbs the features' scale and offset: few Newton steps and few
    Hessian-vector products where L-BFGS needs over a thousand iterations (benchmarks/head_fit.py)."""
    lam = 1e-3
    x, y = relu_features(300, 24, 4)
    fit = H.fit_head(torch.from_numpy(x), torch.from_numpy(y), 4, lam, tol=1e-9)
    want = newton_dense(x, y, 4, lam)
    got = torch.cat([fit.weight.reshape(-1), fit.bias]).numpy()
    assert fit.grad_norm <= 1e-9 and grad_norm(x, y, fit.weight, fit.bias, lam) <= 1e-9
    assert np.linalg.norm(got - want) <= 1e-9 / lam  # strong convexity: ||theta - theta*|| <= ||grad|| / lam
    # measured: 9 Newton steps, 69 products; 322 with an identity preconditioner (939 at 1,000 x 64 x 10)
    assert fit.iterations <= 15 and fit.hvps <= 150, (fit.iterations, fit.hvps)


def test_a_subsampled_curvature_reaches_the_same_optimum(monkeypatch):
    """Large n: the Newton steps' curvature comes from strided rows, the gradient from all; same optimum."""
    x, y = blobs(400, 5, 3, seed=3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    exact = H.fit_head(xt, yt, 3, 1e-2, tol=1e-10)
    monkeypatch.setattr(H, "_HESSIAN_ROWS", 100)
    assert H.hessian_rows(400).tolist() == list(range(0, 400, 4)) and H.hessian_rows(100) is None
    sub = H.fit_head(xt, yt, 3, 1e-2, tol=1e-10)
    # linear instead of quadratic convergence: more steps, the same optimum
    assert grad_norm(x, y, sub.weight, sub.bias, 1e-2) <= 1e-10 and exact.iterations < sub.iterations < 40
    assert float(torch.cat([(sub.weight - exact.weight).reshape(-1), sub.bias - exact.bias]).norm()) < 1e-8 / 1e-2


def test_a_fit_stopped_short_says_what_to_do_and_bad_options_are_refused():
    x, y = relu_features(300, 24, 4)
    said = []
    fit = H.fit_head(torch.from_numpy(x), torch.from_numpy(y), 4, 1e-3, tol=1e-9, max_iter=2, info=said.append)
    assert fit.iterations == 2 and fit.grad_norm > 1e-9
    assert len(said) == 1 and f"gradient norm {fit.grad_norm:.3g} > --tol 1e-09 after 2 Newton steps" in said[0]
    assert "raise --max-iter" in said[0] and "--damping" in said[0]
    threads = torch.get_num_threads()
    for kw, what in (({"max_iter": 0}, "--max-iter"), ({"tol": 0.0}, "--tol"), ({"tol": float("nan")}, "--tol")):
        with pytest.raises(DpcliError, match=what):
            H.fit_head(torch.from_numpy(x), torch.from_numpy(y), 4, 1e-3, **kw)
    assert torch.get_num_threads() == threads  # a small fit runs on one thread and gives the setting back


def test_a_warm_start_changes_the_steps_not_the_optimum():
    x, y = blobs(300, 8, 5, seed=4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    cold = H.fit_head(xt, yt, 5, 1e-2, tol=1e-10)
    near = H.fit_head(xt[:270], yt[:270], 5, 1e-2, tol=1e-10)
    warm = H.fit_head(xt, yt, 5, 1e-2, tol=1e-10, init=(near.weight, near.bias))
    assert warm.iterations < cold.iterations
    assert float((warm.weight - cold.weight).norm()) < 2e-10 / 1e-2
