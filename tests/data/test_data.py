"""dpcli.data: loaders (digits, imagefolder, cifar error path), fingerprint, batches.

Nothing here downloads anything; CIFAR is only exercised on its error path.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dpcli.data.cache as cache
import dpcli.data.imageio as imageio
import dpcli.data.sources as data
from dpcli.data.sources import Dataset, Split, augment_pad, default_data_root, iterate_batches, load_dataset
from dpcli.errors import DpcliError

# Pinned (computed in another process, so this also checks stability across processes): changes
# only if the digits scaling, the fixed split or the fingerprint recipe change.
DIGITS_FINGERPRINT = "8f1874b87c1d566e"


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


# --------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_scaling(digits):
    from sklearn.datasets import load_digits

    assert digits.name == "digits"
    assert digits.train.images.shape == (1438, 8, 8, 1)
    assert digits.test.images.shape == (359, 8, 8, 1)
    for split in (digits.train, digits.test):
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int64
        assert split.labels.min() == 0 and split.labels.max() == 9
    assert (digits.num_classes, digits.channels, digits.image_size) == (10, 1, 8)
    assert digits.classes == tuple("0123456789")
    assert digits.augment is False
    # Pixel values are exactly (v * 255 + 8) // 16 of sklearn's 0..16 values, and the
    # two splits together are a re-ordering of sklearn's samples.
    raw = load_digits()
    scaled = ((raw.images.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)
    assert scaled.max() == 255 and set(np.unique(scaled)) <= {(v * 255 + 8) // 16 for v in range(17)}
    both = np.concatenate([digits.train.images[..., 0], digits.test.images[..., 0]]).reshape(1797, -1)
    both_labels = np.concatenate([digits.train.labels, digits.test.labels])
    key = lambda imgs, labs: sorted(zip(labs.tolist(), map(bytes, imgs)))  # noqa: E731
    assert key(both, both_labels) == key(scaled.reshape(1797, -1), raw.target)
    # mean / std from the train split, in [0, 1] units
    train01 = digits.train.images.astype(np.float64) / 255
    assert digits.mean == pytest.approx((train01.mean(),), abs=1e-12)
    assert digits.std == pytest.approx((train01.std(),), abs=1e-12)


def test_digits_split_is_stratified(digits):
    train_counts = np.bincount(digits.train.labels, minlength=10)
    test_counts = np.bincount(digits.test.labels, minlength=10)
    totals = train_counts + test_counts
    assert totals.tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert test_counts.tolist() == [int(n * 0.2 + 0.5) for n in totals]
    # class proportions agree between the splits to within one sample per class
    assert np.all(np.abs(test_counts / test_counts.sum() - train_counts / train_counts.sum()) < 1 / 359)


def test_digits_split_and_fingerprint_are_deterministic(digits):
    again = load_dataset("Digits")  # names are case-insensitive
    assert again.name == "digits"
    for a, b in ((digits.train, again.train), (digits.test, again.test)):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert digits.fingerprint == again.fingerprint == data.dataset_fingerprint(digits) == DIGITS_FINGERPRINT
    assert digits.__dict__["_fingerprint"] == DIGITS_FINGERPRINT  # cached on the object


def test_fingerprint_changes_with_one_label_or_one_pixel(digits):
    labels = digits.train.labels.copy()
    labels[100] = (labels[100] + 1) % 10
    relabeled = dataclasses.replace(digits, train=Split(digits.train.images, labels))
    images = digits.train.images.copy()
    images[5, 3, 3, 0] ^= 1
    repixeled = dataclasses.replace(digits, train=Split(images, digits.train.labels))
    fps = {digits.fingerprint, relabeled.fingerprint, repixeled.fingerprint}
    assert len(fps) == 3 and all(len(f) == 16 and int(f, 16) >= 0 for f in fps)
    # the test split does not enter the fingerprint
    other_test = dataclasses.replace(digits, test=Split(digits.test.images[:10], digits.test.labels[:10]))
    assert other_test.fingerprint == digits.fingerprint


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DpcliError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert "'mnist'" in msg and "digits" in msg and "cifar10" in msg and "cifar100" in msg and "imagefolder:" in msg
    with pytest.raises(DpcliError):
        load_dataset("imagefolder:")


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DPCLI_DATA", str(tmp_path / "d"))
    assert default_data_root() == tmp_path / "d"
    monkeypatch.delenv("DPCLI_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_root() == tmp_path / "xdg" / "dpcli" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_root() == tmp_path / "home" / ".cache" / "dpcli" / "data"


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_without_files_and_no_download_is_a_user_error(tmp_path, name):
    with pytest.raises(DpcliError) as err:
        load_dataset(name, data_root=tmp_path / "nothing", download=False)
    msg = str(err.value)
    assert str(tmp_path / "nothing") in msg and "imagefolder:" in msg and "\n" not in msg
    assert not (tmp_path / "nothing").exists()  # nothing created without download


# --------------------------------------------------------------------------- imagefolder

CLASSES = ("ant", "bee", "cat")


def _pixels(label: int, k: int, size: int = 6, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(1000 * label + k)
    shape = (size, size, channels) if channels == 3 else (size, size)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def make_folder(root: Path, n_train: int = 4, n_test: int = 2, test_name: str = "test", gray: bool = False):
    """3 classes; returns the expected (images, labels) per split in load order."""
    expected = {}
    for split, n, offset in (("train", n_train, 0), (test_name, n_test, 100)):
        imgs, labels = [], []
        for label, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True)
            for k in range(n):
                arr = _pixels(label, offset + k, channels=1 if gray else 3)
                Image.fromarray(arr).save(root / split / cls / f"img{k:02d}.png")
                imgs.append(arr[..., None] if gray else arr)
                labels.append(label)
        shape = (0, 6, 6, 1 if gray else 3)
        expected[split] = (np.stack(imgs) if imgs else np.zeros(shape, np.uint8), np.array(labels))
    return expected


def test_imagefolder_decodes_exact_pixels_and_caches(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    expected = make_folder(folder)
    cache_root = tmp_path / "data"
    calls = []
    ds = load_dataset(f"imagefolder:{folder}", data_root=cache_root, progress=lambda d, t: calls.append((d, t)))
    assert ds.name == f"imagefolder:{folder.resolve()}"
    assert ds.classes == CLASSES and ds.num_classes == 3 and ds.channels == 3 and ds.image_size == 6
    assert ds.augment is True
    np.testing.assert_array_equal(ds.train.images, expected["train"][0])
    np.testing.assert_array_equal(ds.train.labels, expected["train"][1])
    np.testing.assert_array_equal(ds.test.images, expected["test"][0])
    np.testing.assert_array_equal(ds.test.labels, expected["test"][1])
    assert ds.train.images.shape == (12, 6, 6, 3) and ds.test.images.shape == (6, 6, 6, 3)
    per_channel = expected["train"][0].reshape(-1, 3).astype(np.float64) / 255
    assert ds.mean == pytest.approx(tuple(per_channel.mean(0)), abs=1e-12)
    assert ds.std == pytest.approx(tuple(per_channel.std(0)), abs=1e-12)
    assert calls[0] == (0, 18) and calls[-1] == (18, 18)

    cache_files = list((cache_root / "imagefolder-cache").iterdir())
    assert len(cache_files) == 1 and cache_files[0].suffix == ".h5"  # no temp file left behind

    def broken(path, side, gray):
        raise AssertionError("the second load must come from the cache")

    monkeypatch.setattr(imageio, "decode", broken)
    again = load_dataset(f"imagefolder:{folder}", data_root=cache_root)
    assert again.name == ds.name and again.classes == ds.classes
    assert again.mean == ds.mean and again.std == ds.std
    np.testing.assert_array_equal(again.train.images, ds.train.images)
    np.testing.assert_array_equal(again.test.labels, ds.test.labels)
    assert again.fingerprint == ds.fingerprint


def test_imagefolder_cache_invalidated_when_a_file_changes(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    make_folder(folder)
    cache_root = tmp_path / "data"
    first = load_dataset(f"imagefolder:{folder}", data_root=cache_root)
    target = folder / "train" / "bee" / "img01.png"
    new = np.full((6, 6, 3), 7, dtype=np.uint8)
    Image.fromarray(new).save(target)
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    decoded = []
    real = imageio.decode
    monkeypatch.setattr(imageio, "decode", lambda p, side, gray: decoded.append(p) or real(p, side, gray))
    second = load_dataset(f"imagefolder:{folder}", data_root=cache_root)
    assert len(decoded) == 18
    np.testing.assert_array_equal(second.train.images[5], new)  # bee is class 1, img01 is its 2nd
    assert second.fingerprint != first.fingerprint
    assert len(list((cache_root / "imagefolder-cache").iterdir())) == 2


def test_imagefolder_grayscale_val_split_and_mixed_modes(tmp_path):
    folder = tmp_path / "gray"
    expected = make_folder(folder, test_name="val", gray=True)
    ds = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data")
    assert ds.channels == 1 and ds.train.images.shape == (12, 6, 6, 1)
    np.testing.assert_array_equal(ds.train.images, expected["train"][0])
    np.testing.assert_array_equal(ds.test.images, expected["val"][0])
    # one RGB image makes the whole dataset RGB, grays replicated over the channels
    rgb = np.zeros((6, 6, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(folder / "train" / "ant" / "zz_rgb.png")
    mixed = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data")
    assert mixed.channels == 3 and len(mixed.train) == 13
    np.testing.assert_array_equal(mixed.train.images[4], rgb)
    np.testing.assert_array_equal(mixed.train.images[0], np.repeat(expected["train"][0][0], 3, axis=2))


def test_imagefolder_parallel_decode_matches_serial(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    expected = make_folder(folder, n_train=6, n_test=3)
    monkeypatch.setattr(cache, "PARALLEL_MIN_FILES", 0)
    monkeypatch.setattr(cache, "_BLOCK_BYTES", 4 * 6 * 6 * 3)  # 8 images per block (the minimum)
    monkeypatch.setenv("DPCLI_CACHE_WORKERS", "2")
    calls = []
    ds = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", progress=lambda d, t: calls.append(d))
    np.testing.assert_array_equal(ds.train.images, expected["train"][0])
    np.testing.assert_array_equal(ds.test.images, expected["test"][0])
    assert calls == sorted(calls) and calls[-1] == 27


def test_imagefolder_user_errors(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(DpcliError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}", data_root=root)

    no_test = tmp_path / "no_test"
    make_folder(no_test)
    (no_test / "test").rename(no_test / "elsewhere")
    with pytest.raises(DpcliError, match="'test'"):
        load_dataset(f"imagefolder:{no_test}", data_root=root)

    no_classes = tmp_path / "no_classes"
    (no_classes / "train").mkdir(parents=True)
    (no_classes / "test").mkdir()
    with pytest.raises(DpcliError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{no_classes}", data_root=root)

    empty_test = tmp_path / "empty_test"
    make_folder(empty_test, n_test=0)
    with pytest.raises(DpcliError, match="contains no images"):
        load_dataset(f"imagefolder:{empty_test}", data_root=root)

    odd = tmp_path / "odd"
    make_folder(odd)
    Image.fromarray(np.zeros((7, 6, 3), dtype=np.uint8)).save(odd / "test" / "cat" / "odd.png")
    with pytest.raises(DpcliError) as err:
        load_dataset(f"imagefolder:{odd}", data_root=root)
    assert str(odd / "test" / "cat" / "odd.png") in str(err.value) and "6x7" in str(err.value)
    assert "--image-size" in str(err.value) and "\n" not in str(err.value)

    extra = tmp_path / "extra_class"
    make_folder(extra)
    (extra / "test" / "dog").mkdir()
    with pytest.raises(DpcliError, match="dog"):
        load_dataset(f"imagefolder:{extra}", data_root=root)


# --------------------------------------------------------------------------- batches


def _toy_split(n=37, h=8, w=8, c=3, seed=0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8), rng.integers(0, 5, size=n))


MEAN, STD = (0.5, 0.25, 0.75), (0.2, 0.3, 0.4)
CPU = torch.device("cpu")


def _normalize(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64) / 255
    x = (x - np.array(MEAN)) / np.array(STD)
    return x.transpose(0, 3, 1, 2)


def _epoch(split, bs=16, **kw):
    kw.setdefault("shuffle", False)
    kw.setdefault("augment", False)
    kw.setdefault("generator", None)
    return list(iterate_batches(split, bs, mean=MEAN, std=STD, device=CPU, **kw))


def test_batches_in_order_are_normalized_exactly():
    split = _toy_split()
    batches = _epoch(split)
    assert [len(b[2]) for b in batches] == [16, 16, 5]
    for x, y, idx in batches:
        assert x.dtype == torch.float32 and x.is_contiguous() and x.shape[1:] == (3, 8, 8)
        assert y.dtype == torch.int64 and idx.dtype == torch.int64 and idx.device.type == "cpu"
        np.testing.assert_allclose(x.numpy(), _normalize(split.images[idx.numpy()]), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), split.labels[idx.numpy()])
    np.testing.assert_array_equal(torch.cat([b[2] for b in batches]).numpy(), np.arange(37))


def test_shuffle_covers_every_index_once_and_is_seeded():
    split = _toy_split()
    runs = {}
    for seed in (1, 1, 2):
        g = torch.Generator().manual_seed(seed)
        epochs = [_epoch(split, shuffle=True, augment=True, generator=g) for _ in range(2)]
        for ep in epochs:
            order = torch.cat([b[2] for b in ep]).numpy()
            assert sorted(order.tolist()) == list(range(37))
            assert not np.array_equal(order, np.arange(37))
        runs.setdefault(seed, []).append(epochs)
    (a, b), (c,) = runs[1], runs[2]
    for ea, eb in zip(a, b):  # same seed -> identical epochs, augmentation included
        for (xa, ya, ia), (xb, yb, ib) in zip(ea, eb):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    order = lambda ep: torch.cat([t[2] for t in ep]).numpy()  # noqa: E731
    assert not np.array_equal(order(a[0]), order(a[1]))  # epochs differ
    assert not np.array_equal(order(a[0]), order(c[0]))  # seeds differ


def test_indices_restrict_the_epoch():
    split = _toy_split()
    keep = np.array([3, 30, 7, 11, 0, 36, 12])
    plain = _epoch(split, bs=3, indices=keep)
    np.testing.assert_array_equal(torch.cat([b[2] for b in plain]).numpy(), keep)
    g = torch.Generator().manual_seed(0)
    shuffled = _epoch(split, bs=3, indices=keep, shuffle=True, generator=g)
    got = torch.cat([b[2] for b in shuffled]).numpy()
    assert sorted(got.tolist()) == sorted(keep.tolist())
    for x, y, idx in shuffled:
        np.testing.assert_array_equal(y.numpy(), split.labels[idx.numpy()])
        np.testing.assert_allclose(x.numpy(), _normalize(split.images[idx.numpy()]), atol=1e-5)
    assert _epoch(split, indices=np.array([], dtype=np.int64)) == []
    with pytest.raises(ValueError):
        _epoch(split, indices=np.array([37]))
    with pytest.raises(ValueError):
        list(
            iterate_batches(split, 4, mean=(0.5,), std=(0.5,), device=CPU, shuffle=False, augment=False, generator=None)
        )
    with pytest.raises(DpcliError):
        _epoch(split, bs=0)


def test_augment_pad_sizes():
    assert [augment_pad(s) for s in (4, 8, 16, 24, 32, 64, 224)] == [1, 1, 2, 3, 4, 4, 4]


@pytest.mark.parametrize("size", [8, 32])
def test_augmentation_equals_manual_numpy_crop_and_flip(size):
    split = _toy_split(n=40, h=size, w=size)
    pad = augment_pad(size)
    g = torch.Generator().manual_seed(7)
    batches = _epoch(split, bs=16, shuffle=True, augment=True, generator=g)
    # replay the documented draw order with a fresh generator of the same seed
    r = torch.Generator().manual_seed(7)
    perm = torch.randperm(40, generator=r).numpy()
    np.testing.assert_array_equal(torch.cat([b[2] for b in batches]).numpy(), perm)
    all_offsets, all_flips = [], []
    for x, y, idx in batches:
        b = len(idx)
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=r).numpy()
        flips = torch.randint(0, 2, (b,), generator=r).numpy().astype(bool)
        all_offsets.append(offsets)
        all_flips.append(flips)
        manual = []
        for i, k in enumerate(idx.numpy()):
            padded = np.pad(split.images[k], ((pad, pad), (pad, pad), (0, 0)))
            oy, ox = offsets[i]
            crop = padded[oy : oy + size, ox : ox + size]
            manual.append(crop[:, ::-1] if flips[i] else crop)
        np.testing.assert_allclose(x.numpy(), _normalize(np.stack(manual)), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), split.labels[idx.numpy()])
    offs, fl = np.concatenate(all_offsets), np.concatenate(all_flips)
    assert fl.any() and not fl.all()  # both flipped and unflipped samples were checked
    assert len(np.unique(offs[:, 0])) > 1 and (offs != pad).any()  # real shifts, zero padding visible


def test_augmented_batch_is_a_window_of_the_padded_image():
    """Invariant check without replaying draws: each sample is a shifted (maybe mirrored)
    window of its zero-padded image."""
    split = _toy_split(n=20, h=8, w=8)
    pad = augment_pad(8)
    g = torch.Generator().manual_seed(3)
    for x, _, idx in _epoch(split, bs=20, augment=True, generator=g):
        pixels = np.rint((x.numpy().transpose(0, 2, 3, 1) * np.array(STD) + np.array(MEAN)) * 255)
        for out, k in zip(pixels, idx.numpy()):
            padded = np.pad(split.images[k], ((pad, pad), (pad, pad), (0, 0))).astype(np.float64)
            windows = [
                padded[oy : oy + 8, ox : ox + 8][:, ::f]
                for oy in range(2 * pad + 1)
                for ox in range(2 * pad + 1)
                for f in (1, -1)
            ]
            assert any(np.array_equal(out, w) for w in windows)
