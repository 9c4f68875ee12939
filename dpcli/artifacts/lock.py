"""Per-artifact OS file locks, so two jobs on one run directory compute each artifact once.

The lock of ``DIR/NAME`` is ``flock`` on ``DIR/.NAME.lock``.  The kernel releases it when
its holder exits, even by ``kill -9``, so a lock is never stale; the file itself holds the
holder's pid (for the "waiting for" message) and is removed by its holder on release.
A second job waits (one message) or, with ``--no-wait`` / ``DPCLI_NO_WAIT=1``, exits at
once with :class:`~dpcli.errors.ArtifactBusy` (exit code 75).  Locks are reentrant per
thread, so a stage that holds its artifact's lock can call writers that take it again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dpcli.errors import ArtifactBusy, ArtifactWriteError

_NO_WAIT: bool | None = None  # None: read DPCLI_NO_WAIT at each acquisition
_local = threading.local()


def set_no_wait(no_wait: bool | None) -> None:
    """What ``--no-wait`` sets: fail at once instead of waiting for a locked artifact (None: the env var)."""
    global _NO_WAIT
    _NO_WAIT = no_wait


def no_wait() -> bool:
    if _NO_WAIT is not None:
        return _NO_WAIT
    from dpcli.env import no_wait as from_env

    return from_env()


def lock_path(path: Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@dataclass(frozen=True)
class LockState:
    """What happened while acquiring: whether we waited, and whether the artifact changed meanwhile."""

    path: Path
    waited: bool
    holder: int | None  # pid that held the lock while we waited
    changed: bool  # the artifact was published (or replaced) while we waited

    def reusable(self) -> bool:
        """True when another job published the artifact while this one waited: check it, then reuse it."""
        return self.waited and self.changed and self.path.exists()


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _holder(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    return None


def _open(target: Path, lock: Path) -> int:
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:  # the artifact could not be written either: say so now, before any work
        raise ArtifactWriteError(f"{target}: cannot write ({exc.strerror or exc})") from None


def _same_file(fd: int, lock: Path) -> bool:
    """False when the holder removed the lock file while we waited on it: take a fresh one."""
    try:
        st = os.stat(lock)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def _acquire(target: Path, lock: Path, wait: bool) -> tuple[int, bool, int | None]:
    """Return (fd, waited, holder pid); blocks (one message) or raises ArtifactBusy."""
    waited, holder = False, None
    while True:
        fd = _open(target, lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise ArtifactWriteError(f"{lock}: cannot lock ({exc.strerror or exc})") from None
            holder = _holder(fd) or holder
            who = f"pid {holder}" if holder else "another process"
            if not wait:
                os.close(fd)
                raise ArtifactBusy(
                    f"{target}: locked by {who} (another dpcli job is computing it); "
                    f"rerun later, or without --no-wait / DPCLI_NO_WAIT to wait"
                ) from None
            if not waited:
                from dpcli import console

                console.info(f"waiting for {target}, locked by {who}")
            waited = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, lock):
            return fd, waited, holder
        os.close(fd)


@contextlib.contextmanager
def artifact_lock(path: Path | str, *, wait: bool | None = None) -> Iterator[LockState]:
    """Hold the exclusive lock of artifact ``path`` for the block (reentrant within a thread).

    After waiting, ``state.reusable()`` says another job published ``path`` meanwhile; the
    caller should check it matches and reuse it instead of computing it again.
    """
    path = Path(path)
    lock = lock_path(path)
    key = os.path.abspath(lock)
    held: dict[str, int] = _local.__dict__.setdefault("held", {})
    if key in held:
        held[key] += 1
        try:
            yield LockState(path, waited=False, holder=None, changed=False)
        finally:
            held[key] -= 1
        return
    before = _identity(path)
    fd, waited, holder = _acquire(path, lock, (not no_wait()) if wait is None else wait)
    held[key] = 1
    try:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        from dpcli.artifacts.h5 import remove_stale_partials

        remove_stale_partials(path)
        yield LockState(path, waited=waited, holder=holder, changed=_identity(path) != before)
    finally:
        del held[key]
        with contextlib.suppress(OSError):
            if _same_file(fd, lock):
                os.unlink(lock)  # waiters notice the unlink (_same_file) and take a fresh file
        os.close(fd)
