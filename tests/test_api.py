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
        w, b = theta[: c * dim].reshape(c, dim), theta[c * dim :]
        return torch.nn.functional.cross_entropy(xs @ w.T + b, ys)

    H = torch.autograd.functional.hessian(lambda t: loss(t, X, Y), theta0) + lam * torch.eye(
        theta0.numel(), dtype=torch.float64
    )
    G = torch.stack(
        [torch.autograd.functional.jacobian(lambda t: loss(t, X[i : i + 1], Y[i : i + 1]), theta0) for i in range(n)]  # noqa: B023
    )
    expected = torch.linalg.solve(H, G.T).T / n
    np.testing.assert_allclose(S, expected.numpy(), rtol=1e-4, atol=1e-7)
    assert head.grad_norm <= 1e-7


def test_prune_count_is_brute_force_optimal_and_certified():
    rng = np.random.default_rng(1)
    S = rng.normal(size=(10, 4)).astype(np.float32)
    sel = dp.prune(S, prune_count=3, solver="brute")
    best = min(np.linalg.norm(S[list(c)].astype(np.float64).sum(0)) for c in itertools.combinations(range(10), 3))
    assert len(sel.pruned_indices) == 3 and abs(sel.norm - best) < 1e-9
    assert abs(sel.norm - np.linalg.norm(S[sel.pruned_indices].astype(np.float64).sum(0))) < 1e-12


def test_prune_epsilon_is_honoured_and_matches_the_cli_default(tmp_path):
    x, y = _problem(n=80, seed=2)
    S, _ = dp.influence(x, y)
    whole = float(np.linalg.norm(S.astype(np.float64).sum(0)))
    with pytest.raises(DpcliError, match="every one of the 80 samples would be pruned"):
        dp.prune(S, epsilon=0.02)  # above the whole set's norm (0.0085): a mask keeping nothing is refused
    eps = 0.99 * whole
    sel = dp.prune(S, epsilon=eps)
    assert np.linalg.norm(S[~sel.keep].astype(np.float64).sum(0)) <= eps and (~sel.keep).any() and sel.keep.any()
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
        dp.prune(np.zeros((4, 2)), prune_count=1, balance=True)


# --------------------------------------------------------------------------- keywords, errors, reprs
def test_keywords_are_the_cli_flags():
    """Every keyword of the API that is also a CLI option has the flag's name (underscores for dashes)."""
    import inspect

    from dpcli.cli import influence as influence_cmd
    from dpcli.cli import prune as prune_cmd
    from dpcli.cli import train as train_cmd

    def flags(command) -> set[str]:
        return set(inspect.signature(command).parameters)

    cli = flags(prune_cmd.command) | flags(influence_cmd.command) | flags(train_cmd.command)
    own = {
        "S",
        "features",
        "labels",
        "out",
        "keep",
        "model",
        "inputs",
        "progress",
        "num_classes",
        "tol",
        "max_iter",
        "test_features",
        "test_labels",
    }  # inputs and API-only settings
    for func in (dp.influence, dp.influence_file, dp.prune, dp.refit, dp.embed):
        names = set(inspect.signature(func).parameters)
        assert names - own <= cli, (func.__name__, names - own - cli)
    assert {
        "prune_ratio",
        "prune_count",
        "epsilon",
        "method",
        "solver",
        "solver_seed",
        "balance",
        "time_budget",
    } <= set(inspect.signature(dp.prune).parameters)
    assert {"estimator", "damping", "sketch", "sketch_seed", "cg_tol", "cg_max_iter"} <= set(
        inspect.signature(dp.influence).parameters
    )


def _mlp(d_in: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(d_in, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))


class _Stream(torch.utils.data.IterableDataset):
    """A dataset without a length: embed cannot size its output up front."""

    def __iter__(self):
        return iter([torch.zeros(3)] * 4)


_X, _Y = _problem(n=30)
_S = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
_NAN = _X.copy()
_NAN[3, 1] = np.nan

