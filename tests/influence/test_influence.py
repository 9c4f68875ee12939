"""Tests for dpcli.influence against independent oracles.

Oracles: torch.func / torch.autograd derivatives of ``F.cross_entropy`` on a
real ``nn.Linear``, a dense float64 numpy solve, and actual retraining (Newton's
method to machine precision) of an L2-regularised softmax regression with
samples removed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, vmap

from dpcli.errors import DpcliError
from dpcli.influence import kernels as influence
from dpcli.influence.cg import cg_influence
from dpcli.influence.kernels import (
    exact_influence,
    hessian_vector_product,
    last_layer_hessian,
    max_dense_dim,
    mean_grad,
    per_sample_grads,
)
from dpcli.influence.lissa import lissa_influence

F64 = torch.float64


def _problem(
    n: int, dim: int, classes: int, seed: int, dtype: torch.dtype = F64
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random features, labels and a random (untrained) last layer."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=gen, dtype=F64).to(dtype)
    labels = torch.randint(0, classes, (n,), generator=gen)
    weight = (0.7 * torch.randn(classes, dim, generator=gen, dtype=F64)).to(dtype)
    bias = (0.3 * torch.randn(classes, generator=gen, dtype=F64)).to(dtype)
    return features, labels, weight, bias


def _theta(weight: Tensor, bias: Tensor) -> Tensor:
    return torch.cat([weight.reshape(-1), bias]).to(F64)


def _mean_ce(theta: Tensor, features: Tensor, labels: Tensor, classes: int) -> Tensor:
    """Mean CE of a linear layer given the flat ``[W row-major, b]`` vector."""
    dim = features.shape[1]
    weight = theta[: classes * dim].reshape(classes, dim)
    return F.cross_entropy(features @ weight.T + theta[classes * dim :], labels)


# --------------------------------------------------------------------------- #
# gradients and Hessian
# --------------------------------------------------------------------------- #


def test_per_sample_grads_match_vmap_grad_of_nn_linear() -> None:
    n, dim, classes = 20, 6, 4
    torch.manual_seed(0)
    layer = nn.Linear(dim, classes).to(F64)
    features = torch.randn(n, dim, dtype=F64)
    labels = torch.randint(0, classes, (n,))
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(layer, p, (x[None],)), y[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, features, labels)
    expected = torch.cat([g["weight"].reshape(n, -1), g["bias"]], dim=1)

    got = per_sample_grads(features, labels, layer.weight, layer.bias)
    assert got.shape == (n, classes * (dim + 1)) and got.dtype == F64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)

    # float32 inputs are promoted: the result is float64 and agrees to float32 precision
    got32 = per_sample_grads(features.float(), labels, layer.weight.float(), layer.bias.float())
    assert got32.dtype == F64
    torch.testing.assert_close(got32, expected, rtol=1e-5, atol=1e-6)


def test_mean_grad_matches_autograd_and_rejects_bad_labels() -> None:
    features, labels, weight, bias = _problem(37, 5, 3, seed=1)
    theta = _theta(weight, bias)
    expected = torch.func.grad(_mean_ce)(theta, features, labels, 3)
    got = mean_grad(features, labels, weight, bias, chunk_size=8)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    with pytest.raises(DpcliError, match="labels"):
        mean_grad(features, torch.full_like(labels, 3), weight, bias)


def test_loss_and_grad_norm_match_autograd_chunk_by_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-sample losses and gradient norms equal autograd's, and no step sees more rows than a chunk.

    The whole-set float64 logits were n x C x 8 B apiece (160 MB at 200,000 x 100), enough to break a
    1 GiB bound on their own, so the chunking is checked, not just the numbers.
    """
    features, labels, weight, bias = _problem(37, 5, 3, seed=5)
    theta = _theta(weight, bias)
    expected_loss = torch.stack([_mean_ce(theta, features[i : i + 1], labels[i : i + 1], 3) for i in range(37)])
    expected_norm = torch.stack(
        [torch.func.grad(_mean_ce)(theta, features[i : i + 1], labels[i : i + 1], 3).norm() for i in range(37)]
    )
    rows_seen: list[int] = []
    real_ce = influence.F.cross_entropy

    def spy(logits: Tensor, *args, **kwargs) -> Tensor:
        rows_seen.append(logits.shape[0])
        return real_ce(logits, *args, **kwargs)

    monkeypatch.setattr(influence.F, "cross_entropy", spy)
    losses, norms = influence.loss_and_grad_norm(features, labels, weight, bias, chunk_size=8)
    assert rows_seen == [8, 8, 8, 8, 5]
    np.testing.assert_allclose(losses, expected_loss.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(norms, expected_norm.numpy(), rtol=1e-12, atol=1e-15)
    with pytest.raises(DpcliError, match="labels"):
        influence.loss_and_grad_norm(features, torch.full_like(labels, 3), weight, bias)


@pytest.mark.parametrize("blas", ["syrk", "gemm"])
def test_hessian_matches_autograd_and_hvp_matches_dense(blas: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if blas == "gemm":  # the device-agnostic (GPU) path, also taken without SciPy
        monkeypatch.setattr(influence, "_dsyrk", None)
    else:
        assert influence._dsyrk is not None
    classes, dim = 4, 6
    features, labels, weight, bias = _problem(53, dim, classes, seed=2)
    theta = _theta(weight, bias)
    expected = torch.autograd.functional.hessian(lambda t: _mean_ce(t, features, labels, classes), theta)
    for chunk in (7, 4096):  # chunked accumulation and a single chunk agree
        got = last_layer_hessian(features, labels, weight, bias, chunk_size=chunk)
        assert got.shape == (classes * (dim + 1),) * 2 and got.dtype == F64
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)

    vecs = torch.randn(5, theta.numel(), dtype=F64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        hessian_vector_product(features, weight, bias, vecs), vecs @ expected, rtol=1e-12, atol=1e-14
    )
    # a single vector works too
    torch.testing.assert_close(
        hessian_vector_product(features, weight, bias, vecs[0]), expected @ vecs[0], rtol=1e-12, atol=1e-14
    )


def test_hessian_singular_along_logit_shift_and_damping_required() -> None:
    classes, dim = 4, 6
    features, labels, weight, bias = _problem(40, dim, classes, seed=4)
    h = last_layer_hessian(features, labels, weight, bias)
    # Adding the same u . phi + 1 to every logit leaves the softmax unchanged:
    # W-part rows all equal to u, b-part all ones.
    u = torch.randn(dim, dtype=F64, generator=torch.Generator().manual_seed(5))
    shift = torch.cat([u.repeat(classes), torch.ones(classes, dtype=F64)])
    scale = torch.linalg.matrix_norm(h, ord=2) * torch.linalg.vector_norm(shift)
    assert torch.linalg.vector_norm(h @ shift) < 1e-13 * scale
    assert torch.linalg.vector_norm(hessian_vector_product(features, weight, bias, shift)) < 1e-13 * scale
    # ...while a generic direction is not annihilated (the check above can fail)
    other = torch.randn(shift.numel(), dtype=F64, generator=torch.Generator().manual_seed(6))
    assert torch.linalg.vector_norm(h @ other) > 1e-2 * scale
    assert torch.linalg.eigvalsh(h)[0].abs() < 1e-13 * scale

    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(DpcliError, match="damping"):
            exact_influence(features, labels, weight, bias, damping=bad)
        with pytest.raises(DpcliError, match="damping"):
            lissa_influence(features, labels, weight, bias, damping=bad, depth=2)


# --------------------------------------------------------------------------- #
# retraining oracle
# --------------------------------------------------------------------------- #

N_TRAIN, DIM, CLASSES, LAMBDA = 240, 5, 3, 3e-2


def _objective(theta: Tensor, sample_weights: Tensor, features: Tensor, labels: Tensor) -> Tensor:
    """sum_j w_j CE_j(theta) + lambda/2 ||theta||^2 (w_j = 1/n, or 0 for removed j)."""
    weight = theta[: CLASSES * DIM].reshape(CLASSES, DIM)
    logits = features @ weight.T + theta[CLASSES * DIM :]
    ce = F.cross_entropy(logits, labels, reduction="none")
    return (sample_weights * ce).sum() + 0.5 * LAMBDA * theta.dot(theta)


def _newton(theta: Tensor, sample_weights: Tensor, features: Tensor, labels: Tensor) -> Tensor:
    """Newton's method from a warm start, for a batch of sample weightings at once.

    ``sample_weights`` is ``(k, n)``; returns the ``k`` minimisers ``(k, d)``
    (autograd derivatives; the objective is strongly convex).
    """
    g_fn = vmap(grad(_objective), in_dims=(0, 0, None, None))
    h_fn = vmap(hessian(_objective), in_dims=(0, 0, None, None))
    thetas = theta.expand(sample_weights.shape[0], -1).clone()
    for _ in range(20):
        g = g_fn(thetas, sample_weights, features, labels)
        if torch.linalg.vector_norm(g, dim=1).max() < 1e-14:
            break
        thetas = thetas - torch.linalg.solve(h_fn(thetas, sample_weights, features, labels), g)
    return thetas


@pytest.fixture(scope="module")
def trained() -> dict[str, Tensor]:
    """Softmax regression on a 3-class Gaussian mixture, trained to machine precision.

    The classes are well separated (88% accuracy), so many probabilities are
    confident and the L2 term matters in the Hessian: a missing damping shows.
    """
    gen = torch.Generator().manual_seed(7)
    labels = torch.arange(N_TRAIN) % CLASSES
    means = 1.2 * torch.randn(CLASSES, DIM, generator=gen, dtype=F64)
    features = means[labels] + torch.randn(N_TRAIN, DIM, generator=gen, dtype=F64)
    full = torch.full((N_TRAIN,), 1.0 / N_TRAIN, dtype=F64)
    theta = torch.zeros(CLASSES * (DIM + 1), dtype=F64)
    # damped start (backtracking) then pure Newton
    for _ in range(60):
        g = grad(_objective)(theta, full, features, labels)
        step = torch.linalg.solve(hessian(_objective)(theta, full, features, labels), g)
        t, f0 = 1.0, _objective(theta, full, features, labels)
        while _objective(theta - t * step, full, features, labels) > f0 - 0.25 * t * g.dot(step):
            t *= 0.5
        theta = theta - t * step
        if torch.linalg.vector_norm(g) < 1e-14:
            break
    assert torch.linalg.vector_norm(grad(_objective)(theta, full, features, labels)) < 1e-13
    return {"features": features, "labels": labels, "theta": theta, "full": full}


def _retrain_without(trained: dict[str, Tensor], removed: list[Tensor]) -> np.ndarray:
    """Rows theta_{-R} - theta, for each index set R in ``removed``.

    theta_{-R} minimises (1/n) sum_{j not in R} CE_j + lambda/2 ||theta||^2.
    """
    keep = trained["full"].expand(len(removed), -1).clone()
    for row, idx in enumerate(removed):
        keep[row, idx] = 0.0
    new = _newton(trained["theta"], keep, trained["features"], trained["labels"])
    residual = vmap(grad(_objective), in_dims=(0, 0, None, None))(new, keep, trained["features"], trained["labels"])
    assert torch.linalg.vector_norm(residual, dim=1).max() < 1e-13
    return (new - trained["theta"]).numpy()


def _predicted(trained: dict[str, Tensor], damping: float = LAMBDA) -> np.ndarray:
    theta = trained["theta"]
    weight = theta[: CLASSES * DIM].reshape(CLASSES, DIM)
    bias = theta[CLASSES * DIM :]
    out = exact_influence(trained["features"], trained["labels"], weight, bias, damping)
    assert out is not None and out.dtype == np.float32
    return out.astype(np.float64)


def _norm_rel_err(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    return np.abs(np.linalg.norm(pred, axis=-1) / np.linalg.norm(actual, axis=-1) - 1.0)


def test_exact_influence_predicts_leave_one_out_retraining(trained: dict[str, Tensor]) -> None:
    samples = torch.arange(0, N_TRAIN, 4)  # 60 leave-one-out retrainings
    actual = _retrain_without(trained, [i[None] for i in samples])
    pred = _predicted(trained)[samples.numpy()]

    corr = np.corrcoef(pred.ravel(), actual.ravel())[0, 1]
    err = _norm_rel_err(pred, actual)
    # observed: corr 0.9989, median 0.024, max 0.17 (second-order effects of removal)
    assert corr > 0.99, corr
    assert np.median(err) < 0.05 and err.max() < 0.3, (np.median(err), err.max())

    # The criteria discriminate: a missing 1/n, a flipped sign or a missing
    # damping (only the singular CE Hessian, regularised by a token 1e-6) fail them.
    assert np.median(_norm_rel_err(pred * N_TRAIN, actual)) > 0.5
    assert np.corrcoef(-pred.ravel(), actual.ravel())[0, 1] < 0
    undamped = _predicted(trained, damping=1e-6)[samples.numpy()]
    assert np.median(_norm_rel_err(undamped, actual)) > 0.2
    # a valid but wrong damping (twice the L2 coefficient) fails them by the numbers, not by a crash
    doubled = _predicted(trained, damping=2 * LAMBDA)[samples.numpy()]
    assert np.median(_norm_rel_err(doubled, actual)) > 0.1  # observed 0.20 (the right damping: 0.024)


def test_exact_influence_predicts_group_removal_retraining(trained: dict[str, Tensor]) -> None:
    pred_all = _predicted(trained)
    gen = torch.Generator().manual_seed(8)
    groups = [torch.randperm(N_TRAIN, generator=gen)[:10] for _ in range(5)]
    for removed, actual in zip(groups, _retrain_without(trained, groups)):
        pred = pred_all[removed.numpy()].sum(axis=0)
        corr = np.corrcoef(pred, actual)[0, 1]
        # observed: corr >= 0.9986, norm error <= 0.081
        assert corr > 0.98, corr
        assert _norm_rel_err(pred, actual) < 0.15


# --------------------------------------------------------------------------- #
# LiSSA
# --------------------------------------------------------------------------- #


def _small() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _problem(48, 4, 3, seed=9)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# For _small(): the CE Hessian's top eigenvalue is 0.28, so with damping 0.1 the
# recursion contracts for scale > 0.19 and converges like (1 - 0.1/scale)^depth
# once scale >= 0.38 (here 0.75^60 = 3e-8).
LISSA = dict(damping=0.1, depth=60, scale=0.4)


def test_lissa_converges_to_exact() -> None:
    args = _small()
    exact = exact_influence(*args, damping=0.1)
    full = lissa_influence(*args, **LISSA, batch_size=10_000)
    assert _rel(full, exact) < 1e-2
    # minibatch Hessians (36 of 48), averaged over repeats: close, not exact
    # (observed 0.03-0.07 over seeds 0-4)
    mini = lissa_influence(*args, **LISSA, batch_size=36, repeats=4, seed=1)
    assert 1e-4 < _rel(mini, exact) < 0.15


def test_lissa_scale_is_divided_out() -> None:
    args = _small()
    a = lissa_influence(*args, **LISSA, batch_size=10_000)
    b = lissa_influence(*args, damping=0.1, depth=120, scale=0.8, batch_size=10_000)
    # were the scale not divided out, b would be 2x a
    assert _rel(b, a) < 1e-3


def test_lissa_deterministic_and_independent_of_chunking() -> None:
    args = _small()
    kw = dict(damping=0.1, depth=30, scale=0.4, batch_size=16, seed=3)
    whole = lissa_influence(*args, **kw)
    again = lissa_influence(*args, **kw)
    np.testing.assert_array_equal(whole, again)
    rows: dict[int, np.ndarray] = {}
    ret = lissa_influence(*args, **kw, chunk_size=5, sink=lambda s, r: rows.setdefault(s, r))
    assert ret is None and sorted(rows) == list(range(0, 48, 5))
    np.testing.assert_allclose(np.concatenate([rows[s] for s in sorted(rows)]), whole, rtol=1e-6, atol=1e-9)
    other = lissa_influence(*args, **{**kw, "seed": 4})
    assert not np.allclose(other, whole, rtol=1e-6, atol=0)


def test_lissa_divergence_raises() -> None:
    args = _small()
    with pytest.raises(DpcliError, match="lissa-scale"):
        lissa_influence(*args, damping=0.1, depth=100, scale=0.1, batch_size=10_000)


# --------------------------------------------------------------------------- #
# exact path: streaming, precision, limits
# --------------------------------------------------------------------------- #


def test_exact_streaming_matches_in_memory() -> None:
    features, labels, weight, bias = _problem(103, 7, 5, seed=10, dtype=torch.float32)
    whole = exact_influence(features, labels, weight, bias, damping=1e-2)
    rows: list[tuple[int, np.ndarray]] = []
    ticks: list[tuple[int, int]] = []
    ret = exact_influence(
        features,
        labels,
        weight,
        bias,
        damping=1e-2,
        chunk_size=16,
        sink=lambda s, r: rows.append((s, r.copy())),
        progress=lambda done, n: ticks.append((done, n)),
    )
    assert ret is None
    assert [s for s, _ in rows] == list(range(0, 103, 16))
    assert all(r.dtype == np.float32 for _, r in rows)
    assert ticks == [(min(s + 16, 103), 103) for s in range(0, 103, 16)]
    np.testing.assert_allclose(np.concatenate([r for _, r in rows]), whole, rtol=1e-6, atol=0)


def test_exact_matches_float64_numpy_solve() -> None:
    classes, dim, n, damping = 5, 7, 90, 1e-3
    features, labels, weight, bias = _problem(n, dim, classes, seed=11)
    theta = _theta(weight, bias)
    h = torch.autograd.functional.hessian(lambda t: _mean_ce(t, features, labels, classes), theta).numpy()
    g = np.stack(
        [torch.func.grad(_mean_ce)(theta, features[i : i + 1], labels[i : i + 1], classes).numpy() for i in range(n)]
    )
    expected = np.linalg.solve(h + damping * np.eye(h.shape[0]), g.T).T / n
    got = exact_influence(features, labels, weight, bias, damping=damping, chunk_size=32)
    # float32 output of a float64 computation: agreement to float32 rounding
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7 * np.abs(expected).max())


def test_dense_limit_names_an_estimator_that_needs_no_dense_hessian(monkeypatch: pytest.MonkeyPatch) -> None:
    assert 5130 <= max_dense_dim() and 2 * 8 * max_dense_dim() ** 2 <= 4.01 * 2**30
    args = _small()
    monkeypatch.setattr(influence, "max_dense_dim", lambda: 14)  # d = 3 * 5 = 15
    with pytest.raises(DpcliError, match="use --estimator cg"):
        exact_influence(*args, damping=0.1)
    assert math.isfinite(float(lissa_influence(*args, **LISSA)[0, 0]))
    assert np.isfinite(cg_influence(*args, damping=0.1)).all()
