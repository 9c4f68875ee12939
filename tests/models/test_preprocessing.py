"""Pretrained weights' own preprocessing reaches every stage that reads images.

The tensors a stage feeds the model are compared with an independent application of the library's
eval transforms (torchvision's ``weights.transforms()``, timm's ``create_transform``) on the same PIL
images.  Nothing is downloaded: the weights' metadata are local, and where weights are loaded the
download is replaced by a random state dict of the right shape.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dpcli.data import layouts
from dpcli.models import preprocess
from dpcli.models.library import LibraryClassifier
from tests.conftest import run_cli

SIZES = [(300, 260), (180, 400), (97, 130), (256, 256), (410, 233), (150, 150), (260, 300), (200, 120)]


def image_folder(root, sizes=SIZES, seed=0):
    """train/ and test/ with two classes of RGB PNGs of mixed sizes (lossless: both sides read the same pixels)."""
    rng = np.random.default_rng(seed)
    for k, (w, h) in enumerate(sizes):
        split = "test" if k % 4 == 3 else "train"
        folder = root / split / f"c{k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // w), (yy * 255 // h), rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
        Image.fromarray(img).save(folder / f"im{k}.png")
    return root


def expected(root, split: str, transform) -> torch.Tensor:
    files = [p for p, _ in getattr(layouts.scan(root.resolve()), split)]
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in files])


@pytest.fixture
def recorded(monkeypatch):
    """Every input batch a library model's feature extractor sees, in order."""
    seen: list[torch.Tensor] = []
    original = LibraryClassifier.features

    def features(self, x):
        seen.append(x.detach().clone())
        return original(self, x)

    monkeypatch.setattr(LibraryClassifier, "features", features)
    return seen


@pytest.fixture
def offline_weights(monkeypatch):
    """The weights 'download' returns a random state dict of the architecture (no network)."""
    import torchvision.models as tvm
    from torchvision.models._api import WeightsEnum

    def get_state_dict(self, *args, **kwargs):
        name = type(self).__name__.replace("_Weights", "").lower()
        torch.manual_seed(0)
        return tvm.get_model(name, weights=None).state_dict()

    monkeypatch.setattr(WeightsEnum, "get_state_dict", get_state_dict)


def test_resolve_reads_the_weights_metadata_and_the_precedence():
    import torchvision.models as tvm

    t = tvm.EfficientNet_B0_Weights.IMAGENET1K_V1.transforms()
    spec = preprocess.resolve("torchvision:efficientnet_b0", "IMAGENET1K_V1")
    assert (spec.crop, spec.resize, spec.interpolation) == (t.crop_size[0], t.resize_size[0], "bicubic")
    assert spec.mean == tuple(t.mean) and spec.std == tuple(t.std)
    assert preprocess.resolve("torchvision:efficientnet_b0", "DEFAULT") == spec
    # an explicit --image-size sets the size; the normalization stays the weights'
    own = preprocess.resolve("torchvision:efficientnet_b0", "DEFAULT", image_size=64)
    assert (own.crop, own.resize, own.interpolation, own.mean) == (64, 73, "bilinear", spec.mean)
    assert preprocess.explicit_size(own) and not preprocess.explicit_size(spec)
    # no weights, or a local state-dict file: no metadata, dpcli's defaults
    assert preprocess.resolve("torchvision:resnet18", None) is None
    assert preprocess.resolve("torchvision:resnet18", "./resnet18.pth") is None
    assert preprocess.from_dict(json.loads(json.dumps(preprocess.to_dict(spec)))) == spec