BAD = [  # (function, args, kwargs, a fragment of the one-line message)
    (dp.influence, (_X[:, 0], _Y), {}, "2-D"),
    (dp.influence, (_X.astype(str), _Y), {}, "real numbers"),
    (dp.influence, (_NAN, _Y), {}, "NaN or inf"),
    (dp.influence, ([[1.0, 2.0], [3.0]], _Y[:2]), {}, "not an array"),
    (dp.influence, (np.zeros((0, 3)), _Y[:0]), {}, "empty"),
    (dp.influence, (_X, _Y[:-1]), {}, "same length"),
    (dp.influence, (_X, _Y - 1), {}, "labels must lie in"),
    (dp.influence, (_X, _Y + 0.5), {}, "labels must be integer"),
    (dp.influence, (_X, 3), {}, "scalar"),
    (dp.influence, (_X, _Y), {"damping": -1.0}, "--damping"),
    (dp.influence, (_X, _Y), {"damping": "1e-3"}, "damping must be a number"),
    (dp.influence, (_X, _Y), {"estimator": "exactly"}, "exact"),
    (dp.influence, (_X, _Y), {"estimator": None}, "estimator must be a name"),
    (dp.influence, (_X, _Y), {"sketch": 0}, "--sketch"),
    (dp.influence, (None, _Y), {}, "features is required"),
    (dp.influence, (_X, None), {}, "labels is required"),
    (dp.prune, (None,), {"prune_ratio": 0.5}, "S is required"),
    (dp.prune, (_S[:, 0],), {"prune_ratio": 0.5}, "2-D"),
    (dp.prune, (_S.astype(str),), {"prune_ratio": 0.5}, "real numbers"),
    (dp.prune, (np.where(np.eye(30, 6) > 0, np.nan, _S),), {"prune_ratio": 0.5}, "NaN or inf"),
    (dp.prune, (_S,), {}, "one of"),
    (dp.prune, (_S,), {"prune_ratio": 0.5, "epsilon": 0.1}, "one of"),
    (dp.prune, (_S,), {"prune_ratio": 1.5}, "--prune-ratio"),
    (dp.prune, (_S,), {"prune_ratio": "half"}, "prune_ratio must be a number"),
    (dp.prune, (_S,), {"prune_count": 30}, "--prune-count"),
    (dp.prune, (_S,), {"prune_count": 31}, "--prune-count"),
    (dp.prune, (_S,), {"epsilon": float("nan")}, "--epsilon"),
    (dp.prune, (_S,), {"epsilon": -0.1}, "--epsilon"),
    (dp.prune, (_S,), {"prune_ratio": 0.5, "labels": _Y[:10]}, "same length"),
    (dp.prune, (_S,), {"prune_ratio": 0.5, "labels": _Y.astype(float) + 0.5}, "labels must be integer"),
    (dp.prune, (_S,), {"prune_ratio": 0.5, "features": _X[:10], "labels": _Y}, "rows"),
    (dp.prune, (_S,), {"prune_ratio": 0.5, "features": _NAN, "labels": _Y}, "NaN or inf"),
    (dp.prune, (_S,), {"prune_ratio": 0.5, "method": "clever"}, "clever"),
    (dp.prune, (_S,), {"prune_ratio": 0.5, "solver": "fast"}, "fast"),
    (dp.prune, (_S,), {"prune_count": 2, "balance": True}, "needs labels"),
    (dp.refit, (_X, _Y, np.ones(29, bool)), {}, "shape"),
    (dp.refit, (_X, _Y, np.arange(30) % 2), {}, "boolean mask"),
    (dp.refit, (_X, _Y, np.zeros(30, bool)), {}, "keeps no samples"),
    (dp.refit, (_NAN, _Y, np.ones(30, bool)), {}, "NaN or inf"),
    (dp.refit, (_X, _Y, np.ones(30, bool)), {"test_features": _X}, "both test features and test labels"),
    (dp.refit, (_X, None, np.ones(30, bool)), {}, "labels is required"),
    (dp.refit, (_X, _Y, np.ones(30, bool)), {"damping": 0.0}, "damping"),
    (dp.embed, (torch.nn.Linear(3, 2), _X), {"batch_size": 0}, "batch_size"),
    (dp.embed, (torch.nn.Linear(3, 2), _X), {"device": "tpu"}, "--device"),
    (dp.embed, ("resnet", _X), {}, "torch.nn.Module"),
    (dp.embed, (_mlp(4), _X), {"head_module": "2"}, "the model failed on a batch of shape (30, 3)"),
    (dp.embed, (_mlp(3), np.array(["a", "b"])), {"head_module": "2"}, "inputs must be"),
    (dp.embed, (_mlp(3), torch.utils.data.TensorDataset(torch.zeros(0, 3))), {"head_module": "2"}, "empty"),
    (dp.embed, (_mlp(3), _X), {}, "no last linear layer"),
    (dp.embed, (_mlp(3), _Stream()), {"head_module": "2"}, "map-style Dataset"),
]


