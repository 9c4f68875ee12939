"""Real datasets at any scale: --image-size pipelines, streamed vs in-memory splits, the resumable
cache, the ImageNet / TinyImageNet layouts and every bad-input case.  Tiny folders generated here."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dpcli.data.cache as cache
import dpcli.data.imageio as imageio
from dpcli.data.base import DiskImages, Split
from dpcli.data.batches import iterate_batches, random_resized_crop_params, resized_crop
from dpcli.data.sources import load_dataset
from dpcli.errors import DpcliError

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[2]


def _img(rng: np.random.Generator, w: int, h: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


def mixed_folder(
    root: Path, n_train: int = 5, n_test: int = 2, classes=("ant", "bee"), seed: int = 0, test_name: str = "val"
) -> Path:
    """Mixed sizes (9..40 px) and modes (RGB, RGBA, L, palette) as PNG, plus a few JPEGs."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), (test_name, n_test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for k in range(n):
                w, h = (int(v) for v in rng.integers(9, 41, size=2))
                mode = ("RGB", "RGBA", "L", "RGB")[k % 4]
                im = _img(rng, w, h, mode)
                if k % 4 == 3:
                    im = im.convert("P")
                im.save(d / f"{k:02d}.{'jpg' if k % 5 == 4 and mode == 'RGB' else 'png'}")
    return root


def _torchvision_eval(path: str, n: int, mean, std) -> torch.Tensor:
    """The standard eval pipeline as torchvision writes it (the independent reference)."""
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(cache.stored_side(n)), T.CenterCrop(n), T.ToTensor(), T.Normalize(mean, std)])
    with Image.open(path) as im:
        return tf(im.convert("RGB"))


# --------------------------------------------------------------------------- --image-size


def test_mixed_sizes_need_image_size_and_eval_equals_torchvision(tmp_path):
    folder = mixed_folder(tmp_path / "mixed")
    with pytest.raises(DpcliError, match="--image-size") as err:
        load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data")
    assert "\n" not in str(err.value) and str(folder) in str(err.value)
    ds = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=12)
    assert ds.image_size == 12 and ds.channels == 3 and ds.train.images.shape == (10, 14, 14, 3)
    files = sorted(str(p) for p in (folder / "train").rglob("*.*"))
    assert len(files) == len(ds.train) and ds.train.labels.tolist() == [0] * 5 + [1] * 5
    x = torch.cat(
        [b[0] for b in iterate_batches(ds.train, 4, mean=ds.mean, std=ds.std, device=CPU, shuffle=False, augment=False)]
    )
    assert x.shape == (10, 3, 12, 12)
    for i, p in enumerate(files):  # sorted path order, RGBA / L / P converted as torchvision's loader does
        torch.testing.assert_close(x[i], _torchvision_eval(p, 12, ds.mean, ds.std), atol=1e-5, rtol=0)


def test_exif_orientation_is_respected(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "exif"
    for split in ("train", "test"):
        (root / split / "c").mkdir(parents=True)
        for k in range(2):
            _img(rng, 6, 10).save(root / split / "c" / f"{k}.png")  # 6 wide, 10 high
    rotated = _img(rng, 10, 6)  # stored 10 x 6, displayed 6 x 10 (orientation 6: rotate 90 degrees)
    exif = Image.Exif()
    exif[imageio.EXIF_ORIENTATION] = 6
    path = root / "train" / "c" / "2.jpg"
    rotated.save(path, exif=exif.tobytes(), quality=95)
    ds = load_dataset(f"imagefolder:{root}", data_root=tmp_path / "data")  # no mixed-size error
    assert ds.train.images.shape == (3, 10, 6, 3)
    from PIL import ImageOps

    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert expected.shape == (10, 6, 3)
    np.testing.assert_array_equal(ds.train.images[2], expected)


def test_resized_crop_equals_interpolate_per_image():
    rng = np.random.default_rng(0)
    xb = torch.from_numpy(rng.integers(0, 256, size=(6, 20, 20, 3), dtype=np.uint8))
    top, left, h, w = random_resized_crop_params(6, 20, 20, torch.Generator().manual_seed(1), CPU)
    flips = torch.tensor([0, 1, 0, 1, 1, 0], dtype=torch.bool)
    out = resized_crop(xb, top, left, h, w, 8, flips)
    for b in range(6):
        crop = xb[b, top[b] : top[b] + h[b], left[b] : left[b] + w[b]].permute(2, 0, 1)[None].float()
        ref = F.interpolate(crop, size=(8, 8), mode="bilinear", align_corners=False)[0]
        if flips[b]:
            ref = ref.flip(2)
        torch.testing.assert_close(out[b], ref, atol=1e-4, rtol=0)


def test_random_resized_crop_boxes_follow_torchvision_rules():
    top, left, h, w = random_resized_crop_params(4000, 30, 30, torch.Generator().manual_seed(0), CPU)
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 30) & (left + w <= 30) & (h > 0) & (w > 0)).all())
    area = (h * w).double() / 900
    assert area.min() >= 0.06 and area.max() <= 1.0 and 0.4 < area.mean() < 0.65
    ratio = w.double() / h.double()
    assert ratio.min() > 0.6 and ratio.max() < 1.7  # 3/4..4/3 up to rounding of small sides
    # reference: torchvision's own sampler gives the same mean area (Monte-Carlo, loose bound)
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    ref = (
        np.array(
            [
                np.prod(RandomResizedCrop.get_params(torch.zeros(1, 30, 30), (0.08, 1.0), (3 / 4, 4 / 3))[2:])
                for _ in range(4000)
            ]
        )
        / 900
    )
    assert abs(float(area.mean()) - ref.mean()) < 0.02


