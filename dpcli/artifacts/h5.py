"""HDF5 artifacts: atomic writes, kind checks, lineage and fingerprints.

Every stage reads and writes one self-describing HDF5 file.  Every output (HDF5, JSON,
index files, plots, caches) goes through one atomic writer, :func:`atomic_path`: it
writes ``.NAME.<pid>.<random>.partial`` in the destination directory, fsyncs it, renames
it into place and fsyncs the directory, so a killed job never leaves a file a rerun would
trust.  Temporaries are removed on every exit path; those of a writer that died (kill -9,
power loss) are removed by the next writer of the same name.  A write that fails (full
or read-only disk, permissions, a directory in the way) raises one
:class:`~dpcli.errors.ArtifactWriteError` naming the path.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn

import numpy as np

from dpcli import __version__
from dpcli.artifacts.integrity import (  # noqa: F401  (re-exported: artifacts read and write through h5)
    DIGEST_ATTR,
    EAGER_VERIFY_BYTES,
    NPY_MAGIC,
    DatasetDigest,
    StreamHash,
    array_fingerprint,
    check_npy,
    check_stored,
    config_key,
    digest_of,
    human_bytes,
    seal,
    verify,
    verify_dataset,
)
from dpcli.errors import ArtifactWriteError, DpcliError

if TYPE_CHECKING:
    import h5py

SCHEMA = 2  # 2: every dataset carries its checksum (DIGEST_ATTR); a mask its sample index and unreadable files
KINDS = ("checkpoint", "influence", "mask")
LEGACY_PARTIAL_AGE_S = 3600.0  # partials without a pid (dpcli < 0.x) count as stale after this long


def _read_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask races with threads)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # at import, before any thread of ours exists
    os.umask(mask)
    return mask


_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK  # what a plain open() would give; mkstemp-style temporaries are 0600
_WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    errno.EIO,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENOENT,
    errno.EXDEV,
    errno.ENAMETOOLONG,
    errno.ELOOP,
}
_H5_ERRNO = re.compile(r"errno = (\d+)")


# --------------------------------------------------------------------------- temporaries
def temp_path(path: Path) -> Path:
    """A fresh temporary beside ``path``; the writer's pid in the name tells when it is stale."""
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _is_stale(tmp: Path, middle: str) -> bool:
    """A temporary is stale when its writer's pid is gone (or, for pid-less legacy names, when old)."""
    parts = middle.split(".")
    if len(parts) == 2 and parts[0].isdigit():
        pid = int(parts[0])
        return pid != os.getpid() and not _pid_alive(pid)
    if not re.fullmatch(r"[a-z0-9_]{8}", middle):  # not ours (e.g. another file's name with a dot)
        return False
    try:
        return time.time() - tmp.stat().st_mtime > LEGACY_PARTIAL_AGE_S
    except OSError:
        return False


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove ``.NAME.<pid>.*.partial`` left by writers that are gone; returns what was removed."""
    path = Path(path)
    prefix, suffix = f".{path.name}.", ".partial"
    removed: list[Path] = []
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix) and n.endswith(suffix)]
    except OSError:
        return removed
    for name in names:
        tmp = path.parent / name
        if _is_stale(tmp, name[len(prefix) : -len(suffix)]):
            with contextlib.suppress(FileNotFoundError):
                _remove(tmp)
                removed.append(tmp)
    return removed


def _remove(path: Path) -> None:
    """Remove a file, or a folder staged for publication (a link folder), with its contents."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# --------------------------------------------------------------------------- write errors
def write_error(exc: BaseException, path: Path) -> ArtifactWriteError | None:
    """The one-line error for an OSError from writing ``path`` (also h5py's), or None if it is not one."""
    if isinstance(exc, ArtifactWriteError):
        return exc
    if not isinstance(exc, (OSError, RuntimeError)):  # h5py raises RuntimeError from a failed flush
        return None
    code = exc.errno if isinstance(exc, OSError) else None
    found = _H5_ERRNO.search(str(exc))
    if found and int(found.group(1)) in _WRITE_ERRNOS:
        code = int(found.group(1))
    if code not in _WRITE_ERRNOS:
        return None
    reason = "is a directory" if code == errno.EISDIR else os.strerror(code)
    return ArtifactWriteError(f"{path}: cannot write ({reason})")


def nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if os.path.lexists(parent):
            return parent
    return Path(".")


def check_writable(path: Path | str) -> None:
    """Raise ArtifactWriteError now if ``path`` could not be published later (before hours of work).

    Refuses a directory in the way and a parent that is not a directory, then creates and
    removes a probe temporary in the nearest existing ancestor: that catches read-only and
    full file systems' metadata, permissions and pseudo file systems such as /proc.
    """
    path = Path(path)
    if path.is_dir():
        raise ArtifactWriteError(f"{path}: cannot write (is a directory; give a file path)")
    if path.name in ("", ".", ".."):
        raise ArtifactWriteError(f"{path}: cannot write (not a file name)")
    parent = nearest_existing(path.parent)
    if not parent.is_dir():
        raise ArtifactWriteError(f"{path}: cannot write ({parent} is not a directory)")
    probe = temp_path(parent / path.name)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        where = "" if parent == path.parent else f" in {parent}"
        raise ArtifactWriteError(f"{path}: cannot write{where} ({exc.strerror or exc})") from None
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(probe)


