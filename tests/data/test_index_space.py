"""One index space, the user's: index i of every file dpcli writes is ImageFolder's i-th item (issue 27, item 1).

The reference is torchvision's own ``ImageFolder`` (its listing, and its loader to tell which files are
unreadable), on a folder with the files that break naive listings: corrupt, zero-byte and truncated images, text
with an image extension, a dangling link, odd-case extensions, hidden files, nested sub-folders, mixed sizes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from dpcli.artifacts.h5 import seal
from dpcli.data import layouts
from dpcli.data.sources import load_dataset
from dpcli.errors import DpcliError
from dpcli.select.linalg import count_from_ratio
from dpcli.stages import masks
from tests.conftest import run_cli, run_json

TV = pytest.importorskip("torchvision.datasets")
TINY_NET = ["--epochs", "1", "--width", "4", "--depth", "1", "--batch-size", "8", "--device", "cpu"]


def _solid(path: Path, color: int, size: tuple[int, int]) -> None:
    """An image of one color (it survives resizing and JPEG exactly enough to identify the file)."""
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = (color, 255 - color, (7 * color) % 256)
    Image.new("RGB", size, rgb).save(path, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))


def odd_folder(root: Path) -> dict[str, int]:
    """The test folder; returns the color of every readable train image by its path relative to root/train."""
    colors: dict[str, int] = {}
    good = {  # relative path -> size: odd-case extensions, a hidden image, nested sub-folders, mixed sizes
        "cat/a.png": (8, 8),
        "cat/B.Png": (12, 10),
        "cat/c.JPG": (9, 9),
        "cat/.hidden.png": (8, 11),
        "cat/sub/deep.png": (10, 8),
        "cat/sub/zz/deeper.jpeg": (16, 16),
        "cat/sub-1/side.png": (8, 8),
        "dog/x.png": (8, 8),
        "dog/y.bmp": (9, 12),
        "dog/z.webp": (11, 9),
        "dog/q.png": (20, 8),
        "dog-x/m.png": (8, 8),
        "dog-x/n.png": (13, 13),
        "dog-x/o.png": (8, 9),
    }
    for k, (rel, size) in enumerate(sorted(good.items())):
        colors[rel] = 20 + 12 * k
        _solid(root / "train" / rel, colors[rel], size)
    bad = root / "train"
    (bad / "cat" / "zero.jpg").write_bytes(b"")
    (bad / "cat" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)  # macOS AppleDouble junk
    _solid(bad / "dog" / "trunc.png", 5, (32, 32))
    data = (bad / "dog" / "trunc.png").read_bytes()
    (bad / "dog" / "trunc.png").write_bytes(data[: len(data) // 2])
    (bad / "dog" / "text.jpg").write_text("not a picture at all")
    (bad / "dog" / "gone.png").symlink_to(root / "nowhere.png")
    (bad / "cat" / "notes.txt").write_text("metadata, not data")
    for k, rel in enumerate(("cat/t1.png", "dog/t2.png", "dog-x/t3.png", "dog/t4.png")):
        _solid(root / "test" / rel, 200 + k, (8, 8))
    (root / "test" / "dog" / "t5.jpg").write_text("corrupt test file")
    return colors


def _rel(path: str, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _torchvision(root: Path) -> tuple[list[tuple[str, int]], list[int]]:
    """ImageFolder's items (paths relative to root/train) and the indices its own loader cannot read."""
    tv = TV.ImageFolder(str(root / "train"))
    unreadable = []
    for i, (path, _) in enumerate(tv.samples):
        try:
            tv.loader(path)
        except Exception:
            unreadable.append(i)
    return [(_rel(p, root / "train"), y) for p, y in tv.samples], unreadable


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd") / "data"
    colors = odd_folder(root)
    return root, colors


def test_listing_and_unreadable_files_are_torchvisions(odd, tmp_path):
    root, colors = odd
    items, unreadable = _torchvision(root)
    layout = layouts.scan(root.resolve())
    assert [(_rel(p, root.resolve() / "train"), y) for p, y in layout.train] == items
    assert layout.classes == tuple(TV.ImageFolder(str(root / "train")).classes)
    with pytest.warns(UserWarning, match="keep their index"):
        ds = load_dataset(f"imagefolder:{root}", data_root=tmp_path / "cache", image_size=8)
    space = ds.samples
    assert space.total == len(items) and space.unreadable.tolist() == unreadable and len(unreadable) == 5
    assert space.n == len(ds.train) == len(items) - len(unreadable)
    for row, i in enumerate(space.rows.tolist()):  # each row holds the file torchvision lists at its index
        rel, label = items[i]
        assert ds.train.labels[row] == label
        rgb = np.asarray(ds.train.images[row], dtype=np.int64).reshape(-1, 3).mean(0)
        c = colors[rel]
        assert np.allclose(rgb, (c, 255 - c, (7 * c) % 256), atol=4), (rel, rgb)


