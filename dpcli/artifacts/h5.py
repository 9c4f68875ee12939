"""HDF5 artifacts: atomic writes, kind checks, lineage and fingerprints.

Every stage reads and writes one self-describing HDF5 file.  Files are written to a
temporary name in the destination directory and renamed into place only after they
are complete, so a killed job never leaves a file a rerun would trust.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from dpcli import __version__
from dpcli.errors import DpcliError

SCHEMA = 1
KINDS = ("checkpoint", "influence", "mask")


@contextlib.contextmanager
def atomic_h5(path: Path, kind: str, attrs: dict[str, Any] | None = None) -> Iterator[h5py.File]:
    """Open a temporary HDF5 file that replaces ``path`` only if the block succeeds."""
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["dpcli_kind"] = kind
            f.attrs["dpcli_schema"] = SCHEMA
            f.attrs["dpcli_version"] = __version__
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            for key, value in (attrs or {}).items():
                set_attr(f, key, value)
            yield f
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def publish(tmp: str | Path, path: Path) -> None:
    """Rename a finished temporary file into place with ordinary permissions.

    ``mkstemp`` creates files readable by the owner only; artifacts are shared between
    users and jobs, so they get the mode a plain ``open`` would give (0666 & ~umask).
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def set_attr(obj: h5py.HLObject, key: str, value: Any) -> None:
    """Store dicts/lists/None as JSON text so every attribute stays readable by any HDF5 tool."""
    if value is None or isinstance(value, (dict, list, tuple)):
        obj.attrs[key] = json.dumps(value)
        obj.attrs[f"{key}.json"] = True
    elif isinstance(value, Path):
        obj.attrs[key] = str(value)
    else:
        obj.attrs[key] = value


def get_attr(obj: h5py.HLObject, key: str, default: Any = None) -> Any:
    if key not in obj.attrs:
        return default
    value = obj.attrs[key]
    if obj.attrs.get(f"{key}.json", False):
        return json.loads(value)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def open_artifact(path: Path | str, kind: str) -> h5py.File:
    """Open an artifact for reading, refusing anything that is not a dpcli ``kind`` file."""
    path = Path(path)
    if not path.exists():
        raise DpcliError(f"{path}: no such file")
    if path.is_dir():
        raise DpcliError(f"{path}: is a directory, expected a {kind} .h5 file")
    try:
        ok = h5py.is_hdf5(str(path))
    except OSError as exc:  # unreadable
        raise DpcliError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not ok:
        raise DpcliError(f"{path}: not an HDF5 file (expected a dpcli {kind} artifact)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DpcliError(f"{path}: cannot open HDF5 file ({exc})") from None
    found = get_attr(f, "dpcli_kind")
    if found != kind:
        f.close()
        what = f"a dpcli {found} artifact" if found in KINDS else "not a dpcli artifact"
        raise DpcliError(f"{path}: {what}, expected a {kind} artifact")
    if int(get_attr(f, "dpcli_schema", 0)) > SCHEMA:
        f.close()
        raise DpcliError(f"{path}: written by a newer dpcli (schema {get_attr(f, 'dpcli_schema')}); upgrade dpcli")
    return f


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


def row_chunks(n: int, d: int, target_bytes: int = 4 << 20) -> tuple[int, int]:
    """HDF5 chunk shape for an (n, d) float32 matrix read and written by rows."""
    rows = max(1, min(n, target_bytes // max(1, 4 * d)))
    return rows, d


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write a JSON side-file atomically (metrics, bound reports)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True, default=_json_default)
            fh.write("\n")
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