def fsync_dir(directory: Path) -> None:
    """Make the rename durable: without it a power loss can forget the new name."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on directories
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _finish(tmp: str | Path) -> None:
    """Make a finished temporary durable and give it ordinary permissions, ready to be renamed."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, FILE_MODE)


def publish(tmp: str | Path, path: Path) -> None:
    """fsync a finished temporary, give it ordinary permissions, rename it into place, fsync the directory."""
    _finish(tmp)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


class Publication:
    """The outputs of one command, published together or not at all (a mask and its index, path and link files).

    Each output is first written in full to a temporary beside its destination (files through
    :func:`atomic_path` with ``publication=``, folders through :meth:`staged_dir`); :meth:`commit` then renames
    them into place.  If a write fails, nothing is renamed; if a rename fails, the outputs already renamed are
    put back as they were (a replaced file from a hard link kept aside, a replaced folder from its renamed
    copy).  Used as a context manager it commits on success and removes every temporary on any error.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def __enter__(self) -> "Publication":
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()

    def stage(self, tmp: Path, path: Path) -> None:
        """A finished temporary file, made durable now and renamed to ``path`` at :meth:`commit`."""
        _finish(tmp)
        self._staged.append((Path(tmp), Path(path)))

    @contextlib.contextmanager
    def staged_dir(self, path: Path) -> Iterator[Path]:
        """Yield an empty temporary folder beside ``path`` to fill; it becomes ``path`` at :meth:`commit`."""
        path = Path(path)
        try:  # making the temporary is the writability check (check_writable refuses the folder it replaces)
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_partials(path)
            tmp = temp_path(path)
            tmp.mkdir()
        except OSError as exc:
            raise write_error(exc, path) or exc from None
        with _cleaned_up(tmp, path):
            yield tmp
        self._staged.append((tmp, path))

    def discard(self) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(OSError):
                _remove(tmp)
        self._staged.clear()

    def commit(self) -> None:
        placed: list[tuple[Path, Path | None]] = []  # (published path, what it replaced, set aside)
        staged, self._staged = self._staged, []
        current = staged[0][1] if staged else Path(".")
        try:
            for tmp, path in staged:
                current = path
                aside = _set_aside(path, directory=tmp.is_dir())
                try:
                    os.replace(tmp, path)
                except BaseException:
                    if aside is not None and tmp.is_dir():  # the folder moved aside goes back
                        os.replace(aside, path)
                    elif aside is not None:  # the file is still in place
                        _remove(aside)
                    raise
                placed.append((path, aside))
            for parent in {path.parent for _, path in staged}:
                fsync_dir(parent)
        except BaseException as exc:
            for path, aside in reversed(placed):
                with contextlib.suppress(OSError):
                    if os.path.lexists(path) and (aside is None or path.is_dir()):
                        _remove(path)
                    if aside is not None:
                        os.replace(aside, path)
            self._staged = staged
            self.discard()
            _raise_named(exc, current)
        for _, aside in placed:
            if aside is not None:
                with contextlib.suppress(OSError):
                    _remove(aside)


def _set_aside(path: Path, *, directory: bool) -> Path | None:
    """Keep what ``path`` holds now under a temporary name, so that a failed commit can put it back: a file as a
    hard link (``path`` itself stays until the atomic replace), a folder renamed away (a folder cannot be
    replaced by a rename).  None when there is nothing there, or no hard link can be made."""
    if not os.path.lexists(path):
        return None
    aside = temp_path(path)
    if directory:
        os.replace(path, aside)
        return aside
    try:
        os.link(path, aside, follow_symlinks=False)
    except OSError:
        return None
    return aside


@contextlib.contextmanager
def atomic_path(
    path: Path | str, *, before_publish: Callable[[Path], None] | None = None, publication: Publication | None = None
) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` only if the block succeeds.

    ``before_publish(path)`` runs just before the rename (e.g. refuse to replace a newer
    file).  Any exit other than success removes the temporary; OSErrors of writing become
    one ArtifactWriteError naming ``path``.  With ``publication`` the rename waits for its commit.
    """
    path = Path(path)
    check_writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, path) or exc from None
    remove_stale_partials(path)
    tmp = temp_path(path)
    with _cleaned_up(tmp, path):
        yield tmp
        if before_publish is not None:
            before_publish(path)
        if publication is None:
            publish(tmp, path)
        else:
            publication.stage(tmp, path)