def test_prune_writes_user_indices_paths_and_a_link_folder_imagefolder_reads(odd, tmp_path, capsys):
    root, _ = odd
    items, unreadable = _torchvision(root)
    out = tmp_path / "out"
    args = [
        "prune",
        f"imagefolder:{root}",
        "--image-size",
        "8",
        *TINY_NET,
        "--prune-ratio",
        "0.5",
        "--method",
        "optimization",
        "--data-root",
        tmp_path / "cache",
        "--run-root",
        tmp_path / "runs",
        "--out",
        out / "mask.h5",
        "--indices-out",
        out / "kept.txt",
        "--paths-out",
        out / "kept-paths.txt",
        "--link-dir",
        out / "pruned",
    ]
    code, stdout, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    n, readable = len(items), len(items) - len(unreadable)
    with h5py.File(out / "mask.h5", "r") as f:
        keep = f["keep"][()]
        assert np.array_equal(f["unreadable"][()], unreadable)
        assert np.array_equal(f["keep_indices"][()], np.flatnonzero(keep))
        assert np.array_equal(f["pruned_indices"][()], np.flatnonzero(~keep))
    assert keep.shape == (n,) and not keep[unreadable].any()
    # the ratio counts the readable samples; the unreadable ones are pruned on top
    assert (~keep).sum() == count_from_ratio(readable, 0.5) + len(unreadable)
    assert res["n"] == n and res["n_unreadable"] == len(unreadable) and res["unreadable"] == unreadable
    assert res["n_kept"] == keep.sum() and res["n_readable"] == readable
    assert f"unreadable: {len(unreadable)} file(s)" in err and f"count the {readable} readable samples" in err
    kept = np.loadtxt(out / "kept.txt", dtype=np.int64)
    assert kept.tolist() == np.flatnonzero(keep).tolist()
    paths = (out / "kept-paths.txt").read_text().splitlines()
    assert paths == [f"train/{items[i][0]}" for i in kept]
    # the link folder is a dataset: ImageFolder lists exactly the kept files, with their classes
    linked = TV.ImageFolder(str(out / "pruned" / "train"), allow_empty=True)
    assert linked.classes == TV.ImageFolder(str(root / "train")).classes
    assert [(_rel(p, out / "pruned" / "train"), y) for p, y in linked.samples] == [items[i] for i in kept]
    for p, _ in linked.samples:
        assert os.path.samefile(p, root / "train" / _rel(p, out / "pruned" / "train"))
    test_src, test_link = TV.ImageFolder(str(root / "test")), TV.ImageFolder(str(out / "pruned" / "test"))
    assert [(_rel(p, root / "test"), y) for p, y in test_src.samples] == [
        (_rel(p, out / "pruned" / "test"), y) for p, y in test_link.samples
    ]
    # a mask read back maps to the readable rows that retrain and verify-bound train on
    mask = masks.read_mask(out / "mask.h5")
    assert mask.n == readable and np.array_equal(mask.samples.rows[mask.keep_indices], kept)
    # the same S pruned as a file gives the same user-space indices
    again = run_json(
        [
            "prune",
            res["influence"],
            "--prune-ratio",
            "0.5",
            "--method",
            "optimization",
            "--out",
            tmp_path / "again.h5",
            "--indices-out",
            tmp_path / "again.npy",
        ],
        capsys,
    )
    assert np.load(tmp_path / "again.npy").tolist() == kept.tolist() and again["n"] == n


