"""Dataset containers, the fingerprint, and the dataset-source registry.

A :class:`Split` holds ``uint8 (N, H, W, C)`` images and ``int64 (N,)`` labels.  The images are either a
numpy array in memory, or :class:`DiskImages`: rows of the on-disk cache read on demand (a streamed
split, for data larger than memory).  Every consumer reads them through
:func:`dpcli.data.batches.iterate_batches`, so both kinds give the same batches.

A dataset source is one module in :mod:`dpcli.data.sources` whose class subclasses
:class:`DatasetSource`; subclassing registers it.  This module imports no torch (the CLI imports it
at start-up).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from dpcli.data.samples import SampleSpace
from dpcli.errors import DpcliError
from dpcli.registry import Registry

Progress = Callable[[int, int], None]

# Rows per block when hashing or histogramming a split, so a streamed split is never loaded whole:
# 4096 small rows, fewer large ones (at most 64 MiB of pixels; 4096 rows of 366 px would be 1.6 GB).
_BLOCK_ROWS = 4096
_BLOCK_BYTES = 64 << 20


class DiskImages:
    """``uint8 (N, H, W, C)`` rows stored contiguously in a file at a byte offset, read with ``pread``.

    ``rows[k]`` is the file row of dataset index ``k`` (skipped files leave holes).  Reads of runs of
    consecutive rows are merged into one system call; no HDF5 library call happens in the reader, so
    forked DataLoader workers can share it (each process opens its own descriptor).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, path: str | Path, offset: int, row_shape: Sequence[int], rows: np.ndarray) -> None:
        self.path = str(path)
        self.offset = int(offset)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.row_bytes = int(np.prod(self.row_shape))
        self._fd: int | None = None
        self._pid: int | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (int(self.rows.shape[0]), *self.row_shape)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return int(self.rows.shape[0]) * self.row_bytes

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None  # a descriptor is per process
        return state

    def _file(self) -> int:
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        assert self._fd is not None
        return self._fd

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read(np.array([key], dtype=np.int64))[0]
        if isinstance(key, slice):
            return self.read(np.arange(*key.indices(len(self)), dtype=np.int64))
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self.read(idx.astype(np.int64, copy=False).reshape(-1))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def read(self, idx: np.ndarray) -> np.ndarray:
        """Images of dataset indices ``idx`` in that order (duplicates allowed)."""
        n = int(idx.shape[0])
        if n and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images")
        rows = self.rows[idx]
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        buf = np.empty((n, self.row_bytes), dtype=np.uint8)
        if n:
            breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
            fd = self._file()
            for s, e in zip(np.r_[0, breaks].tolist(), np.r_[breaks, n].tolist()):
                want = (e - s) * self.row_bytes
                got = os.preadv(fd, [buf[s:e].data.cast("B")], self.offset + int(sorted_rows[s]) * self.row_bytes)
                if got != want:
                    raise DpcliError(f"{self.path}: image cache is shorter than expected; delete it to rebuild")
        out = np.empty((n, *self.row_shape), dtype=np.uint8)
        out.reshape(n, self.row_bytes)[order] = buf  # (n, -1) fails for n = 0
        return out


