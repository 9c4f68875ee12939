"""Atomic writes and kind checks: a killed job never leaves a file a rerun would trust."""

from __future__ import annotations

import os
import stat

import h5py
import numpy as np
import pytest

from dpcli.artifacts.h5 import (array_fingerprint, atomic_h5, config_key, get_attr, open_artifact, row_chunks,
                             write_json)
from dpcli.errors import DpcliError


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
    with pytest.raises(DpcliError, match="a dpcli mask artifact, expected a influence"):
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


def test_artifacts_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_h5(tmp_path / "m.h5", "mask"):
            pass
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.h5").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