def test_a_mask_that_keeps_an_unreadable_file_or_names_another_space_is_refused(odd, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(odd[0], root, symlinks=True)
    _, unreadable = _torchvision(root)
    mask = tmp_path / "mask.h5"
    common = ["--image-size", "8", *TINY_NET, "--data-root", tmp_path / "cache"]
    code, _, err = run_cli(
        [
            "prune",
            f"imagefolder:{root}",
            *common,
            "--prune-count",
            "3",
            "--method",
            "random",
            "--run-root",
            tmp_path / "runs",
            "--out",
            mask,
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    edited = tmp_path / "edited.h5"
    edited.write_bytes(mask.read_bytes())
    with h5py.File(edited, "r+") as f:
        keep = f["keep"][()]
        keep[unreadable[0]] = True
        for name, data in (
            ("keep", keep),
            ("keep_indices", np.flatnonzero(keep)),
            ("pruned_indices", np.flatnonzero(~keep)),
        ):
            del f[name]
            f[name] = data
        seal(f, force=True)  # a consistent edit with valid checksums: the index rule is what refuses it
    with pytest.raises(DpcliError, match=f"keeps sample {unreadable[0]}, an unreadable file"):
        masks.read_mask(edited)

    # the unreadable file repaired as a copy of its neighbour, which breaks: the readable images, and so the data's
    # fingerprint, are as before, but the indices are not; the old mask is refused
    def fingerprint() -> str:
        with pytest.warns(UserWarning):
            return load_dataset(f"imagefolder:{root}", data_root=tmp_path / "cache", image_size=8).fingerprint

    before = fingerprint()
    dog = root / "train" / "dog"
    (dog / "text.jpg").unlink()
    (dog / "text.jpg").write_bytes((dog / "q.png").read_bytes())
    (dog / "q.png").write_bytes(b"broken")
    items, now = _torchvision(root)
    q, text = items.index(("dog/q.png", 1)), items.index(("dog/text.jpg", 1))
    assert set(now) ^ set(unreadable) == {q, text} and fingerprint() == before
    code, _, err = run_cli(
        ["retrain", f"imagefolder:{root}", "--mask", mask, *common, "--out", tmp_path / "r.h5"], capsys
    )
    assert code == 2 and "mask was made for 19 samples (5 unreadable) but dataset" in err, err
    assert f"sample {q} is unreadable now and was not then" in err, err


def test_tinyimagenet_and_imagenet_train_layouts_list_like_imagefolder(tmp_path):
    from tests.data.test_data_scale import _imagenet

    rng = np.random.default_rng(0)
    tiny = tmp_path / "tiny"
    for w in ("n02", "n01"):
        (tiny / "train" / w / "images").mkdir(parents=True)
        (tiny / "train" / w / f"{w}_boxes.txt").write_text("x\t0\t0\t1\t1\n")
        for k in (3, 1, 2):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                tiny / "train" / w / "images" / f"{w}_{k}.JPEG"
            )
    (tiny / "val" / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tiny / "val" / "images" / "val_0.JPEG")
    (tiny / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t8\t8\n")
    imagenet = tmp_path / "imagenet"
    wnids, truth = _imagenet(imagenet, rng)
    import torch

    torch.save(({w: (w,) for w in wnids}, [truth[n] for n in sorted(truth)]), imagenet / "meta.bin")
    for root, kind in ((tiny, "tinyimagenet"), (imagenet, "imagenet")):
        tv = TV.ImageFolder(str(root / "train"))
        ours = layouts.scan(root.resolve())
        assert ours.kind == kind
        assert [(_rel(p, root.resolve() / "train"), y) for p, y in ours.train] == [
            (_rel(p, root / "train"), y) for p, y in tv.samples
        ]


def test_hugging_face_imagefolder_lists_a_flat_folder_in_the_same_order(tmp_path):
    """Where Hugging Face's ``imagefolder`` builder agrees with torchvision (flat class folders, no hidden images,
    no class name that extends another with a character sorting before '/'), dpcli's index is its row too."""
    hf = pytest.importorskip("datasets")
    root = tmp_path / "flat"
    for k, rel in enumerate(("b/2.png", "b/10.PNG", "a/x.jpg", "a/Y.png", "ab/z.png", "a/_u.png")):
        _solid(root / "train" / rel, 30 + 20 * k, (8, 8))
    for c in ("a", "ab", "b"):
        _solid(root / "test" / c / "t.png", 9, (8, 8))
    rows = hf.load_dataset("imagefolder", data_dir=str(root), split="train", cache_dir=str(tmp_path / "hf"))
    rows = rows.cast_column("image", hf.Image(decode=False))
    names = rows.features["label"].names
    theirs = [(_rel(r["image"]["path"], root / "train"), names[r["label"]]) for r in rows]
    layout = layouts.scan(root.resolve())
    assert theirs == [(_rel(p, root.resolve() / "train"), layout.classes[y]) for p, y in layout.train]


def test_cifar_samples_are_torchvisions_in_its_order(tmp_path, monkeypatch):
    """CIFAR's index i is ``torchvision.datasets.CIFAR10(train=True)[i]`` (batches in file order), every one a row."""
    import pickle

    rng = np.random.default_rng(4)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, n in [*((f"data_batch_{k}", 3) for k in range(1, 6)), ("test_batch", 2)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{k}" for k in range(10)]}))
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # not the real archive's md5 sums
    ds = load_dataset("cifar10", data_root=tmp_path, download=False)
    tv = TV.CIFAR10(str(tmp_path), train=True)
    assert ds.samples.total == len(tv) == ds.samples.n == 15 and ds.samples.unreadable.size == 0
    for i in range(len(tv)):
        image, label = tv[i]
        assert np.array_equal(np.asarray(ds.train.images[i]), np.asarray(image)) and ds.train.labels[i] == label