def test_training_augmentation_replays_documented_draws(tmp_path):
    folder = mixed_folder(tmp_path / "mixed")
    ds = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=8)
    g = torch.Generator().manual_seed(5)
    batches = list(
        iterate_batches(ds.train, 4, mean=ds.mean, std=ds.std, device=CPU, shuffle=True, augment=True, generator=g)
    )
    r = torch.Generator().manual_seed(5)
    perm = torch.randperm(10, generator=r).numpy()
    mean = torch.tensor(ds.mean).view(3, 1, 1)
    std = torch.tensor(ds.std).view(3, 1, 1)
    seen_flips = set()
    for k, (x, _, idx) in enumerate(batches):
        np.testing.assert_array_equal(idx.numpy(), perm[4 * k : 4 * k + 4])
        b = len(idx)
        side = cache.stored_side(8)
        assert ds.train.images.shape[1:3] == (side, side) == (9, 9)
        top, left, h, w = random_resized_crop_params(b, side, side, r, CPU)
        flips = torch.randint(0, 2, (b,), generator=r).bool()
        seen_flips |= set(flips.tolist())
        for i, j in enumerate(idx.tolist()):
            img = torch.from_numpy(np.asarray(ds.train.images[j])).permute(2, 0, 1).float()
            crop = img[:, top[i] : top[i] + h[i], left[i] : left[i] + w[i]][None]
            ref = F.interpolate(crop, size=(8, 8), mode="bilinear", align_corners=False)[0]
            ref = ref.flip(2) if flips[i] else ref
            torch.testing.assert_close(x[i], (ref / 255 - mean) / std, atol=1e-4, rtol=0)
    assert seen_flips == {False, True}


# --------------------------------------------------------------------------- streaming


def test_disk_images_read_any_order_with_duplicates(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(9, 3, 2, 1), dtype=np.uint8)
    path = tmp_path / "raw"
    path.write_bytes(b"x" * 7 + data.tobytes())
    rows = np.array([8, 0, 1, 2, 5, 6])  # dataset index -> file row (holes = skipped files)
    disk = DiskImages(path, 7, (3, 2, 1), rows)
    idx = np.array([3, 0, 3, 5, 1, 2, 4])
    np.testing.assert_array_equal(disk[idx], data[rows[idx]])
    np.testing.assert_array_equal(disk[1:4], data[rows[1:4]])
    np.testing.assert_array_equal(np.asarray(disk), data[rows])
    assert disk.shape == (6, 3, 2, 1) and disk.nbytes == 36


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_and_in_memory_give_the_same_batches(tmp_path, workers):
    folder = mixed_folder(tmp_path / "mixed", n_train=7)
    mem = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=8, stream=False)
    disk = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=8, stream=True)
    assert not mem.train.streamed and disk.train.streamed and disk.test.streamed
    assert mem.fingerprint == disk.fingerprint and mem.mean == disk.mean
    for augment, keep in ((True, None), (False, np.array([9, 2, 4, 13]))):
        kw = dict(mean=mem.mean, std=mem.std, device=CPU, shuffle=True, augment=augment, indices=keep)
        a = list(iterate_batches(mem.train, 3, generator=torch.Generator().manual_seed(2), **kw))
        b = list(iterate_batches(disk.train, 3, generator=torch.Generator().manual_seed(2), workers=workers, **kw))
        assert len(a) == len(b)
        for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


