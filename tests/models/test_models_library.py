"""Library models: head detection on every torchvision classification family, --weights files,
timm (installed here: a tiny random-weights model), and the one-line errors."""

from __future__ import annotations

import json
import re
import urllib.error

import pytest
import torch
from torch import nn

from dpcli.errors import DpcliError
from dpcli.models.library import LibraryClassifier, find_head, split_head
from dpcli.models.zoo import build_model
from tests.conftest import run_cli

# one member of every torchvision classification family -> where its last linear layer is
FAMILIES = {
    "alexnet": "classifier.6",
    "convnext_tiny": "classifier.2",
    "densenet121": "classifier",
    "efficientnet_b0": "classifier.1",
    "efficientnet_v2_s": "classifier.1",
    "googlenet": "fc",
    "inception_v3": "fc",
    "maxvit_t": "classifier.5",
    "mnasnet0_5": "classifier.1",
    "mobilenet_v2": "classifier.1",
    "mobilenet_v3_small": "classifier.3",
    "regnet_x_400mf": "fc",
    "regnet_y_400mf": "fc",
    "resnet18": "fc",
    "resnext50_32x4d": "fc",
    "shufflenet_v2_x0_5": "fc",
    "swin_t": "head",
    "swin_v2_t": "head",
    "vgg11": "classifier.6",
    "vit_b_32": "heads.head",
    "wide_resnet50_2": "fc",
}


def test_every_torchvision_family_is_listed():
    import torchvision.models as tvm

    def family(name: str) -> str:
        return re.match(r"[a-z]+", name).group()

    families = {family(name) for name in tvm.list_models(module=tvm)}
    covered = {family(name) for name in FAMILIES} | {"squeezenet"}
    assert families <= covered, families - covered


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_head_detection_and_split(name):
    """Built on the meta device (shapes only, no memory), except RegNet whose init needs real tensors."""
    import torchvision.models as tvm

    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    device = "cpu" if name.startswith("regnet") else "meta"
    with torch.device(device):
        net = tvm.get_model(name, weights=None, **kwargs)
        assert find_head(net) == FAMILIES[name]
        old = net.get_submodule(FAMILIES[name])
        model = LibraryClassifier(net, 7, f"torchvision:{name}")
        size = 299 if name == "inception_v3" else 224
        x = torch.zeros(2, 3, size, size)
        model.eval()
        feats = model.features(x)
        out = model(x)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 7
    assert feats.shape == (2, old.in_features) and out.shape == (2, 7)


def test_squeezenet_has_no_linear_head():
    with pytest.raises(DpcliError, match="--head-module"):
        build_model("torchvision:squeezenet1_1", 10, 3, 32)
    with pytest.raises(DpcliError, match="not .*an nn.Linear"):
        build_model("torchvision:squeezenet1_1", 10, 3, 32, head_module="classifier.1")


def test_features_are_the_head_input_of_the_original_network():
    import torchvision.models as tvm

    torch.manual_seed(0)
    net = tvm.resnet18(num_classes=5).eval()
    seen = {}
    net.fc.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = net(x)
        body, head = split_head(net)
        feats = body(x)
    torch.testing.assert_close(feats, seen["x"])
    torch.testing.assert_close(head(feats), logits)
    assert isinstance(net.fc, nn.Linear)  # the user's model is left intact


def test_head_module_override():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 6)
            self.out_layer = nn.Linear(6, 3)

        def forward(self, x):
            return self.out_layer(torch.relu(self.body(x)))

    with pytest.raises(DpcliError, match="--head-module NAME"):
        find_head(Odd())
    assert find_head(Odd(), "out_layer") == "out_layer"
    with pytest.raises(DpcliError, match="no submodule"):
        find_head(Odd(), "nope")


