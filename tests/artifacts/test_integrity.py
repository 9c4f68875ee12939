"""Every artifact is checked before use: its checksums, its schema, links that leave it (issue 32 item 1)."""

from __future__ import annotations

import hashlib
import shutil

import h5py
import numpy as np
import pytest

from dpcli.artifacts.h5 import DIGEST_ATTR, SCHEMA, atomic_h5, digest_of, open_artifact, seal
from dpcli.errors import DpcliError
from dpcli.stages.core import load_S
from tests.conftest import run_cli


def _flip(path, dataset: str, offset: int, nbytes: int) -> None:
    """Flip bits of ``nbytes`` stored bytes of a contiguous dataset, as a bad disk or a torn copy would."""
    with h5py.File(path, "r") as f:
        start = f[dataset].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(start + offset)
        data = bytearray(fh.read(nbytes))
        fh.seek(start + offset)
        fh.write(bytes(b ^ 0x40 for b in data))


def test_the_checksum_is_blake2b_of_the_values_as_stored(tmp_path):
    """Checked against hashlib on the values read back: the digest covers dtype, shape and every byte."""
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    with atomic_h5(tmp_path / "m.h5", "mask") as f:
        f.create_dataset("x", data=x)
    with h5py.File(tmp_path / "m.h5", "r") as f:
        want = hashlib.blake2b(b"<f4(4, 3)" + f["x"][()].tobytes(), digest_size=16).hexdigest()
        assert f["x"].attrs[DIGEST_ATTR] == want == digest_of(f["x"]) == digest_of(x)
        assert f.attrs["dpcli_schema"] == SCHEMA


def test_a_bit_flipped_S_is_refused_naming_the_file(tiny_run, tmp_path, capsys):
    """2 KB of S's data flipped (no NaN appears): read by prune, one line naming the file and S, exit 2."""
    bad = tmp_path / "flipped.h5"
    shutil.copy(tiny_run.influence, bad)
    _flip(bad, "S", 4000, 2048)
    for mapped in (True, False):
        with pytest.raises(DpcliError, match=f"{bad}: checksum mismatch in dataset 'S'"):
            load_S(bad, mapped=mapped)
    out = tmp_path / "m.h5"
    code, stdout, err = run_cli(["prune", bad, "--epsilon", "0.05", "--out", out], capsys)
    assert code == 2 and stdout == "" and not out.exists()
    assert err.strip().splitlines()[-1] == (f"dpcli: error: {bad}: checksum mismatch in dataset 'S': the file is "
                                            "damaged (a bad disk, an incomplete copy or an edit); recompute it")
    assert load_S(tiny_run.influence).shape[0] == 1438  # the intact file still reads


def test_a_flipped_small_dataset_is_refused_when_the_artifact_opens(tiny_run, tmp_path):
    bad = tmp_path / "labels.h5"
    shutil.copy(tiny_run.influence, bad)
    _flip(bad, "labels", 0, 1)
    with pytest.raises(DpcliError, match="checksum mismatch in dataset 'labels'"):
        open_artifact(bad, "influence")


def test_a_dataset_without_checksum_or_linked_elsewhere_is_refused(tmp_path):
    path = tmp_path / "m.h5"
    with atomic_h5(path, "mask") as f:
        f.create_dataset("keep", data=np.ones(3, bool))
    with h5py.File(path, "r+") as f:
        f["added"] = np.zeros(2)
    with pytest.raises(DpcliError, match="dataset 'added' has no checksum"):
        open_artifact(path, "mask")
    (tmp_path / "text.npy").write_text("not hdf5")
    with h5py.File(path, "r+") as f:
        del f["added"]
        f["S"] = h5py.ExternalLink(str(tmp_path / "text.npy"), "/S")
    with pytest.raises(DpcliError, match=r"'S' is a link to .*text.npy:/S, not data stored in the artifact"):
        open_artifact(path, "mask")


@pytest.mark.parametrize("schema, words", [(SCHEMA - 1, "written by an older dpcli"),
                                           (SCHEMA + 1, "written by a newer dpcli")])
def test_another_schema_is_one_line_that_says_which(tmp_path, capsys, schema, words):
    path = tmp_path / "ck.h5"
    with atomic_h5(path, "checkpoint") as f:
        f.attrs["epoch"] = 1
    with h5py.File(path, "r+") as f:
        f.attrs["dpcli_schema"] = schema
    code, _, err = run_cli(["influence", path, "--out", tmp_path / "i.h5"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert err.count("\n") == 1 and words in err and f"schema {schema}; " in err and f"reads schema {SCHEMA})" in err


def test_seal_keeps_a_streamed_checksum_and_force_recomputes(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["a"] = np.arange(5)
        f["a"].attrs[DIGEST_ATTR] = "given"
        seal(f)
        assert f["a"].attrs[DIGEST_ATTR] == "given"
        seal(f, force=True)
        assert f["a"].attrs[DIGEST_ATTR] == digest_of(np.arange(5))