def test_streamed_and_in_memory_give_the_same_model_and_S(tmp_path, monkeypatch):
    from dpcli.config import InfluenceConfig, TrainConfig
    from dpcli.stages.core import compute_influence, load_S
    from dpcli.train.checkpoint import load_checkpoint
    from dpcli.train.loop import train

    folder = mixed_folder(tmp_path / "mixed", n_train=12, n_test=3)
    spec = f"imagefolder:{folder}"
    cfg = TrainConfig(dataset=spec, arch="convnet", width=4, depth=1, epochs=2, batch_size=8, lr=0.05, image_size=8)
    S = {}
    for stream in (False, True):
        ds = load_dataset(spec, data_root=tmp_path / "data", image_size=8, stream=stream)
        ck_path = tmp_path / f"ck{stream}.h5"
        train(cfg, ds, ck_path, device=CPU)
        compute_influence(ck_path, tmp_path / f"S{stream}.h5", InfluenceConfig(), device=CPU, ds=ds)
        S[stream] = load_S(tmp_path / f"S{stream}.h5")
    a, b = (load_checkpoint(tmp_path / f"ck{s}.h5") for s in (False, True))
    assert a.fingerprint == b.fingerprint  # identical weights
    np.testing.assert_array_equal(S[False], S[True])
    assert S[True].shape[0] == 24 and np.abs(S[True]).sum() > 0
    # the checkpoint's config carries --image-size, so later stages reload the same pipeline
    monkeypatch.setenv("DPCLI_MEMORY_BUDGET", "1")  # and a tiny budget makes them stream
    compute_influence(
        tmp_path / "ckFalse.h5", tmp_path / "S2.h5", InfluenceConfig(), device=CPU, data_root=tmp_path / "data"
    )
    np.testing.assert_array_equal(load_S(tmp_path / "S2.h5"), S[False])


def test_memory_budget_chooses_streaming(tmp_path, monkeypatch):
    folder = mixed_folder(tmp_path / "mixed")
    spec = f"imagefolder:{folder}"
    assert not load_dataset(spec, data_root=tmp_path / "data", image_size=8).train.streamed
    monkeypatch.setenv("DPCLI_MEMORY_BUDGET", "1K")  # 14 images of 10x10x3 = 4.2 kB
    assert load_dataset(spec, data_root=tmp_path / "data", image_size=8).train.streamed
    monkeypatch.setenv("DPCLI_MEMORY_BUDGET", "lots")
    with pytest.raises(DpcliError, match="DPCLI_MEMORY_BUDGET"):
        load_dataset(spec, data_root=tmp_path / "data", image_size=8)


# --------------------------------------------------------------------------- resumable cache

_KILL_SCRIPT = """
import os, signal, sys
import dpcli.data.cache as cache
from pathlib import Path
from dpcli.data.sources import load_dataset
cache._BLOCK_BYTES = 1  # 8 files per block
def progress(done, total):
    if done >= 16:  # two blocks written and marked done
        os.kill(os.getpid(), signal.SIGKILL)
load_dataset("imagefolder:" + sys.argv[1], data_root=Path(sys.argv[2]), image_size=8, progress=progress)
"""


def test_cache_build_killed_midway_resumes_and_never_trusts_a_half_cache(tmp_path, monkeypatch):
    folder = mixed_folder(tmp_path / "mixed", n_train=10, n_test=3)  # 26 files: 4 blocks of 8
    data_root = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=str(REPO), DPCLI_CACHE_WORKERS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(folder), str(data_root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    files = list((data_root / "imagefolder-cache").iterdir())
    assert len(files) == 1 and files[0].name.endswith(".partial.h5")  # no complete-looking cache

    monkeypatch.setattr(cache, "_BLOCK_BYTES", 1)
    decoded = []
    real = imageio.decode
    monkeypatch.setattr(imageio, "decode", lambda p, side, gray: decoded.append(p) or real(p, side, gray))
    resumed = load_dataset(f"imagefolder:{folder}", data_root=data_root, image_size=8)
    assert len(decoded) == 26 - 16  # only the blocks not marked done
    fresh = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "fresh", image_size=8)
    np.testing.assert_array_equal(np.asarray(resumed.train.images), np.asarray(fresh.train.images))
    np.testing.assert_array_equal(np.asarray(resumed.test.images), np.asarray(fresh.test.images))
    assert resumed.fingerprint == fresh.fingerprint and resumed.mean == fresh.mean

    # a damaged partial file (killed while HDF5 wrote its metadata) is thrown away, not trusted
    final = next((data_root / "imagefolder-cache").iterdir())
    partial = final.with_name(final.stem + ".partial.h5")
    final.rename(partial)
    with open(partial, "r+b") as fh:
        fh.truncate(300)
    decoded.clear()
    again = load_dataset(f"imagefolder:{folder}", data_root=data_root, image_size=8)
    assert len(decoded) == 26 and again.fingerprint == fresh.fingerprint


