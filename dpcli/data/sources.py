"""Datasets held fully in memory as uint8 images, and fast batched iteration.

Every dataset is a pair of :class:`Split` objects (``uint8 (N, H, W, C)`` images
and ``int64 (N,)`` labels).  Training batches are built with tensor ops on the
target device (:func:`iterate_batches`): no per-sample PIL work in the training
loop.

Dataset names understood by :func:`load_dataset`:

``digits``
    scikit-learn's 8x8 handwritten digits (shipped inside scikit-learn, fully
    offline), pixel values 0..16 scaled to uint8 0..255 as
    ``(v * 255 + 8) // 16`` (round half up), shape ``(N, 8, 8, 1)``.  The
    train/test split is FIXED and identical for everyone: per class, samples are
    ordered by ``sha256(b"dpcli-digits-split:<original index>")`` and the first
    ``round(0.2 * n_class)`` go to test (359 test / 1438 train); both splits are
    kept in original sklearn order.  ``augment`` is False (flipping digits is
    wrong).
``cifar10`` / ``cifar100``
    torchvision's CIFAR loaders with ``root=data_root``; files are read offline
    when present and downloaded on first use when ``download=True``.
``imagefolder:PATH``
    ``PATH/train`` and ``PATH/test`` (or ``PATH/val``), one sub-folder per class
    (class list = sorted train sub-folders; the test split may only use those
    classes, and may lack some).  Images are found recursively in each class
    folder (extensions as torchvision's ImageFolder), in sorted path order.
    Every image is decoded once with PIL to RGB, or to L when *all* images are
    grayscale.  All images (train and test) must share one size: a differing one
    raises :class:`DpcliError` naming it (images are never resized silently).
    The decoded arrays are cached as HDF5 in
    ``data_root/imagefolder-cache/<key>.h5`` where the key hashes the absolute
    path and every file's relative path, size and mtime; the cache is written to
    a temp file and renamed, so it is never half-written, and a changed file
    list invalidates it.  ``augment`` is True (crop + flip suits natural images;
    use ``dataclasses.replace(ds, augment=False)`` otherwise).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dpcli.artifacts.h5 import publish
from dpcli.errors import DpcliError

__all__ = [
    "BUILTIN_DATASETS",
    "Dataset",
    "Split",
    "augment_pad",
    "dataset_fingerprint",
    "default_data_root",
    "iterate_batches",
    "load_dataset",
]

BUILTIN_DATASETS = ("digits", "cifar10", "cifar100")
IMAGEFOLDER_PREFIX = "imagefolder:"
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SALT = b"dpcli-digits-split:"
_CACHE_VERSION = 1
# Below this many images, imagefolder decoding runs in-process (a pool costs more).
_PARALLEL_MIN_IMAGES = 2000
_CHUNK = 512
# Splits up to this size are uploaded once to an accelerator and indexed there.
_DEVICE_CACHE_MAX_BYTES = 4 << 30
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True, eq=False)
class Split:
    """One split held in memory.  Treat the arrays as read-only.

    ``images`` is ``uint8 (N, H, W, C)``; ``labels`` is ``int64 (N,)``.
    Equality is identity (the fields are arrays).
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        images = np.ascontiguousarray(self.images)
        labels = np.ascontiguousarray(self.labels, dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"Split.images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"Split.labels must have shape ({images.shape[0]},), got {labels.shape}")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair plus what training needs to know about it."""

    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[3])

    @property
    def image_size(self) -> int:
        """Image height H (images are usually square)."""
        return int(self.train.images.shape[1])

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self)