@pytest.mark.parametrize(
    "func, args, kwargs, fragment", BAD, ids=[f"{f.__name__}-{i}" for i, (f, *_rest) in enumerate(BAD)]
)
def test_bad_input_is_one_dpcli_error_line(func, args, kwargs, fragment):
    with pytest.raises(DpcliError) as caught:
        func(*args, **kwargs)
    message = str(caught.value)
    assert fragment in message and "\n" not in message and message.strip() == message, message


def test_reprs_are_one_short_line():
    x, y = _problem(n=400, dim=40, c=4, seed=5)
    S, head = dp.influence(x, y)
    sel = dp.prune(S, prune_ratio=0.25, labels=y, method="optimization")
    refit = dp.refit(x, y, sel, test_features=x[:50], test_labels=y[:50])
    for obj, start in ((sel, "Selection("), (head, "HeadFit("), (refit, "Refit(")):
        text = repr(obj)
        assert text.startswith(start) and "\n" not in text and len(text) < 300, text
    assert f"n=400, kept={sel.n_kept}, pruned=100, norm={sel.norm:.6g}" in repr(sel)
    assert "classes=4, dim=40" in repr(head) and f"grad_norm={head.grad_norm:.3g}" in repr(head)
    assert f"test_accuracy={refit.test_accuracy:.2f}%" in repr(refit)


def test_refit_takes_a_selection_or_its_mask():
    x, y = _problem(n=60, seed=4)
    S, _ = dp.influence(x, y)
    sel = dp.prune(S, prune_count=20)
    a, b = dp.refit(x, y, sel), dp.refit(x, y, sel.keep)
    torch.testing.assert_close(a.head.weight, b.head.weight, atol=0, rtol=0)


def test_embed_reads_an_image_folder_dataset_like_a_direct_forward_pass(tmp_path):
    """`embed(model, ImageFolder(root, transform))`: items (x, y), batched by a DataLoader, in the dataset's
    order; equal to the head's input captured from the model's own forward pass on the stacked images."""
    from PIL import Image
    from torchvision import datasets, transforms

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3 if c == "cat" else 4):
            Image.fromarray(rng.integers(0, 255, (10 + i, 12, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    tf = transforms.Compose([transforms.Resize((8, 8)), transforms.ToTensor()])
    folder = datasets.ImageFolder(tmp_path, transform=tf)
    torch.manual_seed(0)
    net = torch.nn.Sequential()
    net.add_module("conv", torch.nn.Conv2d(3, 4, 3))
    net.add_module("pool", torch.nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", torch.nn.Flatten())
    net.add_module("fc", torch.nn.Linear(4, 2))
    seen = {}
    net.fc.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    with torch.no_grad():
        net(torch.stack([folder[i][0] for i in range(len(folder))]))
    feats = dp.embed(net, folder, batch_size=3)
    assert feats.shape == (7, 4)
    np.testing.assert_allclose(feats, seen["x"].numpy(), rtol=1e-5, atol=1e-6)
    # items that are x alone, and an ImageFolder without a transform (PIL images) is one line
    xs = torch.utils.data.Subset([folder[i][0] for i in range(len(folder))], range(len(folder)))
    np.testing.assert_allclose(dp.embed(net, xs, batch_size=2), feats, rtol=1e-6, atol=1e-7)
    with pytest.raises(DpcliError, match="ToTensor"):
        dp.embed(net, datasets.ImageFolder(tmp_path))


def test_prune_warns_of_a_skewed_class_share_like_the_cli():
    """The API says what the CLI says when a class's kept share strays more than 2x from its training share."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), (20, 40, 60))
    S = rng.normal(size=(len(y), 6)).astype(np.float32)
    S[y == 2] *= 1e-4  # near-zero rows: the unconstrained solve prunes them first
    with pytest.warns(UserWarning, match="more than 2x away") as warned:
        sel = dp.prune(S, prune_ratio=0.4, labels=y, method="optimization")
    kept, train = np.bincount(y[sel.keep], minlength=3), np.bincount(y, minlength=3)
    ratio = (kept / kept.sum()) / (train / train.sum())  # the recount
    assert [c for c in range(3) if ratio[c] < 0.5 or ratio[c] > 2] == [2]
    assert f"class 2 at {ratio[2]:.2f}x" in " ".join(str(w.message) for w in warned)