@dataclass(frozen=True, eq=False)
class Split:
    """One split.  Treat the arrays as read-only; equality is identity.

    ``images`` is ``uint8 (N, H, W, C)`` in memory, or :class:`DiskImages` (streamed); ``labels`` is
    ``int64 (N,)``.  ``crop`` is the side of the model's input when the stored images are larger
    (``--image-size``: random resized crop for training, center crop otherwise); None keeps H x W.
    """

    images: np.ndarray | DiskImages
    labels: np.ndarray
    crop: int | None = None

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, DiskImages):
            images = np.ascontiguousarray(images)
        labels = np.ascontiguousarray(self.labels, dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"Split.images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"Split.labels must have shape ({images.shape[0]},), got {labels.shape}")
        if self.crop is not None and not 0 < self.crop <= min(images.shape[1:3]):
            raise ValueError(f"Split.crop {self.crop} does not fit images of {images.shape[1:3]}")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def streamed(self) -> bool:
        """True when the images are read from disk batch by batch."""
        return isinstance(self.images, DiskImages)

    @property
    def out_size(self) -> int:
        """Side of the images the model sees."""
        return int(self.crop) if self.crop is not None else int(self.images.shape[1])


@dataclass(frozen=True)
class InputSpec:
    """A model's own preprocessing (pretrained weights'): the shorter side resized to ``resize`` with
    ``interpolation`` (PIL, antialiased), the center ``crop`` x ``crop``, then ``(x - mean) / std``, as in
    torchvision's and timm's eval transforms.  ``source`` names where it came from."""

    crop: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    source: str = ""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair plus what training needs to know about it.

    ``skipped`` lists ``(path, reason)`` of input files left out (unreadable as images); stages
    record it in their artifacts.  ``space`` maps the train rows to the user's sample indices, where files
    that did not decode leave gaps (None: every listed sample is a row).
    """

    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    skipped: tuple[tuple[str, str], ...] = ()
    input: InputSpec | None = None  # the model's preprocessing it was loaded with; None: dpcli's defaults
    space: SampleSpace | None = None

    @property
    def samples(self) -> SampleSpace:
        """The user's numbering of the training samples (:mod:`dpcli.data.samples`)."""
        return self.space if self.space is not None else SampleSpace.identity(len(self.train))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[3])

    @property
    def image_size(self) -> int:
        """Side of the model's input (the crop when ``--image-size`` is set, else H)."""
        return self.train.out_size

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self)


