"""Atomic writes and kind checks: a killed job never leaves a file a rerun would trust."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from dpcli.artifacts.h5 import (
    array_fingerprint,
    atomic_h5,
    check_writable,
    config_key,
    get_attr,
    open_artifact,
    temp_path,
    write_error,
    write_json,
)
from dpcli.artifacts.rows import row_chunks
from dpcli.errors import ArtifactWriteError, DpcliError


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "mask.h5"
    with pytest.raises(RuntimeError):
        with atomic_h5(target, "mask", {"n": 3}) as f:
            f.create_dataset("keep", data=np.ones(3, bool))
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_only_when_complete(tmp_path):
    target = tmp_path / "mask.h5"
    with atomic_h5(target, "mask", {"n": 3, "config": {"a": 1}}) as f:
        f.create_dataset("keep", data=np.array([True, False, True]))
    with pytest.raises(KeyError):
        with atomic_h5(target, "mask", {"n": 4}) as f:
            raise KeyError("boom")
    with open_artifact(target, "mask") as f:  # the old complete file survives
        assert get_attr(f, "n") == 3
        assert get_attr(f, "config") == {"a": 1}
        assert f["keep"][()].tolist() == [True, False, True]


def test_open_artifact_refuses_wrong_inputs(tmp_path):
    with pytest.raises(DpcliError, match="no such file"):
        open_artifact(tmp_path / "missing.h5", "mask")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(DpcliError, match="not an HDF5 file"):
        open_artifact(text, "mask")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    with pytest.raises(DpcliError, match="not a dpcli artifact"):
        open_artifact(foreign, "influence")
    mask = tmp_path / "m.h5"
    with atomic_h5(mask, "mask"):
        pass
    with pytest.raises(DpcliError, match="a dpcli mask artifact, expected an influence"):
        open_artifact(mask, "influence")
    with pytest.raises(DpcliError, match="is a directory"):
        open_artifact(tmp_path, "mask")


def test_fingerprints_and_keys_are_content_based():
    a = np.arange(10, dtype=np.float32)
    assert array_fingerprint(a) == array_fingerprint(a.copy())
    b = a.copy()
    b[3] += 1
    assert array_fingerprint(a) != array_fingerprint(b)
    assert array_fingerprint(a) != array_fingerprint(a.reshape(2, 5))
    assert config_key({"x": 1, "y": 2}) == config_key({"y": 2, "x": 1})
    assert config_key({"x": 1}) != config_key({"x": 2})


def test_row_chunks_bound_chunk_size():
    rows, cols = row_chunks(50_000, 5130)
    assert cols == 5130 and rows * cols * 4 <= 4 << 20 and rows >= 1
    assert row_chunks(10, 3) == (10, 3)


def test_write_json_atomic(tmp_path):
    p = tmp_path / "sub" / "m.json"
    write_json(p, {"a": np.float32(1.5), "b": np.arange(2)})
    assert p.read_text().strip().startswith("{")
    assert [x.name for x in p.parent.iterdir()] == ["m.json"]


def test_artifacts_get_ordinary_permissions_without_touching_the_umask(tmp_path, monkeypatch):
    umask = os.umask(0o022)
    os.umask(umask)  # the test's own read; the writer must not call os.umask (it races with threads)

    def forbidden(_mask):
        raise AssertionError("os.umask called while writing")

    monkeypatch.setattr(os, "umask", forbidden)
    with atomic_h5(tmp_path / "m.h5", "mask"):
        pass
    write_json(tmp_path / "m.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "m.h5").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~umask


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_partials_of_dead_writers_are_removed_before_writing(tmp_path):
    target = tmp_path / "influence.h5"
    dead = tmp_path / f".influence.h5.{_dead_pid()}.0badc0de.partial"
    live = tmp_path / f".influence.h5.{os.getppid()}.0badc0de.partial"  # a live process: maybe still writing
    other = tmp_path / f".mask.h5.{_dead_pid()}.0badc0de.partial"  # another artifact's: not ours to judge
    legacy = tmp_path / ".influence.h5.k2x_9aqz.partial"  # dpcli before pids: stale when old
    cousin = tmp_path / f".influence.h5.bak.{_dead_pid()}.0badc0de.partial"  # influence.h5.bak's, not ours
    for p in (dead, live, other, legacy, cousin):
        p.write_bytes(b"half")
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    os.utime(cousin, (time.time() - 7200, time.time() - 7200))
    with atomic_h5(target, "influence") as f:
        f.create_dataset("S", data=np.zeros((2, 2), np.float32))
        assert not dead.exists() and not legacy.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name, cousin.name])


def test_temporary_names_carry_the_pid_and_never_repeat(tmp_path):
    names = {temp_path(tmp_path / "bound.png").name for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith(f".bound.png.{os.getpid()}.") and n.endswith(".partial") for n in names)


def test_publish_fsyncs_the_file_and_then_its_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_json(tmp_path / "m.json", {"a": 1})
    assert synced == [False, True]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_write_failures_become_one_error_and_leave_nothing(tmp_path, code):
    target = tmp_path / "influence.h5"
    with pytest.raises(ArtifactWriteError) as info:
        with atomic_h5(target, "influence") as f:
            f.create_dataset("S", data=np.zeros((4, 4), np.float32))
            raise OSError(code, os.strerror(code))  # what h5py raises when the disk fills mid-write
    assert info.value.exit_code == 74
    assert str(info.value) == f"{target}: cannot write ({os.strerror(code)})"
    assert list(tmp_path.iterdir()) == []


def test_h5py_style_errno_in_message_is_recognised(tmp_path):
    exc = RuntimeError("Can't flush cache (file write failed: ..., errno = 28, error message = 'No space left')")
    assert str(write_error(exc, tmp_path / "x.h5")) == f"{tmp_path / 'x.h5'}: cannot write ({os.strerror(28)})"
    assert write_error(RuntimeError("unrelated"), tmp_path) is None
    assert write_error(KeyError("x"), tmp_path) is None


def test_check_writable_refuses_before_any_work(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "m.h5")  # missing parents are fine (created later)
    assert list(tmp_path.iterdir()) == []  # and the probe leaves nothing
    with pytest.raises(ArtifactWriteError, match="is a directory"):
        check_writable(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactWriteError, match="is not a directory"):
        check_writable(tmp_path / "file" / "m.h5")
    if os.path.isdir("/proc/self"):
        with pytest.raises(ArtifactWriteError, match="^/proc/m.h5: cannot write"):
            check_writable("/proc/m.h5")