def test_weights_file_round_trip_and_mismatch(tmp_path):
    import torchvision.models as tvm

    torch.manual_seed(3)
    src = tvm.resnet18()
    torch.save(src.state_dict(), tmp_path / "r18.pt")
    model = build_model("torchvision:resnet18", 10, 3, 32, weights=str(tmp_path / "r18.pt"))
    for name, p in src.named_parameters():
        if not name.startswith("fc."):
            torch.testing.assert_close(model.body.get_parameter(name), p, rtol=0, atol=0)
    assert model.head.out_features == 10
    torch.save(tvm.resnet34().state_dict(), tmp_path / "r34.pt")
    with pytest.raises(DpcliError, match="does not fit torchvision:resnet18"):
        build_model("torchvision:resnet18", 10, 3, 32, weights=str(tmp_path / "r34.pt"))
    with pytest.raises(DpcliError, match="no such file"):
        build_model("torchvision:resnet18", 10, 3, 32, weights=str(tmp_path / "missing.pt"))


def test_offline_download_says_how_to_pass_a_file(monkeypatch):
    import torchvision.models as tvm

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvm, "get_model", offline)
    with pytest.raises(DpcliError, match="--weights PATH"):
        build_model("torchvision:resnet18", 10, 3, 32, weights="DEFAULT")
    with pytest.raises(DpcliError, match="not a weights name"):
        build_model("torchvision:resnet18", 10, 3, 32, weights="NO_SUCH_V9")


def test_unknown_names_list_close_matches(monkeypatch):
    with pytest.raises(DpcliError, match="close matches: resnet18"):
        build_model("torchvision:resnet81", 10, 3, 32)
    pytest.importorskip("timm")
    with pytest.raises(DpcliError, match="unknown timm model 'test_resnett'.*test_resnet"):
        build_model("timm:test_resnett", 10, 3, 32)
    import importlib

    real = importlib.import_module

    def no_timm(name, *a, **k):
        if name == "timm":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_timm)
    with pytest.raises(DpcliError, match=r'pip install "dpcli\[timm\]"'):
        build_model("timm:test_resnet", 10, 3, 32)


def test_timm_head_via_get_classifier():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build_model("timm:test_resnet", 4, 1, 16)
    x = torch.randn(2, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.features(x)))
    assert model.head.out_features == 4


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "timm:test_resnet"])
def test_library_model_through_the_pipeline(tmp_path, capsys, arch):
    """train -> influence -> prune -> retrain on the offline digits data, random weights, 1 epoch."""
    if arch.startswith("timm"):
        pytest.importorskip("timm")
    ck, inf, mask = tmp_path / "ck.h5", tmp_path / "inf.h5", tmp_path / "mask.h5"
    common = ["--epochs", "1", "--device", "cpu", "--quiet"]
    assert run_cli(["train", "digits", "--arch", arch, "--out", ck, *common]) == (0, "", "")
    assert run_cli(["influence", ck, "--out", inf, "--device", "cpu", "--quiet"])[0] == 0
    assert run_cli(["prune", inf, "--prune-ratio", "0.2", "--out", mask, "--quiet"])[0] == 0
    code, out, err = run_cli(
        ["retrain", "digits", "--mask", mask, "--out", tmp_path / "re.h5", *common, "--json"], capsys
    )
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["arch"] == arch and metrics["n_pruned"] == round(0.2 * metrics["n_pruned"] / 0.2)


def test_freeze_backbone_cli(tmp_path, capsys):
    code, out, err = run_cli(
        [
            "train",
            "digits",
            "--arch",
            "torchvision:resnet18",
            "--freeze-backbone",
            "--out",
            tmp_path / "ck.h5",
            "--device",
            "cpu",
            "--json",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    inf = json.loads(out)["influence"]
    assert run_cli(["prune", inf, "--prune-ratio", "0.1", "--out", tmp_path / "m.h5", "--quiet"])[0] == 0
    code, out, err = run_cli(["retrain", "digits", "--mask", tmp_path / "m.h5", "--json", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads(out)["head_grad_norm"] < 1e-6
