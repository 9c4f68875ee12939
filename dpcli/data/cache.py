"""The on-disk image cache: decoded uint8 images at the chosen resolution, built once, read many times.

Format (HDF5, ``data_root/imagefolder-cache/<key>.h5``): one **contiguous, uncompressed** dataset
``images (n_files, H, W, C)`` holding every listed file in order (train files first), whose byte
offset is read once so that readers use plain ``pread`` (no HDF5 call, no chunk lookup, safe in
forked DataLoader workers, one system call per run of consecutive rows); ``labels``,
``train_rows`` / ``test_rows`` (the rows of files that decoded, i.e. dataset index -> row), and the
metadata (classes, mean/std, fingerprint, skipped files) as attributes.

Building is parallel (a process pool with a bounded window, so host memory stays bounded) and
resumable: it writes ``<key>.partial.h5`` block by block and marks a block done only after its
rows are written and flushed; a rerun after a kill redoes only blocks not marked done.  The
partial file is renamed to ``<key>.h5`` only when complete, so a reader never sees a half cache.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpcli.data import imageio
from dpcli.data.base import DiskImages, Progress, Split, channel_stats, split_fingerprint
from dpcli.errors import DpcliError

CACHE_VERSION = 2
CENTER_CROP_FRACTION = 0.875  # eval: resize the shorter side to N / 0.875, then center-crop N
# Bytes of decoded images per resumable block (and per task sent to a worker).
_BLOCK_BYTES = 8 << 20
_PROBE_CHUNK = 256
# Below this many files everything runs in-process (a pool costs more than it saves).
PARALLEL_MIN_FILES = 2000


@dataclass(frozen=True)
class CacheInfo:
    """A complete cache file, opened for reading."""

    path: Path
    offset: int
    row_shape: tuple[int, int, int]
    labels: np.ndarray
    train_rows: np.ndarray
    test_rows: np.ndarray
    crop: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str
    skipped: tuple[tuple[str, str], ...]

    def split(self, which: str, in_memory: bool) -> Split:
        rows = self.train_rows if which == "train" else self.test_rows
        images = DiskImages(self.path, self.offset, self.row_shape, rows)
        return Split(images[:] if in_memory else images, self.labels[rows], crop=self.crop)

    @property
    def nbytes(self) -> int:
        return (self.train_rows.size + self.test_rows.size) * int(np.prod(self.row_shape))


def stored_side(image_size: int) -> int:
    """Side of the stored square for ``--image-size N``: round(N / 0.875) (224 -> 256)."""
    return int(image_size / CENTER_CROP_FRACTION + 0.5)


def build_workers() -> int:
    """Cache-building processes: ``$DPCLI_CACHE_WORKERS``, else the CPUs this process may use (<= 16)."""
    from dpcli.env import cache_workers

    return cache_workers()


def open_or_build(
    path: Path,
    files: Sequence[str],
    labels: np.ndarray,
    n_train: int,
    image_size: int | None,
    progress: Progress | None = None,
    workers: int | None = None,
    decoder: str | None = None,
    resize: tuple[int, str] | None = None,
) -> CacheInfo:
    """The cache at ``path`` for ``files`` (train first), building or resuming it if needed.

    ``decoder``: ``"pil"`` (worker processes) or a torch device for batched ``decode_jpeg``
    [default: :func:`dpcli.data.jpeg.decoder`, i.e. ``$DPCLI_JPEG_DECODE``, chosen only if a build is needed].
    ``resize = (side, interpolation)``: store the shorter side resized to ``side`` (a model's preprocessing)
    instead of ``stored_side(image_size)`` bilinear; such builds decode with PIL.
    """
    if path.is_file():
        info = read_cache(path)
        if info is not None:
            return info
        path.unlink()  # foreign or damaged: rebuild
    workers = build_workers() if workers is None else workers
    if resize is not None:
        decoder = "pil"  # the batched JPEG path resizes bilinearly only
    elif decoder is None:
        from dpcli.data import jpeg

        decoder = jpeg.decoder(files, workers=workers, side=None if image_size is None else stored_side(image_size))
    _build(
        path, list(files), np.asarray(labels, dtype=np.int64), n_train, image_size, progress, workers, decoder, resize
    )
    info = read_cache(path)
    if info is None:  # pragma: no cover - just written
        raise DpcliError(f"{path}: the image cache just written cannot be read back")
    return info


def read_cache(path: Path) -> CacheInfo | None:
    """A complete cache of this version, or None (foreign, older, damaged)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            if int(a["version"]) != CACHE_VERSION or not bool(a["complete"]):
                return None
            offset = f["images"].id.get_offset()
            crop = int(a["crop"])
            h, w, c = (int(s) for s in f["images"].shape[1:])
            return CacheInfo(
                path=path,
                offset=int(offset),
                row_shape=(h, w, c),
                labels=f["labels"][()],
                train_rows=f["train_rows"][()],
                test_rows=f["test_rows"][()],
                crop=crop or None,
                mean=tuple(float(v) for v in a["mean"]),
                std=tuple(float(v) for v in a["std"]),
                fingerprint=str(a["fingerprint"]),
                skipped=tuple(tuple(s) for s in _get_json(f, "skipped", [])),
            )
    except Exception:
        return None


def _put_json(group, name: str, value: Any) -> None:
    """JSON as a uint8 dataset (attributes are limited to 64 KiB; skip lists may be longer)."""
    if name in group:
        del group[name]
    group.create_dataset(name, data=np.frombuffer(json.dumps(value).encode(), dtype=np.uint8))


def _get_json(group, name: str, default: Any) -> Any:
    return json.loads(group[name][()].tobytes().decode()) if name in group else default


# --------------------------------------------------------------------------- building


def _pool_context():
    # fork: workers start at once and need nothing re-imported; they only run PIL.
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _die_with_parent() -> None:
    """Pool initializer: end this worker when the building process dies (killed by the OOM killer or
    SIGKILL).  Without it, orphaned workers can block forever on the result queue's lock, holding
    their memory."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _run(fn: Callable[[Any], Any], jobs: list[Any], workers: int, on_result: Callable[[int, Any], None]) -> None:
    """``on_result(k, fn(jobs[k]))`` for every job, in completion order, at most 2 x workers in flight."""
    if workers <= 1 or len(jobs) <= 1:
        for k, job in enumerate(jobs):
            on_result(k, fn(job))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() in a multi-threaded process
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(), initializer=_die_with_parent)
    try:
        pending: dict[Future, int] = {}
        queue = iter(enumerate(jobs))
        for k, job in queue:
            pending[pool.submit(fn, job)] = k
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                k = pending.pop(fut)
                on_result(k, fut.result())
                nxt = next(queue, None)
                if nxt is not None:
                    pending[pool.submit(fn, nxt[1])] = nxt[0]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _fail(path: str, reason: str) -> DpcliError:
    return DpcliError(f"Cannot read {path} ({reason}); fix or remove it and run again (finished work is kept).")


def _probe(files: list[str], workers: int) -> list[imageio.Tagged]:
    chunks = [files[i : i + _PROBE_CHUNK] for i in range(0, len(files), _PROBE_CHUNK)]
    out: list[list[imageio.Tagged]] = [[] for _ in chunks]

    def keep(k: int, res: list[imageio.Tagged]) -> None:
        out[k] = res

    _run(imageio.probe_many, chunks, workers if len(files) >= PARALLEL_MIN_FILES else 1, keep)
    return [r for chunk in out for r in chunk]


def _storage(
    files: list[str],
    probes: list[imageio.Tagged],
    n_train: int,
    image_size: int | None,
    resize: tuple[int, str] | None = None,
) -> tuple[tuple[int, int, int], bool]:
    """Row shape and grayscale flag from the headers; one line naming the culprit otherwise."""
    ok = [(p, r[1]) for p, r in zip(files, probes) if r[0] == "ok"]
    if not any(r[0] == "ok" for r in probes[:n_train]):
        raise DpcliError("No training image could be read (every file was skipped).")
    gray = all(g for _, (_, _, g) in ok)
    channels = 1 if gray else 3
    if image_size is not None:
        side = stored_side(image_size) if resize is None else int(resize[0])
        return (side, side, channels), gray
    sizes = Counter((w, h) for _, (w, h, _) in ok)
    (w0, h0), _ = sizes.most_common(1)[0]
    for p, (w, h, _) in ok:
        if (w, h) != (w0, h0):
            raise DpcliError(
                f"Image {p} is {w}x{h} pixels but most are {w0}x{h0}; images of mixed sizes need "
                "--image-size N (random resized crop for training, resize + center crop otherwise)."
            )
    return (h0, w0, channels), gray


def _open_partial(path: Path, key: dict, n: int, row_shape: tuple[int, int, int], n_blocks: int):
    """The partial cache for exactly this build (resumed), or a fresh one."""
    import h5py

    stamp = json.dumps(key, sort_keys=True)
    if path.exists():
        try:
            f = h5py.File(path, "r+")
            if (
                f.attrs.get("build") == stamp
                and f["images"].shape == (n, *row_shape)
                and f["done"].shape == (n_blocks,)
            ):
                return f
            f.close()
        except Exception:  # killed while HDF5 metadata were written: start over
            pass
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    f = h5py.File(path, "w")
    f.attrs["build"] = stamp
    f.attrs["version"] = CACHE_VERSION
    f.attrs["complete"] = False
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # contiguous bytes at a fixed offset from the start
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple((n, *row_shape))
    h5py.h5d.create(f.id, b"images", h5py.h5t.NATIVE_UINT8, space, dcpl=dcpl)
    f.create_dataset("done", data=np.zeros(n_blocks, dtype=bool))
    f.create_group("skips")
    f.flush()
    return f


def _build(
    path: Path,
    files: list[str],
    labels: np.ndarray,
    n_train: int,
    image_size: int | None,
    progress: Progress | None,
    workers: int,
    decoder: str = "pil",
    resize: tuple[int, str] | None = None,
) -> None:
    total = len(files)
    probes = _probe(files, workers)
    for p, r in zip(files, probes):
        if r[0] == "fail":
            raise _fail(p, r[1])
    row_shape, gray = _storage(files, probes, n_train, image_size, resize)
    row_bytes = int(np.prod(row_shape))
    block = int(min(512, max(8, _BLOCK_BYTES // row_bytes)))
    n_blocks = (total + block - 1) // block
    side: imageio.Square | None = None
    if image_size is not None:
        side = (row_shape[0], image_size) if resize is None else (row_shape[0], image_size, resize[1])
    key = {"files": total, "row_shape": list(row_shape), "gray": gray, "block": block, "side": side}
    partial = path.with_name(path.stem + ".partial.h5")
    f = _open_partial(partial, key, total, row_shape, n_blocks)
    try:
        done = f["done"][()]
        images = f["images"]
        finished = int(sum(min(block, total - b * block) for b in np.flatnonzero(done)))
        if progress:
            progress(finished, total)
        todo = [int(b) for b in np.flatnonzero(~done)]
        jobs = []
        for b in todo:
            lo, hi = b * block, min(total, (b + 1) * block)
            jobs.append(([files[i] for i in range(lo, hi) if probes[i][0] == "ok"], side, gray))

        def store(k: int, results: list[imageio.Tagged]) -> None:
            nonlocal finished
            b = todo[k]
            lo, hi = b * block, min(total, (b + 1) * block)
            rows = [i for i in range(lo, hi) if probes[i][0] == "ok"]
            arr = np.zeros((hi - lo, *row_shape), dtype=np.uint8)
            skips = []
            for i, (tag, value) in zip(rows, results):
                if tag == "fail":
                    raise _fail(files[i], value)
                if tag == "skip":
                    skips.append([i, value])
                elif value.shape != row_shape:  # header and pixels disagree
                    raise DpcliError(
                        f"Image {files[i]} decodes to {value.shape[1]}x{value.shape[0]} pixels, "
                        f"expected {row_shape[1]}x{row_shape[0]}; use --image-size N."
                    )
                else:
                    arr[i - lo] = value
            images[lo:hi] = arr
            _put_json(f["skips"], str(b), skips)
            f.flush()  # rows first, then the done mark: a kill in between only redoes this block
            f["done"][b] = True
            f.flush()
            finished += hi - lo
            if progress:
                progress(finished, total)

        previous = f.attrs.get("decoder")  # a resumed build may have started with another decoder
        f.attrs["decoder"] = decoder if previous in (None, decoder) else "mixed"
        if decoder == "pil":
            _run(imageio.decode_many, jobs, workers if total >= PARALLEL_MIN_FILES else 1, store)
        else:  # batched decode_jpeg on that device, in this process (CUDA cannot be used in forked workers)
            from dpcli.data import jpeg

            for k, (paths, size, is_gray) in enumerate(jobs):
                assert size is None or len(size) == 2  # a build that resizes decodes with PIL (open_or_build)
                store(k, jpeg.decode_many(paths, size, is_gray, decoder))
        _finalize(f, partial, files, probes, labels, n_train, image_size, row_shape, n_blocks)
    finally:
        f.close()
    from dpcli.artifacts.h5 import publish

    publish(partial, path)  # fsync, rename, fsync the directory: the one way artifacts appear


def _finalize(
    f,
    partial: Path,
    files: list[str],
    probes: list[imageio.Tagged],
    labels: np.ndarray,
    n_train: int,
    image_size: int | None,
    row_shape: tuple[int, int, int],
    n_blocks: int,
) -> None:
    """Index, statistics and fingerprint of the completed rows; mark the file complete."""
    valid = np.array([r[0] == "ok" for r in probes], dtype=bool)
    skipped = {i: r[1] for i, r in enumerate(probes) if r[0] == "skip"}
    for b in range(n_blocks):
        for i, reason in _get_json(f["skips"], str(b), []):
            valid[i] = False
            skipped[int(i)] = reason
    train_rows = np.flatnonzero(valid[:n_train])
    test_rows = n_train + np.flatnonzero(valid[n_train:])
    f.create_dataset("labels", data=labels)
    f.create_dataset("train_rows", data=train_rows)
    f.create_dataset("test_rows", data=test_rows)
    f.flush()
    offset = int(f["images"].id.get_offset())
    train = Split(DiskImages(partial, offset, row_shape, train_rows), labels[train_rows], crop=image_size)
    mean, std = channel_stats(train.images)
    f.attrs["mean"] = np.asarray(mean, dtype=np.float64)
    f.attrs["std"] = np.asarray(std, dtype=np.float64)
    f.attrs["fingerprint"] = split_fingerprint(train)
    f.attrs["crop"] = int(image_size or 0)
    _put_json(f, "skipped", [[files[i], skipped[i]] for i in sorted(skipped)])
    f.attrs["complete"] = True
    f.flush()
