"""Every artifact is checked before use: its checksums, its schema, links that leave it (issue 32 item 1)."""

from __future__ import annotations

import shutil
import zlib

import h5py
import numpy as np
import pytest

from dpcli.artifacts import integrity
from dpcli.artifacts.h5 import DIGEST_ATTR, SCHEMA, atomic_h5, digest_of, open_artifact, seal
from dpcli.errors import DpcliError
from dpcli.stages.core import load_S
from tests.conftest import load_benchmark, run_cli


def _flip(path, dataset: str, offset: int, nbytes: int) -> None:
    """Flip bits of ``nbytes`` stored bytes of a contiguous dataset, as a bad disk or a torn copy would."""
    with h5py.File(path, "r") as f:
        start = f[dataset].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(start + offset)
        data = bytearray(fh.read(nbytes))
        fh.seek(start + offset)
        fh.write(bytes(b ^ 0x40 for b in data))


def test_the_checksum_is_crc32_of_the_values_as_stored(tmp_path):
    """Checked against zlib on the values read back: the digest covers dtype, shape and every byte."""
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    with atomic_h5(tmp_path / "m.h5", "mask") as f:
        f.create_dataset("x", data=x)
    with h5py.File(tmp_path / "m.h5", "r") as f:
        want = f"crc32:{zlib.crc32(b'<f4(4, 3)' + f['x'][()].tobytes()):08x}"
        assert f["x"].attrs[DIGEST_ATTR] == want == digest_of(f["x"]) == digest_of(x)
        assert f.attrs["dpcli_schema"] == SCHEMA


def test_a_bit_flipped_S_is_refused_naming_the_file(tiny_run, tmp_path, capsys, monkeypatch):
    """2 KB of S's data flipped (no NaN appears): read by prune, one line naming the file and S, exit 2.  S is
    made larger than what an open verifies at once, so its streamed check in load_S is the one tested."""
    monkeypatch.setattr(integrity, "EAGER_VERIFY_BYTES", 1 << 20)
    bad = tmp_path / "flipped.h5"
    shutil.copy(tiny_run.influence, bad)
    with h5py.File(bad, "r") as f:
        assert f["S"].nbytes > integrity.EAGER_VERIFY_BYTES
    _flip(bad, "S", 4000, 2048)
    for mapped in (True, False):
        with pytest.raises(DpcliError, match=f"{bad}: checksum mismatch in dataset 'S'"):
            load_S(bad, mapped=mapped)
    out = tmp_path / "m.h5"
    code, stdout, err = run_cli(["prune", bad, "--epsilon", "0.05", "--out", out], capsys)
    assert code == 2 and stdout == "" and not out.exists()
    assert err.strip().splitlines()[-1] == (
        f"dpcli: error: {bad}: checksum mismatch in dataset 'S': the file is "
        "damaged (a bad disk, an incomplete copy or an edit); recompute it"
    )
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


@pytest.mark.parametrize(
    "schema, words", [(SCHEMA - 1, "written by an older dpcli"), (SCHEMA + 1, "written by a newer dpcli")]
)
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


def test_a_checkpoint_copied_without_its_epoch_records_does_not_resume(tmp_path):
    """Stopped after epoch 1 of 3, then copied without ck.h5.epochs/: resuming it would be marked complete with a
    trajectory of epochs 2..3 only (SGD-Influence 90 % off); refused, and the recorded trajectory is checked too."""
    import torch

    from dpcli.data.sources import load_dataset
    from dpcli.stages import pipeline
    from dpcli.train.checkpoint import load_checkpoint
    from dpcli.train.loop import train
    from dpcli.train.trajectory import load_trajectory

    ds = load_dataset("digits")
    cfg = pipeline.train_config(ds, {"epochs": 3, "width": 4, "depth": 1})
    src = tmp_path / "a" / "ck.h5"

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, ds, src, device=torch.device("cpu"), on_epoch=stop)
    assert load_checkpoint(src, weights=False).epoch == 1 and (tmp_path / "a" / "ck.h5.epochs").is_dir()
    copy = tmp_path / "b" / "ck.h5"
    copy.parent.mkdir()
    shutil.copy(src, copy)
    with pytest.raises(
        DpcliError,
        match=r"records of 1 of its 1 trained epochs are missing \(.*ck\.h5\.epochs is "
        r"absent or incomplete\)",
    ):
        train(cfg, ds, copy, device=torch.device("cpu"))
    full = train(cfg, ds, src, device=torch.device("cpu"))  # with its records it resumes to the end
    assert full.complete and len(load_trajectory(src)) == 3
    with h5py.File(src, "r+") as f:  # a trajectory that lost its first epoch, checksums valid
        g = f["trajectory"]
        for name in list(g):
            data = g[name][()][1:]
            del g[name]
            g[name] = data
        seal(f, force=True)
    with pytest.raises(DpcliError, match=r"holds 2 of the 3 trained epochs \(epochs 2\.\.3\)"):
        load_trajectory(src)