@contextlib.contextmanager
def _cleaned_up(tmp: Path, path: Path) -> Iterator[None]:
    """On any exit but success remove the temporary ``tmp``; an OSError of writing becomes one
    ArtifactWriteError naming ``path``."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _remove(tmp)
        _raise_named(exc, path)


def _raise_named(exc: BaseException, path: Path) -> NoReturn:
    """Re-raise ``exc``, an OSError of writing as one ArtifactWriteError naming ``path``."""
    converted = write_error(exc, path)
    if converted is None or converted is exc:
        raise exc
    raise converted from None


class _ShieldedFile:
    """The file object under h5py's ``fileobj`` driver: I/O errors are recorded, never shown to HDF5.

    After ENOSPC, HDF5 can fail while h5py deallocates an object mid-block, which leaves the
    library in a state where the next flush crashes the interpreter (SIGSEGV).  Here HDF5
    never sees a failed write: the first error is kept, later writes are dropped, the file is
    closed cleanly, and :func:`atomic_hdf5` then raises the kept error.
    """

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):
            try:
                done += self._fh.write(view[done:]) or 0
            except OSError as exc:
                self.error = exc
        return len(view)

    def readinto(self, buffer: Any) -> int:
        return self._fh.readinto(buffer)

    def read(self, size: int = -1) -> bytes:
        return self._fh.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._fh.truncate(size)
            except OSError as exc:
                self.error = exc
        return size if size is not None else self.tell()

    def flush(self) -> None:
        pass  # unbuffered: durability comes from publish()'s fsync

    def abandon(self) -> None:
        """Drop every later write (the file is being given up)."""
        self.error = self.error or OSError(errno.ECANCELED, "abandoned")

    def close(self) -> None:
        self._fh.close()


@contextlib.contextmanager
def atomic_hdf5(
    path: Path | str, *, before_publish: Callable[[Path], None] | None = None, publication: Publication | None = None
) -> Iterator["h5py.File"]:
    """A plain HDF5 file (caches) written through :func:`atomic_path`, closed safely on any error."""
    import h5py

    with atomic_path(path, before_publish=before_publish, publication=publication) as tmp:
        sink = _ShieldedFile(tmp)
        try:
            f = h5py.File(sink, "w")
            try:
                yield f
                f.flush()
            except BaseException:
                sink.abandon()
                raise
            finally:
                f.close()
            if sink.error is not None:
                raise sink.error
        finally:
            sink.close()


@contextlib.contextmanager
def atomic_h5(
    path: Path,
    kind: str,
    attrs: dict[str, Any] | None = None,
    *,
    before_publish: Callable[[Path], None] | None = None,
    publication: Publication | None = None,
) -> Iterator["h5py.File"]:
    """Write a dpcli artifact under its lock; it replaces ``path`` only if the block succeeds (with
    ``publication``: at its commit, which the caller makes while holding the artifact's lock)."""
    from dpcli.artifacts.lock import artifact_lock

    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    with artifact_lock(path), atomic_hdf5(path, before_publish=before_publish, publication=publication) as f:
        f.attrs["dpcli_kind"] = kind
        f.attrs["dpcli_schema"] = SCHEMA
        f.attrs["dpcli_version"] = __version__
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        for key, value in (attrs or {}).items():
            set_attr(f, key, value)
        yield f
        seal(f)


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
    """Open an artifact for reading, refusing anything that is not a dpcli ``kind`` file of this schema, and
    any dataset of up to :data:`EAGER_VERIFY_BYTES` whose checksum does not match (a damaged file)."""
    path = Path(path)
    if not path.exists():
        raise DpcliError(f"{path}: no such file")
    if path.is_dir():
        raise DpcliError(f"{path}: is a directory, expected a {kind} .h5 file")
    import h5py

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
    try:
        _check_kind(f, path, kind)
        verify(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _check_kind(f: h5py.File, path: Path, kind: str) -> None:
    found = get_attr(f, "dpcli_kind")
    if found != kind:
        what = f"{_article(found)} dpcli {found} artifact" if found in KINDS else "not a dpcli artifact"
        raise DpcliError(f"{path}: {what}, expected {_article(kind)} {kind} artifact")
    schema = get_attr(f, "dpcli_schema", 0)
    if not isinstance(schema, int) or schema > SCHEMA:
        raise DpcliError(
            f"{path}: written by a newer dpcli ({get_attr(f, 'dpcli_version', '?')}, artifact schema "
            f"{schema}; this dpcli {__version__} reads schema {SCHEMA}); upgrade dpcli"
        )
    if schema < SCHEMA:
        raise DpcliError(
            f"{path}: written by an older dpcli ({get_attr(f, 'dpcli_version', '?')}, artifact schema "
            f"{schema}; this dpcli {__version__} reads schema {SCHEMA}); recompute it (rerun the stage "
            "with --force)"
        )


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write a JSON side-file atomically (metrics, bound reports)."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n"
    write_bytes(path, text.encode())


def write_bytes(path: Path, data: bytes, publication: Publication | None = None) -> None:
    """Write a small file atomically (JSON, index lists)."""
    with atomic_path(path, publication=publication) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
