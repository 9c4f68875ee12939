"""Batched JPEG decoding (torchvision.io.decode_jpeg, on the GPU when one is used) against the PIL path.

The CPU run of the batched code is checked here against PIL; the CUDA run (marked ``cuda``, skipped
without a GPU; benchmarks/gpu_smoke.sh runs it) against PIL too.  Tolerance: libjpeg-turbo in PIL and
in torchvision give identical pixels, and the bilinear antialiased resize differs from PIL's by
rounding (at most 1 level).  nvjpeg upsamples 4:2:0 chroma without libjpeg's "fancy" interpolation,
so single pixels at sharp colour edges differ by up to about 30 levels while the mean difference stays
below one level (measured on an H200: max 31, mean 0.4-0.8 over 20,000 photo-like JPEGs); the CUDA
test bounds the mean tightly and the maximum loosely.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import dpcli.data.cache as cache
import dpcli.data.imageio as imageio
import dpcli.data.jpeg as jpeg
from dpcli.errors import DpcliError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run benchmarks/gpu_smoke.sh)")


def _photo(rng: np.random.Generator, w: int, h: int, mode: str = "RGB") -> Image.Image:
    """Smooth colour structure (JPEG-friendly, like a photo) plus some noise."""
    grid = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    im = Image.fromarray(grid).resize((w, h), Image.BICUBIC)
    arr = np.clip(np.asarray(im, dtype=np.int16) + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


def jpeg_folder(root: Path, seed: int = 0) -> dict[str, Path]:
    """Every kind of file the batched path must handle: plain JPEGs of mixed sizes (down- and
    up-scaled), grayscale, progressive, 4:4:4, EXIF-rotated, CMYK, and files that must be skipped."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    files: dict[str, Path] = {}

    def save(name: str, im: Image.Image, **kw) -> None:
        files[name] = root / f"{len(files):02d}_{name}.jpg"
        im.save(files[name], "JPEG", **kw)

    for k, (w, h) in enumerate([(40, 29), (17, 23), (64, 48), (9, 31), (33, 33)]):
        save(f"plain{k}", _photo(rng, w, h), quality=90)
    save("gray", _photo(rng, 30, 21, "L"), quality=90)
    save("progressive", _photo(rng, 37, 26), quality=85, progressive=True)
    save("444", _photo(rng, 27, 35), quality=95, subsampling=0)
    for orientation in (3, 6, 8, 5):
        ex = Image.Exif()
        ex[imageio.EXIF_ORIENTATION] = orientation
        save(f"exif{orientation}", _photo(rng, 36, 20), quality=90, exif=ex.tobytes())
    save("cmyk", _photo(rng, 25, 30).convert("CMYK"), quality=90)
    files["png"] = root / f"{len(files):02d}_png.png"
    _photo(rng, 22, 19).save(files["png"])
    good = io.BytesIO()
    _photo(rng, 30, 30).save(good, "JPEG", quality=90)
    files["truncated"] = root / f"{len(files):02d}_truncated.jpg"
    files["truncated"].write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    files["text"] = root / f"{len(files):02d}_text.jpg"
    files["text"].write_text("not a picture")
    files["garbage"] = root / f"{len(files):02d}_garbage.jpg"
    files["garbage"].write_bytes(b"\xff\xd8\xff" + bytes(rng.integers(0, 256, 500, dtype=np.uint8)))
    return files


def _compare(got, want, max_diff: int, mean_diff: float) -> None:
    assert [t for t, _ in got] == [t for t, _ in want]
    for (tag, a), (_, b) in zip(got, want):
        if tag != "ok":
            continue
        assert a.dtype == np.uint8 and a.shape == b.shape
        d = np.abs(a.astype(np.int16) - b.astype(np.int16))
        assert d.max() <= max_diff and d.mean() <= mean_diff, (d.max(), d.mean())


SIZES = [(cache.stored_side(16), 16), (cache.stored_side(24), 24), (cache.stored_side(56), 56), None]


@pytest.mark.parametrize("size", SIZES)
def test_batched_cpu_decode_matches_pil(tmp_path, size):
    files = jpeg_folder(tmp_path / "f")
    paths = [str(p) for p in files.values()]
    if size is None:  # native size: no resize, so the decoders must agree exactly
        paths = [str(files[k]) for k in ("plain0", "progressive", "444", "exif6", "truncated", "png")]
    got = jpeg.decode_many(paths, size, False, "cpu")
    want = [imageio.decode(p, size, False) for p in paths]
    _compare(got, want, max_diff=0 if size is None else 1, mean_diff=0.0 if size is None else 0.25)
    tags = dict(zip(paths, (t for t, _ in got)))
    for bad in ("truncated", "text", "garbage"):
        if str(files[bad]) in tags:
            assert tags[str(files[bad])] == "skip"
    if size is not None:
        assert got[paths.index(str(files["exif6"]))][1].shape == (size[0], size[0], 3)


