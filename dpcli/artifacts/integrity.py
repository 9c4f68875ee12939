"""Checksums of artifact datasets and checks of files read as arrays: damage is one line naming the file.

Every dataset carries a CRC-32 of its dtype, shape and bytes (:data:`DIGEST_ATTR`), written by :func:`seal` and
checked by :func:`verify` (small datasets, when an artifact is opened) or :func:`verify_dataset` (S, streamed by
the reader that needs it).  :mod:`dpcli.artifacts.h5` re-exports these names.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dpcli.errors import DpcliError

if TYPE_CHECKING:
    import h5py

DIGEST_ATTR = (
    "dpcli_digest"  # CRC-32 of a dataset's dtype, shape and bytes in C order, written by seal() and checked by verify()
)
EAGER_VERIFY_BYTES = 64 << 20  # datasets up to this size are verified when the artifact is opened; larger ones
#                                (S) by the reader that streams them (verify_dataset)
_DIGEST_CHUNK_BYTES = 1 << 20  # small blocks: verifying a dataset never holds a copy of it


def _datasets(f: h5py.Group) -> list[tuple[str, h5py.Dataset]]:
    """Every dataset stored in the file, by name; a link that leaves it (external, soft, dangling) is damage."""
    import h5py

    links: list[tuple[str, Any]] = []
    f.visititems_links(lambda name, link: links.append((name, link)))  # h5py cannot raise from inside a visit
    for name, link in links:
        if not isinstance(link, h5py.HardLink):
            raise DpcliError(
                f"{f.file.filename}: '{name}' is a link to {_link_target(link)}, not data stored in "
                "the artifact; the file was edited, recompute it"
            )
    return [(name, obj) for name, _ in links if isinstance(obj := f[name], h5py.Dataset)]


def _link_target(link: Any) -> str:
    target = getattr(link, "filename", None)
    return f"{target}:{link.path}" if target else str(getattr(link, "path", link))


class DatasetDigest:
    """The checksum of a dataset fed block by block as it is written (a streamed S is never read back).

    CRC-32 (zlib), not a cryptographic hash: it guards against bad disks and torn copies, not tampering, and it
    runs about four times as fast as blake2b on one core."""

    def __init__(self, dtype: Any, shape: tuple[int, ...]) -> None:
        self._crc = zlib.crc32(f"{np.dtype(dtype).str}{tuple(shape)}".encode())

    def update(self, block: np.ndarray) -> None:
        block = np.asarray(block)
        data = (
            json.dumps(block.tolist(), default=str).encode()
            if block.dtype.kind == "O"
            else np.ascontiguousarray(block).data.cast("B")
        )
        self._crc = zlib.crc32(data, self._crc)

    def hexdigest(self) -> str:
        return f"crc32:{self._crc:08x}"


def digest_of(dset: h5py.Dataset | np.ndarray) -> str:
    """The checksum of a dataset (or of its values in memory), read by row blocks of ~1 MiB."""
    h = DatasetDigest(dset.dtype, dset.shape)
    if len(dset.shape) == 0:
        h.update(dset[()])
        return h.hexdigest()
    row = max(1, int(np.prod(dset.shape[1:], dtype=np.int64)) * np.dtype(dset.dtype).itemsize)
    step = max(1, _DIGEST_CHUNK_BYTES // row)
    for a in range(0, dset.shape[0], step):
        h.update(dset[a : a + step])
    return h.hexdigest()


def seal(f: h5py.Group, *, force: bool = False) -> None:
    """Store every dataset's checksum (those already sealed, such as a streamed S, are kept unless ``force``).

    Objects and variable-length strings have no fixed bytes to hash; dpcli stores none in its artifacts."""
    for _, dset in _datasets(f):
        if force or DIGEST_ATTR not in dset.attrs:
            dset.attrs[DIGEST_ATTR] = digest_of(dset)


def verify(f: h5py.Group, path: Path | str, *, limit: int | None = None) -> None:
    """Check the checksum of every dataset of up to ``limit`` bytes (:data:`EAGER_VERIFY_BYTES`); one line naming
    the file and the dataset on a mismatch."""
    limit = EAGER_VERIFY_BYTES if limit is None else limit
    for name, dset in _datasets(f):
        if dset.size * dset.dtype.itemsize <= limit:
            verify_dataset(dset, path, name)


def verify_dataset(
    dset: h5py.Dataset, path: Path | str, name: str | None = None, values: np.ndarray | None = None
) -> None:
    """The checksum of one dataset (of ``values``, its content already read or memory-mapped, when given)."""
    name = name or dset.name.lstrip("/")
    stored = dset.attrs.get(DIGEST_ATTR)
    if stored is None:
        raise DpcliError(f"{path}: dataset '{name}' has no checksum; the file was edited, recompute it")
    try:
        found = digest_of(dset if values is None else values)
    except OSError as exc:  # HDF5 could not read the stored bytes (a truncated or overwritten file)
        raise DpcliError(
            f"{path}: dataset '{name}' cannot be read ({exc}); the file is damaged, recompute it"
        ) from None
    if found != (stored.decode() if isinstance(stored, bytes) else str(stored)):
        raise DpcliError(
            f"{path}: checksum mismatch in dataset '{name}': the file is damaged (a bad disk, an "
            "incomplete copy or an edit); recompute it"
        )


# --------------------------------------------------------------------------- arrays from other tools
NPY_MAGIC = b"\x93NUMPY"


def check_npy(path: Path | str, what: str, *, numeric: bool) -> None:
    """Refuse, from its header alone, a ``.npy`` that is not one (empty, text), that declares more data than it
    holds, or (``numeric``) that holds no numbers: each case its own true line, before anything is allocated."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(len(NPY_MAGIC)) != NPY_MAGIC:
                size = path.stat().st_size
                raise DpcliError(
                    f"{path}: not a .npy file ({'empty' if size == 0 else 'no NumPy header'}); "
                    f"save the {what} with numpy.save"
                )
            fh.seek(0)
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh, max_header_size=1 << 20)
            offset = fh.tell()
    except (ValueError, EOFError) as exc:
        raise DpcliError(f"{path}: damaged .npy header ({exc}); save the {what} again with numpy.save") from None
    except OSError as exc:
        raise DpcliError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if dtype.hasobject:
        raise DpcliError(
            f"{path}: {what} are stored as Python objects, which dpcli does not unpickle; save them "
            "as numbers or strings, e.g. np.save(path, np.asarray(labels, dtype=str))"
        )
    if numeric and (dtype.kind not in "biuf"):
        raise DpcliError(f"{path}: {what} must be real numbers, got dtype {dtype}")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = path.stat().st_size - offset
    if held < declared:
        raise DpcliError(
            f"{path}: declares {what} of shape {tuple(shape)} ({human_bytes(declared)}) but holds "
            f"{human_bytes(held)}; the file is truncated or damaged"
        )


