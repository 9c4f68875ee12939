"""Large row-major datasets in artifacts: chunk shapes, memory mapping, and the disk space they need first."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dpcli.artifacts.h5 import human_bytes, nearest_existing
from dpcli.errors import ArtifactWriteError

if TYPE_CHECKING:
    import h5py


def create_rows(f: "h5py.File", name: str, n: int, d: int) -> "h5py.Dataset":
    """An (n, d) float32 matrix written by row blocks, stored contiguously and unfiltered so that a
    reader can memory-map it (:func:`mapped_rows`) instead of copying it into the heap."""
    return f.create_dataset(name, shape=(n, d), dtype=np.float32, chunks=None)


def check_space(path: Path | str, nbytes: int, what: str) -> None:
    """Refuse, before any of it is computed, an artifact larger than the free space where it goes: a full
    disk found after hours of solves is the failure this avoids."""
    folder = nearest_existing(Path(path).parent)
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise ArtifactWriteError(
            f"{path}: cannot write (No space left on device: {what} needs "
            f"{human_bytes(nbytes)}, {human_bytes(free)} free in {folder}); free space, "
            "write to another folder (--out, --run-root) or store a sketch (--sketch K)"
        )


def mapped_rows(dset: "h5py.Dataset") -> np.ndarray | None:
    """A read-only memory map of a float32 dataset stored contiguously and unfiltered (:func:`create_rows`),
    else None.

    Its pages belong to the OS page cache, which the kernel can drop and re-read under memory
    pressure (a memory cgroup included), so an S of GBs does not count against the process's heap.
    """
    offset = dset.id.get_offset()
    if (
        dset.chunks is not None
        or dset.compression is not None
        or offset is None
        or dset.dtype != np.float32
        or 0 in dset.shape
    ):
        return None
    try:
        return np.asarray(np.memmap(dset.file.filename, dtype=dset.dtype, mode="r", offset=offset, shape=dset.shape))
    except (OSError, ValueError):  # a file system without mmap: the caller reads a copy instead
        return None


def row_chunks(n: int, d: int, target_bytes: int = 4 << 20) -> tuple[int, int]:
    """HDF5 chunk shape for an (n, d) float32 matrix read and written by rows."""
    rows = max(1, min(n, target_bytes // max(1, 4 * d)))
    return rows, d