def test_batched_cpu_decode_grayscale(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for k, (w, h) in enumerate([(30, 20), (12, 40), (24, 24)]):
        paths.append(str(tmp_path / f"{k}.jpg"))
        _photo(rng, w, h, "L").save(paths[-1], quality=90)
    size = (cache.stored_side(16), 16)
    got = jpeg.decode_many(paths, size, True, "cpu")
    _compare(got, [imageio.decode(p, size, True) for p in paths], max_diff=1, mean_diff=0.25)
    assert got[0][1].shape == (size[0], size[0], 1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pil(orientation):
    arr = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    ex = Image.Exif()
    ex[imageio.EXIF_ORIENTATION] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", exif=ex.tobytes())
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    got = jpeg.apply_orientation(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert jpeg.exif_orientation(buf.getvalue()) == orientation
    np.testing.assert_array_equal(got, want)


def test_only_complete_rgb_or_gray_jpegs_reach_decode_jpeg(tmp_path, monkeypatch):
    """nvjpeg may decode a truncated file without an error, and converts CMYK differently from PIL:
    such files must go to PIL (which skips the truncated one), whatever the CPU decoder would do."""
    import torchvision.io

    files = jpeg_folder(tmp_path / "f")
    seen: list[bytes] = []
    real = torchvision.io.decode_jpeg

    def spy(data, *args, **kwargs):
        seen.extend(bytes(t.numpy()) for t in (data if isinstance(data, list) else [data]))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", spy)
    got = dict(zip(files, jpeg.decode_many([str(p) for p in files.values()], (18, 16), False, "cpu")))
    for name in ("truncated", "cmyk", "png", "text", "garbage"):
        assert files[name].read_bytes() not in seen, name
    for name in ("plain0", "gray", "progressive", "exif6"):
        assert files[name].read_bytes() in seen, name
    assert got["truncated"][0] == "skip" and got["cmyk"][0] == "ok"


def test_jpeg_components_from_the_frame_header(tmp_path):
    files = jpeg_folder(tmp_path / "f")
    comps = {k: jpeg.jpeg_components(p.read_bytes()) for k, p in files.items()}
    assert comps["plain0"] == comps["progressive"] == comps["exif6"] == 3
    assert comps["gray"] == 1 and comps["cmyk"] == 4
    assert comps["png"] is None and comps["text"] is None


def _build(tmp_path: Path, name: str, folder: dict[str, Path], decoder: str, size=(18, 16)) -> cache.CacheInfo:
    paths = [str(p) for p in folder.values()]
    labels = np.arange(len(paths)) % 2
    return cache.open_or_build(
        tmp_path / f"{name}.h5", paths, labels, n_train=len(paths) - 4, image_size=size[1], workers=1, decoder=decoder
    )


def _rows(info: cache.CacheInfo) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(info.split("train", True).images), np.asarray(info.split("test", True).images)


def test_cache_built_by_the_batched_decoder_matches_pil(tmp_path, monkeypatch):
    folder = jpeg_folder(tmp_path / "f")
    a = _build(tmp_path, "pil", folder, "pil")
    calls = []
    batched = jpeg.decode_many
    monkeypatch.setattr(jpeg, "decode_many", lambda *args: calls.append(len(args[0])) or batched(*args))
    b = _build(tmp_path, "cpu", folder, "cpu")
    readable = sum(imageio.probe(str(p))[0] == "ok" for p in folder.values())
    assert sum(calls) == readable > 10  # every readable file went the batched way (PIL only as its fallback)
    assert a.skipped == b.skipped and len(a.skipped) == 3
    np.testing.assert_array_equal(a.train_rows, b.train_rows)
    np.testing.assert_array_equal(a.test_rows, b.test_rows)
    for x, y in zip(_rows(a), _rows(b)):
        d = np.abs(x.astype(np.int16) - y.astype(np.int16))
        assert d.max() <= 1 and d.mean() <= 0.25
    import h5py

    with h5py.File(b.path) as f:
        assert f.attrs["decoder"] == "cpu"


def test_decoder_switch(monkeypatch):
    jpgs, pngs = ["a.jpg", "b.JPEG", "c.png"], ["a.png", "b.png", "c.jpg"]
    monkeypatch.delenv(jpeg.ENV, raising=False)
    monkeypatch.setattr(jpeg, "_cuda_available", lambda: True)
    assert jpeg.decoder(jpgs, workers=2, side=73) == "cuda"  # auto: the GPU for a mostly-JPEG folder
    assert jpeg.decoder(jpgs, workers=16, side=256) == "cuda"
    assert jpeg.decoder(jpgs, workers=16, side=73) == "pil"  # many PIL workers beat nvjpeg on small images
    assert jpeg.decoder(pngs) == "pil"
    assert jpeg.decoder(jpgs, env="pil") == "pil"
    assert jpeg.decoder(pngs, env="cuda") == "cuda"
    monkeypatch.setattr(jpeg, "_cuda_available", lambda: False)
    assert jpeg.decoder(jpgs) == "pil"  # auto without a GPU
    with pytest.raises(DpcliError, match="no CUDA device") as err:
        jpeg.decoder(jpgs, env="cuda")
    assert "\n" not in str(err.value)
    monkeypatch.setenv(jpeg.ENV, "nvjpeg")
    with pytest.raises(DpcliError, match="DPCLI_JPEG_DECODE must be one of auto, cuda, pil"):
        jpeg.decoder(jpgs)


@cuda
def test_cuda_jpeg_decode_matches_pil_and_builds_the_same_cache(tmp_path):
    files = jpeg_folder(tmp_path / "f")
    paths = [str(p) for p in files.values()]
    for size in SIZES[:3]:
        got = jpeg.decode_many(paths, size, False, "cuda")
        _compare(got, [imageio.decode(p, size, False) for p in paths], max_diff=80, mean_diff=3.0)
        shapes = [v.shape for t, v in got if t == "ok"]
        assert shapes == [(size[0], size[0], 3)] * len(shapes)
    a, b = _build(tmp_path, "pil", files, "pil"), _build(tmp_path, "cuda", files, "cuda")
    assert a.skipped == b.skipped and len(a.skipped) == 3
    for x, y in zip(_rows(a), _rows(b)):
        d = np.abs(x.astype(np.int16) - y.astype(np.int16))
        assert d.max() <= 80 and d.mean() <= 3.0
    assert jpeg.decoder(paths, workers=1, side=256) == "cuda"  # auto picks the GPU here