def check_stored(dset: "h5py.Dataset", path: Path | str, what: str) -> None:
    """Refuse a dataset that declares more data than it can hold before it is read (an unfiltered dataset whose
    stored bytes are fewer than its shape needs: unwritten chunks read as fill values, not data), or that is not
    real numbers."""
    if dset.dtype.kind not in "biuf":
        raise DpcliError(f"{path}: {what} must be real numbers, got dtype {dset.dtype}")
    declared = int(np.prod(dset.shape, dtype=object)) * dset.dtype.itemsize
    held = dset.id.get_storage_size()
    if not dset.compression and not dset.fletcher32 and held < declared:
        raise DpcliError(
            f"{path}: declares {what} of shape {tuple(dset.shape)} ({human_bytes(declared)}) but stores "
            f"{human_bytes(held)}; the file is incomplete or damaged"
        )


class StreamHash:
    """Incremental content hash, fed chunk by chunk while a large array is written."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=8)

    def update(self, array: np.ndarray) -> None:
        self._h.update(np.ascontiguousarray(array).tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def array_fingerprint(*arrays: np.ndarray) -> str:
    h = StreamHash()
    for a in arrays:
        h.update(np.asarray(str(a.shape)).astype("U"))
        h.update(a)
    return h.hexdigest()


def config_key(config: dict[str, Any]) -> str:
    """A short stable key for a configuration, used to name run directories."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def human_bytes(n: int) -> str:
    """A size a person reads at a glance: 12.3 MiB, not 0.01 GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"