def test_train_and_influence_feed_the_model_what_weights_transforms_give(tmp_path, recorded, offline_weights):
    """train (evaluation), influence (features of the checkpoint, spec read from its lineage) and
    --freeze-backbone feed the network exactly weights.transforms() of the PIL images."""
    import torchvision.models as tvm

    root = image_folder(tmp_path / "imgs")
    t = tvm.MobileNet_V3_Small_Weights.DEFAULT.transforms()
    want = {s: expected(root, s, t) for s in ("train", "test")}
    common = ["--data-root", tmp_path / "data", "--device", "cpu", "--quiet"]
    ck = tmp_path / "run" / "checkpoint.h5"
    code, _, _ = run_cli(
        [
            "train",
            f"imagefolder:{root}",
            "--arch",
            "torchvision:mobilenet_v3_small",
            "--weights",
            "DEFAULT",
            "--epochs",
            "1",
            "--batch-size",
            "3",
            "--no-augment",
            "--out",
            ck,
            *common,
        ]
    )
    assert code == 0
    # one epoch of training (3 batches, no augmentation), then the test-set evaluation
    torch.testing.assert_close(torch.cat(recorded[-1:]), want["test"], atol=1e-6, rtol=0)
    got = torch.cat(recorded[:2])  # shuffled: each row equals one expected row
    dist = (got.flatten(1)[:, None, :] - want["train"].flatten(1)[None]).abs().amax(2)
    assert sorted(dist.argmin(1).tolist()) == list(range(len(want["train"]))) and float(dist.amin(1).max()) < 1e-6
    from dpcli.train.checkpoint import load_checkpoint

    lineage = load_checkpoint(ck, weights=False).lineage
    assert preprocess.from_dict(lineage["preprocessing"]) == preprocess.resolve(
        "torchvision:mobilenet_v3_small", "DEFAULT"
    )
    assert load_checkpoint(ck, weights=False).config.image_size is None
    # influence reloads the data with the spec in the checkpoint's lineage (not the library's, broken here)
    recorded.clear()
    from dpcli.models.sources.torchvision import TorchVision

    def broken(self, *a, **k):
        raise AssertionError("later stages must read the preprocessing from the checkpoint")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TorchVision, "preprocessing", broken)
        code, _, _ = run_cli(["influence", ck, "--out", tmp_path / "run" / "influence.h5", *common])
    assert code == 0
    torch.testing.assert_close(torch.cat(recorded)[: len(want["train"])], want["train"], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat(recorded)[len(want["train"]) :], want["test"], atol=1e-6, rtol=0)
    # the frozen-backbone path: features of both splits from the same inputs, the spec in the lineage
    recorded.clear()
    code, _, _ = run_cli(
        [
            "train",
            f"imagefolder:{root}",
            "--arch",
            "torchvision:mobilenet_v3_small",
            "--weights",
            "DEFAULT",
            "--freeze-backbone",
            "--out",
            tmp_path / "frozen" / "checkpoint.h5",
            *common,
        ]
    )
    assert code == 0
    torch.testing.assert_close(torch.cat(recorded), torch.cat([want["train"], want["test"]]), atol=1e-6, rtol=0)
    import h5py

    with h5py.File(tmp_path / "frozen" / "influence.h5", "r") as f:
        assert json.loads(f.attrs["lineage"])["preprocessing"]["resize"] == 256


def test_timm_pretrained_cfg_matches_timm_eval_transform(tmp_path):
    """timm: the spec from the pretrained config gives what timm's own eval transform gives."""
    timm = pytest.importorskip("timm")
    from dpcli.data.sources import iterate_batches
    from dpcli.stages import pipeline

    root = image_folder(tmp_path / "imgs", seed=1)
    spec = preprocess.resolve("timm:resnet10t", "DEFAULT")
    cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg("resnet10t").to_dict())
    assert cfg["interpolation"] == "bicubic" and spec.crop == cfg["input_size"][1]
    ds = pipeline.load(f"imagefolder:{root}", tmp_path / "data", spec=spec)
    got = torch.cat(
        [
            x
            for x, _, _ in iterate_batches(
                ds.test, 8, mean=ds.mean, std=ds.std, device="cpu", shuffle=False, augment=False
            )
        ]
    )
    torch.testing.assert_close(got, expected(root, "test", timm.data.create_transform(**cfg)), atol=1e-6, rtol=0)


def test_cifar_and_digits_keep_their_size_and_take_the_weights_normalization(tmp_path):
    from dpcli.stages import pipeline

    spec = preprocess.resolve("torchvision:resnet18", "DEFAULT")
    ds = pipeline.load("digits", None, spec=spec)
    assert ds.train.out_size == 8 and ds.input == spec
    # grey images into an RGB network: the channel average of the weights' statistics
    assert ds.mean == (pytest.approx(np.mean(spec.mean)),) and ds.std == (pytest.approx(np.mean(spec.std)),)