def dataset_fingerprint(ds: Dataset) -> str:
    """16 hex chars of sha256 over the train split (shapes, labels, image bytes).

    Stable across processes and machines; cached on the object.  The test split,
    name and class names do not enter it.
    """
    cached = ds.__dict__.get("_fingerprint")
    if cached is not None:
        return cached
    h = hashlib.sha256()
    h.update(b"dpcli-fingerprint-v1\0")
    h.update(json.dumps([list(ds.train.images.shape), list(ds.train.labels.shape)]).encode())
    h.update(np.ascontiguousarray(ds.train.labels, dtype="<i8").tobytes())
    h.update(memoryview(np.ascontiguousarray(ds.train.images)).cast("B"))
    fp = h.hexdigest()[:16]
    object.__setattr__(ds, "_fingerprint", fp)
    return fp


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std in [0, 1] units, via histograms.

    A constant channel gets std 1.0 so that normalizing never divides by zero.
    """
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(images.shape[3]):
        counts = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        n = counts.sum()
        if n == 0:
            means.append(0.0)
            stds.append(1.0)
            continue
        mean = float((counts * values).sum() / n)
        var = float((counts * (values - mean) ** 2).sum() / n)
        std = var**0.5 / 255.0
        means.append(mean / 255.0)
        stds.append(std if std > 0 else 1.0)
    return tuple(means), tuple(stds)


def _make_dataset(name: str, train: Split, test: Split, classes: Sequence[str], augment: bool) -> Dataset:
    mean, std = _channel_stats(train.images)
    return Dataset(name=name, train=train, test=test, classes=tuple(classes), mean=mean, std=std, augment=augment)


# --------------------------------------------------------------------------- loading


def default_data_root() -> Path:
    """``$DPCLI_DATA``, else ``$XDG_CACHE_HOME/dpcli/data``, else ``~/.cache/dpcli/data``."""
    env = os.environ.get("DPCLI_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "dpcli" / "data"
    return Path.home() / ".cache" / "dpcli" / "data"


def load_dataset(
    name: str,
    data_root: Path | None = None,
    download: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Load a dataset by name (see the module docstring for the names).

    ``progress(done, total)`` is called while decoding an imagefolder.
    """
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    raw = name.strip()
    if raw.lower().startswith(IMAGEFOLDER_PREFIX):
        path = raw[len(IMAGEFOLDER_PREFIX) :]
        if not path:
            raise DpcliError("imagefolder: needs a path, e.g. imagefolder:/data/mydataset.")
        return _load_imagefolder(Path(path), root, progress)
    key = raw.lower().replace("-", "").replace("_", "")
    if key == "digits":
        return _load_digits()
    if key in ("cifar10", "cifar100"):
        return _load_cifar(key, root, download)
    valid = ", ".join(BUILTIN_DATASETS) + ", imagefolder:PATH"
    raise DpcliError(f"Unknown dataset {name!r}; valid names are: {valid}.")


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.asarray(bunch.images)  # float 0..16, (1797, 8, 8)
    images = ((raw.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = sorted(members, key=lambda i: hashlib.sha256(_DIGITS_SPLIT_SALT + str(int(i)).encode()).digest())
        n_test = int(len(members) * DIGITS_TEST_FRACTION + 0.5)
        test_mask[np.asarray(order[:n_test], dtype=np.int64)] = True
    train = Split(images[~test_mask], labels[~test_mask])
    test = Split(images[test_mask], labels[test_mask])
    classes = tuple(str(c) for c in range(10))
    return _make_dataset("digits", train, test, classes, augment=False)


def _load_cifar(key: str, root: Path, download: bool) -> Dataset:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if key == "cifar10" else torchvision.datasets.CIFAR100
    pretty = "CIFAR-10" if key == "cifar10" else "CIFAR-100"

    def build(train: bool, allow_download: bool):
        return cls(root=str(root), train=train, download=allow_download)

    try:
        try:
            parts = (build(True, False), build(False, False))
        except Exception:
            if not download:
                raise RuntimeError("download disabled") from None
            root.mkdir(parents=True, exist_ok=True)
            parts = (build(True, True), build(False, False))
    except Exception as exc:  # missing files, no network, corrupt archive, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DpcliError(
            f"{pretty} was not found in {root / cls.base_folder} and could not be downloaded ({reason}); "
            f"put the extracted '{cls.base_folder}' folder of {cls.url} under {root} "
            f"(or pass --data-root / set DPCLI_DATA), or use imagefolder:PATH."
        ) from exc
    tr, te = parts
    train = Split(np.asarray(tr.data, dtype=np.uint8), np.asarray(tr.targets, dtype=np.int64))
    test = Split(np.asarray(te.data, dtype=np.uint8), np.asarray(te.targets, dtype=np.int64))
    return _make_dataset(key, train, test, tuple(tr.classes), augment=True)


# --------------------------------------------------------------------------- imagefolder


def _decode_image(path: str) -> np.ndarray:
    """Decode one image with PIL: ``(H, W)`` uint8 if grayscale, else ``(H, W, 3)``."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in _GRAY_MODES:
            return np.asarray(im.convert("L"), dtype=np.uint8)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _decode_chunk(paths: Sequence[str]) -> list[np.ndarray]:
    out = []
    for p in paths:
        try:
            out.append(_decode_image(p))
        except Exception as exc:  # report as a user error in the parent
            out.append(_DecodeFailure(p, f"{type(exc).__name__}: {exc}"))
    return out


class _DecodeFailure:
    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason


def _list_images(folder: str) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of every image under ``folder`` (recursive), sorted by path."""
    found: list[tuple[str, int, int]] = []
    stack = [folder]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    stack.append(e.path)
                elif e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file():
                    st = e.stat()
                    found.append((e.path, st.st_size, st.st_mtime_ns))
    found.sort()
    return found


def _scan_split(split_dir: Path, classes: Sequence[str], split: str) -> list[tuple[str, int, int, int]]:
    """``(path, label, size, mtime_ns)`` for every image of one split."""
    index = {c: i for i, c in enumerate(classes)}
    items: list[tuple[str, int, int, int]] = []
    for sub in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in index:
            raise DpcliError(
                f"{split} class folder {sub} has no counterpart in the train split (classes: {', '.join(classes)})."
            )
        files = _list_images(str(sub))
        if split == "train" and not files:
            raise DpcliError(f"Train class folder {sub} contains no images ({', '.join(IMG_EXTENSIONS)}).")
        label = index[sub.name]
        items.extend((path, label, size, mtime) for path, size, mtime in files)
    if not items:
        raise DpcliError(f"The {split} split {split_dir} contains no images in class sub-folders.")
    return items


def _cache_key(root: Path, splits: Sequence[tuple[str, list[tuple[str, int, int, int]]]]) -> str:
    prefix = len(str(root)) + 1
    h = hashlib.sha256()
    h.update(f"dpcli-imagefolder-v{_CACHE_VERSION}\0{root}\0".encode())
    for split, items in splits:
        h.update(f"[{split}]\0".encode())
        h.update("".join(f"{p[prefix:]}\0{lab}\0{size}\0{mtime}\0" for p, lab, size, mtime in items).encode())
    return h.hexdigest()[:32]


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def _pool_context():
    methods = multiprocessing.get_all_start_methods()
    # fork: workers start instantly and need nothing re-imported; they only run PIL.
    if sys.platform.startswith("linux") and "fork" in methods:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _decode_all(paths: list[str], progress: Callable[[int, int], None] | None) -> list[np.ndarray]:
    total = len(paths)
    if progress:
        progress(0, total)
    chunks = [paths[i : i + _CHUNK] for i in range(0, total, _CHUNK)]
    results: list[np.ndarray] = []
    workers = _workers()
    if total < _PARALLEL_MIN_IMAGES or workers == 1:
        for chunk in chunks:
            results.extend(_decode_chunk(chunk))
            if progress:
                progress(len(results), total)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() in a multi-threaded process
            with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
                for decoded in pool.map(_decode_chunk, chunks):
                    results.extend(decoded)
                    if progress:
                        progress(len(results), total)
    for r in results:
        if isinstance(r, _DecodeFailure):
            raise DpcliError(f"Cannot decode image {r.path} ({r.reason}).")
    return results


def _stack(decoded: list[np.ndarray], gray: bool) -> np.ndarray:
    if not decoded:
        return np.zeros((0, 1, 1, 1 if gray else 3), dtype=np.uint8)
    h, w = decoded[0].shape[:2]
    out = np.empty((len(decoded), h, w, 1 if gray else 3), dtype=np.uint8)
    for i, a in enumerate(decoded):
        out[i] = a[..., None] if a.ndim == 2 else a
    return out


def _read_cache(path: Path) -> Dataset | None:
    """The cached decoded dataset (name left empty), or None if unreadable/foreign."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs["version"]) != _CACHE_VERSION:
                return None
            classes = tuple(json.loads(f.attrs["classes"]))
            mean = tuple(float(v) for v in f.attrs["mean"])
            std = tuple(float(v) for v in f.attrs["std"])
            train, test = (Split(f[s]["images"][()], f[s]["labels"][()]) for s in ("train", "test"))
        return Dataset(name="", train=train, test=test, classes=classes, mean=mean, std=std, augment=True)
    except Exception:  # unreadable / foreign / older file: decode again and overwrite
        return None


def _write_cache(path: Path, ds: Dataset, source: Path) -> None:
    """Write ``ds`` to ``path`` atomically (temp file + rename); warn and go on if impossible."""
    import h5py

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        warnings.warn(f"dpcli: cannot write the imagefolder cache in {path.parent} ({exc}); continuing without it")
        return
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["version"] = _CACHE_VERSION
            f.attrs["classes"] = json.dumps(list(ds.classes))
            f.attrs["mean"] = np.asarray(ds.mean, dtype=np.float64)
            f.attrs["std"] = np.asarray(ds.std, dtype=np.float64)
            f.attrs["source"] = str(source)
            for s, split in (("train", ds.train), ("test", ds.test)):
                g = f.create_group(s)
                # Uncompressed: decoded JPEG pixels barely compress and raw reads are fastest.
                g.create_dataset("images", data=split.images)
                g.create_dataset("labels", data=split.labels)
        publish(tmp, path)
    except Exception as exc:
        warnings.warn(f"dpcli: cannot write the imagefolder cache {path} ({exc}); continuing without it")
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _load_imagefolder(path: Path, data_root: Path, progress: Callable[[int, int], None] | None) -> Dataset:
    root = path.expanduser().resolve()
    name = f"{IMAGEFOLDER_PREFIX}{root}"
    if not root.is_dir():
        raise DpcliError(f"Image folder {root} does not exist or is not a directory.")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DpcliError(f"Image folder {root} has no 'train' sub-folder (expected train/<class>/<images>).")
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if test_dir is None:
        raise DpcliError(f"Image folder {root} has no 'test' (or 'val') sub-folder next to 'train'.")
    classes = tuple(sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise DpcliError(f"{train_dir} has no class sub-folders (expected train/<class>/<images>).")
    train_items = _scan_split(train_dir, classes, "train")
    test_items = _scan_split(test_dir, classes, test_dir.name)

    key = _cache_key(root, [("train", train_items), ("test", test_items)])
    cache_path = data_root / "imagefolder-cache" / f"{key}.h5"
    if cache_path.is_file():
        cached = _read_cache(cache_path)
        if cached is not None and cached.classes == classes:
            return dataclasses.replace(cached, name=name)

    paths = [it[0] for it in train_items] + [it[0] for it in test_items]
    decoded = _decode_all(paths, progress)
    sizes = [a.shape[:2] for a in decoded]
    common = Counter(sizes).most_common(1)[0][0]
    for p, s in zip(paths, sizes):
        if s != common:
            raise DpcliError(
                f"Image {p} is {s[1]}x{s[0]} pixels but the others are {common[1]}x{common[0]}; "
                "resize all images to one size first."
            )
    gray = all(a.ndim == 2 for a in decoded)
    n_train = len(train_items)
    train = Split(_stack(decoded[:n_train], gray), np.array([it[1] for it in train_items], dtype=np.int64))
    test = Split(_stack(decoded[n_train:], gray), np.array([it[1] for it in test_items], dtype=np.int64))
    del decoded
    ds = _make_dataset(name, train, test, classes, augment=True)
    _write_cache(cache_path, ds, root)
    return ds


# --------------------------------------------------------------------------- batches


def augment_pad(image_size: int) -> int:
    """Zero padding of the random crop: 4 pixels, scaled down for tiny images."""
    return min(4, max(1, image_size // 8))


def _device_tensors(split: Split, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """Whole split uploaded once to an accelerator (cached on the split), else None."""
    if device.type == "cpu" or split.images.nbytes > _DEVICE_CACHE_MAX_BYTES:
        return None
    cache = split.__dict__.get("_device_cache")
    if cache is None:
        cache = {}
        object.__setattr__(split, "_device_cache", cache)
    key = str(device)
    if key not in cache:
        cache[key] = (
            torch.from_numpy(split.images.copy()).to(device),
            torch.from_numpy(split.labels.copy()).to(device),
        )
    return cache[key]


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str,
    shuffle: bool,
    augment: bool,
    generator: torch.Generator | None = None,
    indices: np.ndarray | None = None,
    part: Callable[[int], tuple[int, int]] | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """One epoch over ``split`` (or over ``indices`` of it), in batches.

    ``part(B) -> (lo, hi)`` (one torchrun rank's slice of a global batch of ``B``): the
    randomness is drawn for the whole global batch as usual, but only rows ``[lo, hi)``
    of ``x`` and ``y`` are built; ``idx`` stays the global batch's indices.

    Yields ``(x, y, idx)``: ``x`` float32 ``(B, C, H, W)`` contiguous on
    ``device``, ``(pixel / 255 - mean) / std``; ``y`` int64 ``(B,)`` on
    ``device``; ``idx`` int64 ``(B,)`` **on the CPU**, the dataset indices of the
    rows.  The last batch may be smaller.  Without ``shuffle`` the order is that
    of ``indices`` (default ``0..N-1``).

    Randomness comes only from ``generator`` (the global torch RNG if None) and is
    drawn on the generator's device, so a seed gives the same batches on every
    device.  Draw order: ``torch.randperm(n)`` once per epoch if ``shuffle``;
    then per batch, if ``augment``, ``offsets = torch.randint(0, 2*pad+1, (B, 2))``
    (row, column offset of the crop window inside the zero-padded image) and
    ``flips = torch.randint(0, 2, (B,))``.  Augmentation = zero-pad by
    ``pad = augment_pad(H)`` pixels (pixel value 0, before normalization), crop
    back to ``H x W`` at the offsets, then mirror left-right where ``flips == 1``.
    """
    device = torch.device(device)
    if batch_size < 1:
        raise DpcliError(f"Batch size must be at least 1, got {batch_size}.")
    n_total = len(split)
    if indices is None:
        order = np.arange(n_total, dtype=np.int64)
    else:
        order = np.asarray(indices)
        if order.dtype == bool:
            raise ValueError("indices must be integer dataset indices, not a boolean mask")
        order = order.astype(np.int64, copy=False).reshape(-1)
        if order.size and (order.min() < 0 or order.max() >= n_total):
            raise ValueError(f"indices out of range for a split of {n_total} samples")
    _, h, w, c = split.images.shape
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std need {c} values (one per channel), got {len(mean)}/{len(std)}")
    if order.size == 0:
        return
    gdev = generator.device if generator is not None else torch.device("cpu")
    if shuffle:
        perm = torch.randperm(order.size, generator=generator, device=gdev).cpu().numpy()
        order = order[perm]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, c, 1, 1)
    pad = augment_pad(h)
    resident = _device_tensors(split, device)
    order_t = torch.from_numpy(order)

    for start in range(0, order.size, batch_size):
        idx = order_t[start : start + batch_size]
        b = idx.numel()
        global_idx = idx
        if augment:  # drawn for the global batch before any slicing: every rank draws the same numbers
            offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=gdev).to(device)
            flips = torch.randint(0, 2, (b,), generator=generator, device=gdev).to(device).bool()
        if part is not None:
            lo, hi = part(b)
            idx = idx[lo:hi]
            if augment:
                offsets, flips = offsets[lo:hi], flips[lo:hi]
        if resident is not None:
            idx_dev = idx.to(device)
            xb = resident[0].index_select(0, idx_dev)
            yb = resident[1].index_select(0, idx_dev)
        else:
            sel = idx.numpy()
            xb = torch.from_numpy(split.images[sel]).to(device)
            yb = torch.from_numpy(split.labels[sel]).to(device)
        if augment:
            xb = _crop_flip(xb, offsets, flips, pad)
        x = xb.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        x.div_(255.0).sub_(mean_t).div_(std_t)
        yield x, yb, global_idx.clone()


def _crop_flip(xb: Tensor, offsets: Tensor, flips: Tensor, pad: int) -> Tensor:
    """Batched random crop (from the zero-padded image) + horizontal flip, NHWC uint8."""
    b, h, w, _ = xb.shape
    padded = F.pad(xb, (0, 0, pad, pad, pad, pad))
    ar_h = torch.arange(h, device=xb.device)
    ar_w = torch.arange(w, device=xb.device)
    rows = offsets[:, :1] + ar_h  # (B, H)
    cols = offsets[:, 1:] + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)  # (B, W)
    bidx = torch.arange(b, device=xb.device)[:, None, None]
    return padded[bidx, rows[:, :, None], cols[:, None, :]]