_ORPHAN_SCRIPT = """
import os, sys, time
import dpcli.data.cache as cache, dpcli.data.imageio as imageio
from dpcli.data.sources import load_dataset
cache.PARALLEL_MIN_FILES = 0
cache._BLOCK_BYTES = 1
def slow(job):
    print("WORKER", os.getpid(), flush=True)
    time.sleep(60)
imageio.decode_many = slow
load_dataset("imagefolder:" + sys.argv[1], sys.argv[2], image_size=8)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_cache_workers_die_with_a_killed_build(tmp_path):
    """A build killed from outside (OOM killer, SIGKILL) must not leave its workers running."""
    import time

    folder = mixed_folder(tmp_path / "mixed", n_train=4, n_test=1)
    env = dict(os.environ, PYTHONPATH=str(REPO), DPCLI_CACHE_WORKERS="2", DPCLI_JPEG_DECODE="pil")
    proc = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, str(folder), str(tmp_path / "data")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    workers = []
    try:
        while len(workers) < 2:
            line = proc.stdout.readline()
            assert line, "the build ended before its workers started"
            if line.startswith("WORKER "):
                workers.append(int(line.split()[1]))
        assert all(_alive(w) for w in workers)
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers)
    finally:
        proc.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_parallel_build_equals_serial(tmp_path, monkeypatch):
    folder = mixed_folder(tmp_path / "mixed", n_train=9, n_test=3)
    serial = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "a", image_size=8)
    monkeypatch.setattr(cache, "PARALLEL_MIN_FILES", 0)
    monkeypatch.setattr(cache, "_BLOCK_BYTES", 1)
    monkeypatch.setattr(cache, "_PROBE_CHUNK", 5)
    monkeypatch.setenv("DPCLI_CACHE_WORKERS", "2")
    calls = []
    par = load_dataset(
        f"imagefolder:{folder}", data_root=tmp_path / "b", image_size=8, progress=lambda d, t: calls.append((d, t))
    )
    np.testing.assert_array_equal(np.asarray(par.train.images), np.asarray(serial.train.images))
    assert par.fingerprint == serial.fingerprint
    assert calls[-1] == (24, 24) and [d for d, _ in calls] == sorted(d for d, _ in calls)


# --------------------------------------------------------------------------- layouts


def test_tinyimagenet_layout(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("x\t0\t0\t1\t1\n")
        for k in range(2):
            _img(rng, 8, 8).save(root / "train" / w / "images" / f"{w}_{k}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    truth = {f"val_{k}.JPEG": wnids[(k * 2) % 3] for k in range(5)}
    for name in truth:
        _img(rng, 8, 8).save(root / "val" / "images" / name)
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{w}\t0\t0\t8\t8\n" for name, w in sorted(truth.items(), reverse=True))
    )
    (root / "test" / "images").mkdir(parents=True)  # TinyImageNet's unlabelled test split: ignored
    _img(rng, 8, 8).save(root / "test" / "images" / "test_0.JPEG")
    ds = load_dataset(f"imagefolder:{root}", data_root=tmp_path / "data")
    assert ds.classes == ("n01", "n02", "n03") and len(ds.train) == 6 and len(ds.test) == 5
    assert ds.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.test.labels.tolist() == [ds.classes.index(truth[n]) for n in sorted(truth)]
    with Image.open(root / "val" / "images" / "val_3.JPEG") as im:
        np.testing.assert_array_equal(ds.test.images[3], np.asarray(im.convert("RGB")))

    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn09\t0\t0\t8\t8\n")
    with pytest.raises(DpcliError, match="n09"):
        load_dataset(f"imagefolder:{root}", data_root=tmp_path / "data")


def _imagenet(root: Path, rng) -> tuple[list[str], dict[str, str]]:
    """ImageNet layout: train/<wnid>/*.JPEG and a flat val/ labelled by the devkit."""
    wnids = ["n01440764", "n01443537", "n01484850"]
    for w in wnids:
        (root / "train" / w).mkdir(parents=True)
        for k in range(2):
            _img(rng, 8, 8).save(root / "train" / w / f"{w}_{k}.JPEG")
    (root / "val").mkdir()
    names = [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 6)]
    truth = {n: wnids[(2 * k + 1) % 3] for k, n in enumerate(names)}  # 1, 0, 2, 1, 0: order matters
    for n in names:
        _img(rng, 8, 8).save(root / "val" / n)
    return wnids, truth


def _devkit(folder: Path, wnids: list[str], truth: dict[str, str]) -> None:
    """A minimal ILSVRC2012 devkit: meta.mat (with one non-leaf synset) and the ground truth."""
    import scipy.io

    (folder / "data").mkdir(parents=True)
    ids = {w: 10 + i for i, w in enumerate(wnids)}  # ILSVRC2012_ID is not the class index
    dt = [
        ("ILSVRC2012_ID", "O"),
        ("WNID", "O"),
        ("words", "O"),
        ("gloss", "O"),
        ("num_children", "O"),
        ("children", "O"),
        ("wordnet_height", "O"),
        ("num_train_images", "O"),
    ]
    rows = [(ids[w], w, f"class {w}, alias", "", 0, np.zeros(0), 0, 2) for w in wnids]
    rows.append((99, "n00000001", "entity", "", 3, np.array([10, 11, 12]), 5, 0))
    synsets = np.array(rows, dtype=dt)
    scipy.io.savemat(str(folder / "data" / "meta.mat"), {"synsets": synsets.reshape(-1, 1)})
    (folder / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{ids[truth[n]]}\n" for n in sorted(truth))
    )


@pytest.mark.parametrize("form", ["folder", "tar", "meta.bin"])
def test_imagenet_layout_reads_devkit_ground_truth_like_torchvision(tmp_path, form, monkeypatch):
    rng = np.random.default_rng(2)
    root = tmp_path / "imagenet"
    wnids, truth = _imagenet(root, rng)
    if form == "meta.bin":
        torch.save(({w: (w,) for w in wnids}, [truth[n] for n in sorted(truth)]), root / "meta.bin")
    else:
        _devkit(tmp_path / "kit" / "ILSVRC2012_devkit_t12", wnids, truth)
        if form == "folder":
            (tmp_path / "kit" / "ILSVRC2012_devkit_t12").rename(root / "ILSVRC2012_devkit_t12")
        else:
            with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
                tar.add(tmp_path / "kit" / "ILSVRC2012_devkit_t12", arcname="ILSVRC2012_devkit_t12")
    ds = load_dataset(f"imagefolder:{root}", data_root=tmp_path / "data")
    assert ds.classes == tuple(wnids) and len(ds.train) == 6 and len(ds.test) == 5
    assert ds.test.labels.tolist() == [wnids.index(truth[n]) for n in sorted(truth)]
    for i, name in enumerate(sorted(truth)):  # sample i is the i-th file by name, with its own label
        with Image.open(root / "val" / name) as im:
            np.testing.assert_array_equal(ds.test.images[i], np.asarray(im.convert("RGB")))
    if form == "tar":  # torchvision's own devkit parser agrees (its md5 check skipped for this fake devkit)
        import shutil

        import torchvision.datasets.imagenet as tv

        ref = tmp_path / "tv"
        ref.mkdir()
        shutil.copy(root / "ILSVRC2012_devkit_t12.tar.gz", ref)
        monkeypatch.setattr(tv, "_verify_archive", lambda *a, **k: None)
        tv.parse_devkit_archive(str(ref))
        assert [ds.classes[i] for i in ds.test.labels] == list(tv.load_meta_file(str(ref))[1])


def test_imagenet_flat_val_without_labels_is_one_line(tmp_path):
    root = tmp_path / "imagenet"
    _imagenet(root, np.random.default_rng(0))
    with pytest.raises(DpcliError, match="devkit") as err:
        load_dataset(f"imagefolder:{root}", data_root=tmp_path / "data")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- bad input


def test_corrupt_truncated_and_non_image_files_are_skipped_and_recorded(tmp_path):
    folder = mixed_folder(tmp_path / "f", n_train=4)
    rng = np.random.default_rng(9)
    good = tmp_path / "good.jpg"
    _img(rng, 30, 30).save(good, quality=90)
    truncated = folder / "train" / "ant" / "05_truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = folder / "train" / "bee" / "notes.png"
    text.write_text("this is not a picture")
    garbage = folder / "val" / "ant" / "zz.jpg"
    garbage.write_bytes(b"\xff\xd8\xff" + bytes(rng.integers(0, 256, 500, dtype=np.uint8)))
    with pytest.warns(UserWarning) as record:
        ds = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=8)
    message = " ".join(str(w.message) for w in record)
    for p in (truncated, text, garbage):
        assert str(p) in message
    assert sorted(p for p, _ in ds.skipped) == sorted(map(str, (truncated, text, garbage)))
    assert len(ds.train) == 8 and len(ds.test) == 4  # the others are all there, labels intact
    assert "truncated" in dict(ds.skipped)[str(truncated)]
    assert ds.train.labels.tolist() == [0] * 4 + [1] * 4
    clean = mixed_folder(tmp_path / "clean", n_train=4)
    ref = load_dataset(f"imagefolder:{clean}", data_root=tmp_path / "data", image_size=8)
    np.testing.assert_array_equal(np.asarray(ds.train.images), np.asarray(ref.train.images))
    # the record reaches the checkpoint
    from dpcli.artifacts.h5 import get_attr, open_artifact
    from dpcli.config import TrainConfig
    from dpcli.train.loop import train

    cfg = TrainConfig(dataset=ds.name, arch="convnet", width=2, depth=1, epochs=1, batch_size=8, image_size=8)
    train(cfg, ds, tmp_path / "ck.h5", device=CPU)
    with open_artifact(tmp_path / "ck.h5", "checkpoint") as f:
        rec = get_attr(f, "skipped_files")
    assert rec["count"] == 3 and sorted(p for p, _ in rec["first"]) == sorted(p for p, _ in ds.skipped)


def test_images_in_formats_dpcli_does_not_read_are_left_out_and_counted(tmp_path):
    """ImageFolder's extensions decide what is data; other image formats are named, metadata is not."""
    folder = mixed_folder(tmp_path / "f", n_train=4)
    rng = np.random.default_rng(3)
    gif = folder / "train" / "ant" / "07.gif"
    _img(rng, 20, 20).convert("P").save(gif)
    jfif = folder / "val" / "bee" / "09.JFIF"
    _img(rng, 20, 20).save(jfif, format="JPEG")
    (folder / "train" / "bee" / "boxes.txt").write_text("0 0 4 4")
    (folder / "train" / "ant" / "meta.xml").write_text("<a/>")
    with pytest.warns(UserWarning, match="dpcli: left out") as record:
        ds = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=8)
    (message,) = [str(w.message) for w in record]
    assert "left out 2 image file(s)" in message and "1 .gif, 1 .jfif" in message and "\n" not in message
    assert "boxes.txt" not in message and "meta.xml" not in message
    from dpcli.data import layouts

    assert layouts.scan(folder).passed_over == tuple(sorted(map(str, (gif, jfif))))
    clean = mixed_folder(tmp_path / "clean", n_train=4)
    ref = load_dataset(f"imagefolder:{clean}", data_root=tmp_path / "data", image_size=8)
    assert len(ds.train) == len(ref.train) and len(ds.test) == len(ref.test)
    np.testing.assert_array_equal(np.asarray(ds.train.images), np.asarray(ref.train.images))


def test_empty_train_class_folder_fails_naming_it(tmp_path):
    folder = mixed_folder(tmp_path / "f")
    (folder / "train" / "cat").mkdir()
    with pytest.raises(DpcliError, match="contains no images") as err:
        load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=8)
    assert str(folder / "train" / "cat") in str(err.value)


def test_val_class_missing_from_train_fails_naming_it(tmp_path):
    folder = mixed_folder(tmp_path / "f")
    (folder / "val" / "dog").mkdir()
    _img(np.random.default_rng(0), 9, 9).save(folder / "val" / "dog" / "0.png")
    with pytest.raises(DpcliError, match="no counterpart") as err:
        load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=8)
    assert str(folder / "val" / "dog") in str(err.value)


def test_folder_symlink_loops_fail_naming_the_link_and_a_looping_file_is_unreadable(tmp_path):
    folder = mixed_folder(tmp_path / "f")
    link = folder / "train" / "ant" / "again"
    link.symlink_to(folder / "train" / "ant", target_is_directory=True)
    with pytest.raises(DpcliError, match="Symlink loop") as err:  # os.walk would never end
        load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=8)
    assert str(link) in str(err.value)
    link.unlink()
    self_link = folder / "train" / "bee" / "me.jpg"  # ImageFolder lists it by its name: it keeps its index
    self_link.symlink_to(self_link)
    with pytest.warns(UserWarning, match="unreadable"):
        ds = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=8)
    from torchvision.datasets import ImageFolder

    listed = [p for p, _ in ImageFolder(str(folder / "train")).samples]
    assert ds.samples.total == len(listed) == len(ds.train) + 1
    assert ds.samples.unreadable.tolist() == [listed.index(str(self_link))]
    assert dict(ds.skipped)[str(self_link)] == "dangling or looping symbolic link"


def test_unreadable_file_fails_naming_it_and_keeps_finished_work(tmp_path, monkeypatch):
    folder = mixed_folder(tmp_path / "f")
    victim = str(folder / "train" / "bee" / "02.png")
    real_open = open

    def guarded(path, *args, **kwargs):  # chmod 000 does not stop root, so deny it here
        if str(path) == victim:
            raise PermissionError(13, "Permission denied", victim)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(imageio, "open", guarded, raising=False)
    with pytest.raises(DpcliError, match="Permission denied") as err:
        load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=8)
    assert victim in str(err.value) and "\n" not in str(err.value)
    monkeypatch.undo()
    ds = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=8)
    assert len(ds.train) == 10 and ds.skipped == ()


def test_split_checks_the_crop():
    with pytest.raises(ValueError):
        Split(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2), crop=5)
    assert Split(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2), crop=3).out_size == 3
    assert dataclasses.replace(Split(np.zeros((1, 4, 4, 1), np.uint8), np.zeros(1)), crop=2).out_size == 2


def test_split_fingerprint_includes_crop():
    from dpcli.data.base import split_fingerprint

    images = np.random.default_rng(0).integers(0, 256, size=(3, 5, 5, 3), dtype=np.uint8)
    plain, cropped = Split(images, np.arange(3)), Split(images, np.arange(3), crop=4)
    assert split_fingerprint(plain) != split_fingerprint(cropped)  # another pipeline, another model
    assert split_fingerprint(cropped) == split_fingerprint(Split(images.copy(), np.arange(3), crop=4))


def test_training_refuses_data_loaded_with_another_image_size(tmp_path):
    from dpcli.config import TrainConfig
    from dpcli.train.loop import train

    folder = mixed_folder(tmp_path / "mixed")
    ds = load_dataset(f"imagefolder:{folder}", data_root=tmp_path / "data", image_size=8)
    cfg = TrainConfig(dataset=ds.name, arch="convnet", width=2, depth=1, epochs=1)
    with pytest.raises(DpcliError, match="--image-size"):
        train(cfg, ds, tmp_path / "ck.h5", device=CPU)
    assert not (tmp_path / "ck.h5").exists()
    assert cfg.to_dict()["image_size"] is None
    assert TrainConfig(dataset="x", image_size=8).to_dict()["image_size"] == 8


@pytest.mark.parametrize("n", [7, 8, 12])
def test_stored_square_holds_torchvision_center_crop_for_every_shape(n):
    from torchvision import transforms as T

    side = cache.stored_side(n)
    inner = int(round((side - n) / 2.0))
    rng = np.random.default_rng(n)
    tv = T.Compose([T.Resize(side), T.CenterCrop(n)])
    for w in range(side, side + 9):
        for h in (side, side + 1, side + 4, side + 7, 2 * side + 1):
            for shape in ((w, h), (h, w)):
                im = _img(rng, *shape)
                ours = np.asarray(imageio.resize_center_square(im, side, n))
                assert ours.shape == (side, side, 3)
                np.testing.assert_array_equal(ours[inner : inner + n, inner : inner + n], np.asarray(tv(im)))


def test_hashing_and_statistics_blocks_are_bounded_in_bytes(monkeypatch):
    import dpcli.data.base as base

    images = np.random.default_rng(0).integers(0, 256, size=(10, 4, 4, 3), dtype=np.uint8)
    split = Split(images, np.arange(10) % 2)
    want = (base.split_fingerprint(split), base.channel_stats(images))
    monkeypatch.setattr(base, "_BLOCK_BYTES", 3 * 4 * 4 * 3)  # 3 rows per block
    assert [b.shape[0] for b in base.iter_blocks(images)] == [3, 3, 3, 1]
    assert (base.split_fingerprint(split), base.channel_stats(images)) == want


def test_inference_batches_are_bounded_in_bytes_and_do_not_change_results(tmp_path):
    """Evaluation, features and scores run 1,024 rows, fewer where the float input passes 16 MiB on a CPU;
    a forward pass in eval mode is per sample, so the batch size cannot change what comes out."""
    from dpcli.data.batches import inference_batch
    from dpcli.train.loop import evaluate, extract_features, make_model
    from tests.conftest import tiny_config

    def split(side: int) -> Split:
        return Split(np.zeros((2, side, side, 3), dtype=np.uint8), np.zeros(2, dtype=np.int64))

    assert inference_batch(split(32), CPU) == 1024  # CIFAR: 12 KiB a row, 16 MiB holds 1,365
    assert inference_batch(split(64), CPU) == (16 << 20) // (4 * 3 * 64 * 64) == 341
    assert inference_batch(split(224), CPU) == 32  # the floor: 16 MiB holds only 27 rows
    assert inference_batch(split(224), torch.device("cuda")) == (256 << 20) // (4 * 3 * 224 * 224) == 445
    ds = load_dataset("digits")
    model = make_model(tiny_config(), ds)
    np.testing.assert_allclose(
        extract_features(model, ds.train, ds, CPU, batch_size=7).numpy(),
        extract_features(model, ds.train, ds, CPU).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    assert evaluate(model, ds.test, ds, CPU, batch_size=13) == pytest.approx(evaluate(model, ds.test, ds, CPU))


def test_streamed_batches_trim_the_heap_every_64_mib(tmp_path, monkeypatch):
    """glibc keeps freed batch buffers; a streamed epoch hands them back every 64 MiB of input read."""
    import ctypes

    import dpcli.data.batches as batches

    calls = []

    class FakeLibc:
        def malloc_trim(self, pad):
            calls.append(pad)

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    step = batches.heap_trimmer(every=100)
    for nbytes in (60, 30, 20, 99, 1, 250):
        step(nbytes)
    assert calls == [0, 0, 0]  # at 110, 100 and 250 bytes since the last trim
    images = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    labels = np.zeros(40, dtype=np.int64)
    (tmp_path / "raw").write_bytes(images.tobytes())
    streamed = Split(DiskImages(tmp_path / "raw", 0, (8, 8, 3), np.arange(40)), labels)
    monkeypatch.setattr(batches, "_TRIM_EVERY_BYTES", 8 * 8 * 3 * 10)  # 10 rows
    kw = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), device=CPU, shuffle=False, augment=False, workers=0)
    calls.clear()
    out = list(iterate_batches(streamed, 5, **kw))  # 8 batches of 5 rows: a trim after every second one
    assert calls == [0] * 4
    calls.clear()
    same = list(iterate_batches(Split(images, labels), 5, **kw))
    assert calls == []  # in memory, the data fit: never
    assert all(torch.equal(a[0], b[0]) for a, b in zip(out, same))


def test_one_process_pipeline_hands_the_heap_back_between_stages(tmp_path, monkeypatch):
    """`dpcli prune DATASET` trains, computes S and prunes in one process: each stage's freed heap goes back
    to the OS before the next."""
    import ctypes

    from dpcli.config import InfluenceConfig
    from dpcli.data.sources import load_dataset
    from dpcli.stages import pipeline

    calls = []

    class FakeLibc:
        def malloc_trim(self, pad):
            calls.append(pad)

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    ds = load_dataset("digits")
    tcfg = pipeline.train_config(ds, {"epochs": 1, "width": 4, "depth": 1})
    run = pipeline.full_run(
        ds, tcfg, InfluenceConfig().validate(), run_root=tmp_path, device=CPU, data_root=None, force=False
    )
    assert calls == [0, 0]  # after training, after the influence
    assert run.influence.n == len(ds.train)