def _npy_cases(tmp_path):
    load_benchmark("reliability_campaign").write_odd_arrays(tmp_path)  # the files the campaign replays
    return [
        ("zero.npy", "not a .npy file (empty)"),
        ("text.npy", "not a .npy file (no NumPy header)"),
        ("S_str.npy", "S must be real numbers, got dtype <U1"),
        ("huge.npy", "declares S of shape (1000000, 1000000) (3725.3 GiB) but holds 64 bytes"),
        ("huge.h5", "declares S of shape (1000000, 1000000) (3725.3 GiB) but stores 0 bytes"),
    ]


def test_odd_array_files_are_one_true_line_each(tmp_path, capsys):
    """Each read from its header alone, before any allocation: a zero-byte file was exit 130 with nothing printed,
    a text file 'pickled data', a huge declared shape 'use a smaller --batch-size', strings a traceback."""
    for name, fragment in _npy_cases(tmp_path):
        code, out, err = run_cli(["prune", tmp_path / name, "--prune-count", "1", "--out", tmp_path / "m.h5"], capsys)
        assert (
            code == 2
            and out == ""
            and err
            == f"dpcli: error: {tmp_path / name}: {fragment}"
            + err[len(f"dpcli: error: {tmp_path / name}: {fragment}") :]
        ), (name, err)
        assert err.count("\n") == 1 and not (tmp_path / "m.h5").exists()
    np.save(tmp_path / "y.npy", np.arange(300) % 3)
    code, _, err = run_cli(
        ["influence", "--features", tmp_path / "zero.npy", "--labels", tmp_path / "y.npy", "--out", tmp_path / "i.h5"],
        capsys,
    )
    assert code == 2 and "zero.npy: not a .npy file (empty); save the features with numpy.save" in err


@pytest.mark.parametrize(
    "edit, fragment",
    [
        ("nan", "the model's weights hold NaN or inf (in "),
        (
            "head",
            "damaged checkpoint: its weights do not fit the model of its configuration (size mismatch for head.weight",
        ),
    ],
)
def test_a_checkpoint_with_bad_weights_is_one_true_line(tiny_run, tmp_path, capsys, edit, fragment):
    """Checksums valid (a bad writer, not a bad disk): NaN weights were 'use a larger --damping', a head of
    another shape a traceback."""
    ck = tmp_path / "ck.h5"
    shutil.copy(tiny_run.checkpoint, ck)
    with h5py.File(ck, "r+") as f:
        model = f["model"]
        if edit == "nan":
            model["head.bias"][...] = np.nan
        else:
            w = model["head.weight"][()]
            del model["head.weight"]
            model["head.weight"] = w[:, :-1]
        seal(f, force=True)
    code, _, err = run_cli(["influence", ck, "--out", tmp_path / "i.h5", "--device", "cpu"], capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err and "--damping" not in err, err
    assert not (tmp_path / "i.h5").exists()


def test_influence_out_equal_to_its_checkpoint_is_refused(tiny_run, tmp_path, capsys):
    ck = tmp_path / "ck.h5"
    shutil.copy(tiny_run.checkpoint, ck)
    before = ck.read_bytes()
    code, _, err = run_cli(["influence", ck, "--out", ck, "--device", "cpu"], capsys)
    assert (
        code == 2
        and err
        == f"dpcli: error: --out {ck} is the checkpoint; writing it would destroy the input: give another path\n"
    )
    assert ck.read_bytes() == before
