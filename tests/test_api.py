"""dpcli.api: S from features against autograd, certified selections against brute force, embed()."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import dpcli.api as dp
from dpcli.errors import DpcliError


def _problem(n=40, dim=3, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[np.arange(n), y % dim] += 1.0
    return x, y


def test_influence_equals_autograd_newton_step():
    """S_i = (1/n) (H + lam I)^-1 g_i with H and g_i from torch.autograd on the same objective."""
    x, y = _problem()
    lam = 1e-2
    S, head = dp.influence(x, y, damping=lam)
    n, dim = x.shape
    c = 3
    theta0 = torch.cat([head.weight.reshape(-1), head.bias]).clone()
    X, Y = torch.from_numpy(x).double(), torch.from_numpy(y)

    def loss(theta, xs, ys):
        w, b = theta[:c * dim].reshape(c, dim), theta[c * dim:]
        return torch.nn.functional.cross_entropy(xs @ w.T + b, ys)

    H = torch.autograd.functional.hessian(lambda t: loss(t, X, Y), theta0) + lam * torch.eye(theta0.numel(),
                                                                                              dtype=torch.float64)
    G = torch.stack([torch.autograd.functional.jacobian(lambda t: loss(t, X[i:i + 1], Y[i:i + 1]), theta0)
                     for i in range(n)])
    expected = torch.linalg.solve(H, G.T).T / n
    np.testing.assert_allclose(S, expected.numpy(), rtol=1e-4, atol=1e-7)
    assert head.grad_norm <= 1e-7


def test_prune_count_is_brute_force_optimal_and_certified():
    rng = np.random.default_rng(1)
    S = rng.normal(size=(10, 4)).astype(np.float32)
    sel = dp.prune(S, count=3, solver="brute")
    best = min(np.linalg.norm(S[list(c)].astype(np.float64).sum(0)) for c in itertools.combinations(range(10), 3))
    assert len(sel.pruned_indices) == 3 and abs(sel.norm - best) < 1e-9
    assert abs(sel.norm - np.linalg.norm(S[sel.pruned_indices].astype(np.float64).sum(0))) < 1e-12


def test_prune_epsilon_is_honoured_and_matches_the_cli_default(tmp_path):
    x, y = _problem(n=80, seed=2)
    S, _ = dp.influence(x, y)
    sel = dp.prune(S, epsilon=0.02)
    assert np.linalg.norm(S[~sel.keep].astype(np.float64).sum(0)) <= 0.02 and (~sel.keep).any()
    # the file path of the API and the CLI give the same S
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    path = dp.influence_file(tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "inf.h5")
    from dpcli.stages.core import load_S

    np.testing.assert_array_equal(load_S(path), S)


def test_refit_matches_a_fit_on_the_subset():
    x, y = _problem(n=50, seed=3)
    keep = np.arange(50) % 4 != 0
    r = dp.refit(x, y, keep)  # S's objective, (1/n) sum_kept CE + lam/2: the kept mean CE with L2 lam n / n_kept
    _, head = dp.influence(x[keep], y[keep], num_classes=3, damping=1e-3 * 50 / keep.sum())
    torch.testing.assert_close(r.head.weight, head.weight, atol=1e-6, rtol=0)


def test_embed_gives_the_head_input():
    import torchvision.models as tvm

    torch.manual_seed(0)
    net = tvm.mobilenet_v3_small(num_classes=4).eval()
    seen = {}
    net.classifier[3].register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        net(x)
    feats = dp.embed(net, x, batch_size=2)
    np.testing.assert_allclose(feats, seen["x"].numpy(), rtol=1e-5, atol=1e-6)


def test_api_errors_are_one_line():
    with pytest.raises(DpcliError, match="NaN or inf"):
        dp.influence(np.full((4, 2), np.nan), np.zeros(4, int))
    with pytest.raises(DpcliError, match="same length"):
        dp.influence(np.zeros((4, 2)), np.zeros(3, int))
    with pytest.raises(DpcliError, match="needs labels"):
        dp.prune(np.zeros((4, 2)), count=1, balance=True)