def iter_blocks(images: np.ndarray | DiskImages, rows: int = _BLOCK_ROWS) -> Iterator[np.ndarray]:
    """Consecutive row blocks of a split's images (bounded memory for a streamed split)."""
    row_bytes = int(np.prod(images.shape[1:]))
    rows = max(1, min(rows, _BLOCK_BYTES // max(1, row_bytes)))
    for start in range(0, int(images.shape[0]), rows):
        yield np.ascontiguousarray(images[start : start + rows])


def split_fingerprint(split: Split) -> str:
    """16 hex chars of sha256 over shapes, labels, image bytes (and the crop when set)."""
    h = hashlib.sha256()
    h.update(b"dpcli-fingerprint-v1\0")
    h.update(json.dumps([list(split.images.shape), list(split.labels.shape)]).encode())
    h.update(np.ascontiguousarray(split.labels, dtype="<i8").tobytes())
    for block in iter_blocks(split.images):
        h.update(block.data.cast("B"))
    if split.crop is not None:  # absent otherwise, so fingerprints made before --image-size stay valid
        h.update(f"crop:{split.crop}".encode())
    return h.hexdigest()[:16]


def dataset_fingerprint(ds: Dataset) -> str:
    """The train split's fingerprint; stable across processes and machines; cached on the object.

    The test split, name and class names do not enter it.  Streamed and in-memory copies of the
    same data have the same fingerprint.
    """
    cached = ds.__dict__.get("_fingerprint")
    if cached is None:
        cached = split_fingerprint(ds.train)
        object.__setattr__(ds, "_fingerprint", cached)
    return cached


def channel_stats(images: np.ndarray | DiskImages) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std in [0, 1] units, via histograms, block by block.

    A constant channel gets std 1.0 so that normalizing never divides by zero.
    """
    channels = int(images.shape[3])
    counts = np.zeros((channels, 256), dtype=np.float64)
    for block in iter_blocks(images):
        for c in range(channels):
            counts[c] += np.bincount(block[..., c].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(channels):
        n = counts[c].sum()
        if n == 0:
            means.append(0.0)
            stds.append(1.0)
            continue
        mean = float((counts[c] * values).sum() / n)
        var = float((counts[c] * (values - mean) ** 2).sum() / n)
        std = var**0.5 / 255.0
        means.append(mean / 255.0)
        stds.append(std if std > 0 else 1.0)
    return tuple(means), tuple(stds)


def make_dataset(name: str, train: Split, test: Split, classes: Sequence[str], augment: bool) -> Dataset:
    mean, std = channel_stats(train.images)
    return Dataset(name=name, train=train, test=test, classes=tuple(classes), mean=mean, std=std, augment=augment)


def default_data_root() -> Path:
    """``$DPCLI_DATA``, else ``$XDG_CACHE_HOME/dpcli/data``, else ``~/.cache/dpcli/data``."""
    from dpcli.env import data_root

    return data_root()


# --------------------------------------------------------------------------- sources


SOURCES: Registry["DatasetSource"] = Registry("dataset", "dpcli.data.sources")


@dataclass(frozen=True)
class LoadRequest:
    """Everything a source needs besides the spec string."""

    data_root: Path
    download: bool = True
    progress: Progress | None = None
    image_size: int | None = None
    stream: bool | None = None  # None: stream when the decoded data exceed the memory budget
    input: InputSpec | None = None  # resize / crop of a model's preprocessing (sources that resize)


class DatasetSource:
    """One family of datasets.  ``names`` are the spec strings it answers to (case-insensitive,
    ``-``/``_`` ignored); a ``prefix`` source answers to ``prefix:ARGUMENT``."""

    name: ClassVar[str]
    names: ClassVar[tuple[str, ...]] = ()
    prefix: ClassVar[str | None] = None
    help: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "name", None):
            SOURCES.add(cls)

    @classmethod
    def matches(cls, spec: str) -> bool:
        if cls.prefix is not None:
            return spec.lower().startswith(cls.prefix + ":")
        return normalize_name(spec) in cls.names

    @classmethod
    def profile_key(cls, spec: str) -> str:
        """The key of :data:`dpcli.config.PROFILES` with this dataset's training defaults."""
        return cls.prefix or normalize_name(spec)

    def load(self, spec: str, request: LoadRequest) -> Dataset:
        raise NotImplementedError


def normalize_name(spec: str) -> str:
    return spec.strip().lower().replace("-", "").replace("_", "")


def source_for(spec: str) -> type[DatasetSource]:
    """The source that answers to ``spec``; one line listing the valid names otherwise.

    Built-in names win over prefixes only when there is no ``:``; a file or folder named like a
    dataset (``./digits``) is never consulted: paths need the ``imagefolder:`` prefix.
    """
    raw = spec.strip()
    for cls in SOURCES.load_all().values():
        if cls.matches(raw):
            return cls
    valid = []
    for cls in sorted(SOURCES.load_all().values(), key=lambda c: c.name):
        valid.extend([f"{cls.prefix}:PATH"] if cls.prefix else list(cls.names))
    raise DpcliError(f"Unknown dataset {spec!r}; valid names are: {', '.join(valid)}.")


def load_dataset(
    name: str,
    data_root: Path | None = None,
    download: bool = True,
    progress: Progress | None = None,
    *,
    image_size: int | None = None,
    stream: bool | None = None,
    input: InputSpec | None = None,
) -> Dataset:
    """Load a dataset by spec string (see docs/datasets.md for the names).

    ``image_size``: side of the model's input for image folders (``--image-size``); ``stream``:
    force (True) or forbid (False) streaming from the on-disk cache [default: stream when the
    decoded data exceed ``$DPCLI_MEMORY_BUDGET``].  ``progress(done, total)`` reports cache building.
    ``input``: a model's preprocessing; its mean/std replace the dataset's statistics, and sources that
    resize (image folders) store its resize and crop instead of ``image_size``'s.
    """
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1):
        raise DpcliError(f"--image-size must be a positive integer, got {image_size}")
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    source = source_for(name)
    request = LoadRequest(
        data_root=root,
        download=download,
        progress=progress,
        image_size=None if image_size is None else int(image_size),
        stream=stream,
        input=input,
    )
    ds = source().load(name.strip(), request)
    return ds if input is None else with_input(ds, input)


def with_input(ds: Dataset, spec: InputSpec) -> Dataset:
    """``ds`` normalized with ``spec``'s mean/std (their channel average for grey images into an RGB model)."""
    mean, std = tuple(float(v) for v in spec.mean), tuple(float(v) for v in spec.std)
    if ds.channels != len(mean):
        mean, std = (sum(mean) / len(mean),) * ds.channels, (sum(std) / len(std),) * ds.channels
    out = Dataset(
        name=ds.name,
        train=ds.train,
        test=ds.test,
        classes=ds.classes,
        mean=mean,
        std=std,
        augment=ds.augment,
        skipped=ds.skipped,
        input=spec,
        space=ds.space,
    )
    if "_fingerprint" in ds.__dict__:
        object.__setattr__(out, "_fingerprint", ds.__dict__["_fingerprint"])
    return out
