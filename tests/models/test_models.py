"""dpcli.models: shapes, feature dims, forward == head(features), init determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpcli.errors import DpcliError
from dpcli.models.zoo import ARCHS, Classifier, build_model

# CIFAR-style ResNets with a 10-way head (the standard kuangliu/pytorch-cifar counts).
EXPECTED = {"convnet": (512, None), "resnet18": (512, 11_173_962), "resnet50": (2048, 23_520_842)}


@pytest.fixture(scope="module")
def cifar_models() -> dict[str, Classifier]:
    torch.manual_seed(0)
    return {arch: build_model(arch, 10, 3, 32).eval() for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_feature_dims_and_head(cifar_models, arch):
    model = cifar_models[arch]
    dim, n_params = EXPECTED[arch]
    assert isinstance(model, Classifier) and model.arch == arch and model.feature_dim == dim
    assert isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (dim, 10)
    if n_params is not None:
        assert sum(p.numel() for p in model.parameters()) == n_params
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = model.features(x)
        out = model(x)
    assert feats.shape == (2, dim) and out.shape == (2, 10)
    torch.testing.assert_close(out, model.head(feats), rtol=0, atol=0)
    torch.testing.assert_close(out, feats @ model.head.weight.T + model.head.bias)


def test_convnet_digits_sizes():
    x = torch.randn(3, 1, 8, 8)
    # 8 -> 4 -> 2 -> 1, then pooling is skipped
    for depth, spatial in ((1, 4), (2, 2), (3, 1), (4, 1)):
        model = build_model("convnet", 10, 1, 8, width=16, depth=depth)
        assert model.feature_dim == 16 * spatial**2
        assert model.features(x).shape == (3, 16 * spatial**2) and model(x).shape == (3, 10)
    convs = [m for m in build_model("convnet", 10, 1, 8, width=16, depth=4).modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and convs[0].in_channels == 1 and all(c.out_channels == 16 for c in convs)
    assert build_model("convnet", 7, 3, 32, width=8, depth=2).feature_dim == 8 * 8 * 8


def test_resnets_accept_small_grayscale_inputs():
    x = torch.randn(2, 1, 8, 8)
    model = build_model("resnet18", 4, 1, 8, width=999, depth=999)  # width/depth ignored
    assert model.features(x).shape == (2, 512) and model(x).shape == (2, 4)
    # CIFAR stem: 3x3 stride 1, no max-pool
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_gradients_reach_features_and_head():
    model = build_model("convnet", 10, 1, 8)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert model.head.weight.grad is not None and model.body[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["convnet", "resnet18"])
def test_init_is_deterministic_given_seed(arch):
    def params(seed):
        torch.manual_seed(seed)
        return build_model(arch, 10, 3, 16).state_dict()

    a, b, c = params(5), params(5), params(6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_bad_arguments_are_user_errors():
    with pytest.raises(DpcliError) as err:
        build_model("vgg16", 10, 3, 32)
    assert "vgg16" in str(err.value) and all(a in str(err.value) for a in ARCHS)
    with pytest.raises(DpcliError):
        build_model("convnet", 10, 3, 32, width=0)
    with pytest.raises(DpcliError):
        build_model("convnet", 10, 3, 32, depth=0)
    with pytest.raises(DpcliError):
        build_model("convnet", 0, 3, 32)
    assert build_model(" ConvNet ", 10, 3, 32).arch == "convnet"
