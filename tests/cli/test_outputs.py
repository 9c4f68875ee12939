"""What prune writes beside mask.h5 (issue 27 item 2, issue 32 item 2): kept files by name, a link folder, and
every output published together or not at all; an output that is an input is refused before any work."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from dpcli.artifacts import h5 as artifacts
from dpcli.stages import masks
from tests.conftest import run_cli, run_json

TINY_NET = ["--epochs", "1", "--width", "4", "--depth", "1", "--batch-size", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A small image folder and the influence.h5 dpcli computed on it."""
    root = tmp_path_factory.mktemp("outputs") / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        for c in ("ant", "bee", "cow"):
            (root / split / c).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f"{k}.png")
    work = root.parent
    code, _, _ = run_cli(
        [
            "prune",
            f"imagefolder:{root}",
            *TINY_NET,
            "--prune-count",
            "3",
            "--method",
            "random",
            "--data-root",
            work / "cache",
            "--run-root",
            work / "runs",
            "--out",
            work / "first.h5",
            "--quiet",
        ]
    )
    assert code == 0
    return root, Path(masks.read_mask(work / "first.h5").influence)


def _quiet(args, capsys):
    code, out, err = run_cli([*map(str, args)], capsys)
    return code, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("dpcli: error:"), err
    return lines[0]


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_a_full_disk_while_writing_the_index_file_publishes_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    args = [
        "prune",
        tiny_run.influence,
        "--prune-count",
        "40",
        "--method",
        "random",
        "--out",
        out / "mask.h5",
        "--indices-out",
        out / "kept.txt",
    ]
    real = artifacts.Publication.stage

    def full(self, tmp, path):
        if Path(path).name == "kept.txt":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, tmp, path)

    monkeypatch.setattr(artifacts.Publication, "stage", full)
    code, err = _quiet(args, capsys)
    assert code == 74 and "kept.txt: cannot write (No space left on device)" in _one_line(err)
    assert _listing(out) == set()  # neither the mask nor a temporary
    # with earlier outputs in place, the failed run leaves them exactly as they were
    monkeypatch.undo()
    assert _quiet([*args, "--solver-seed", "1"], capsys)[0] == 0
    before = {p: (out / p).read_bytes() for p in ("mask.h5", "kept.txt")}
    monkeypatch.setattr(artifacts.Publication, "stage", full)
    assert _quiet([*args, "--solver-seed", "2"], capsys)[0] == 74
    assert {p: (out / p).read_bytes() for p in before} == before and _listing(out) == set(before)


def test_a_rename_failing_midway_puts_back_what_was_replaced(tiny_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    args = [
        "prune",
        tiny_run.influence,
        "--prune-count",
        "40",
        "--method",
        "random",
        "--out",
        out / "mask.h5",
        "--indices-out",
        out / "kept.npy",
    ]
    assert _quiet([*args, "--solver-seed", "1"], capsys)[0] == 0
    before = {p: (out / p).read_bytes() for p in ("mask.h5", "kept.npy")}
    real = os.replace

    def fail_second(src, dst):
        if Path(dst).name == "kept.npy" and ".partial" in Path(src).name:
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", fail_second)
    code, err = _quiet([*args, "--solver-seed", "2"], capsys)
    assert code == 74 and "kept.npy: cannot write (Input/output error)" in _one_line(err)
    assert {p: (out / p).read_bytes() for p in before} == before  # the new mask, renamed first, was undone
    assert _listing(out) == set(before)


def test_an_output_that_is_an_input_or_another_output_is_refused_before_work(tiny_run, tmp_path, capsys):
    S = tmp_path / "S.h5"
    S.write_bytes(Path(tiny_run.influence).read_bytes())
    original = S.read_bytes()
    for extra, what in (
        (["--out", S], "--out"),
        (["--out", tmp_path / "m.h5", "--indices-out", S], "--indices-out"),
        (
            ["--out", tmp_path / "m.h5", "--indices-out", tmp_path / "k.txt", "--paths-out", tmp_path / "k.txt"],
            "--indices-out and --paths-out",
        ),
    ):
        code, err = _quiet(["prune", S, "--prune-count", "5", *extra], capsys)
        line = _one_line(err)
        assert code == 2 and what in line, line
    assert S.read_bytes() == original and _listing(tmp_path) == {"S.h5"}
    ext = tmp_path / "ext.npy"
    np.save(ext, np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.arange(10) % 2)
    code, err = _quiet(
        ["prune", ext, "--prune-count", "2", "--labels", tmp_path / "y.npy", "--out", tmp_path / "y.npy"], capsys
    )
    assert code == 2 and "--out" in _one_line(err) and "--labels" in err


def test_file_names_are_refused_where_samples_have_none(tiny_run, tmp_path, capsys):
    ext = tmp_path / "S.npy"
    np.save(ext, np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32))
    for source in (tiny_run.influence, ext):
        for option in ("--paths-out", "--link-dir"):
            code, err = _quiet(["prune", source, "--prune-count", "2", option, tmp_path / "x"], capsys)
            assert code == 2 and "rows without file names" in _one_line(err) and option in err
    assert not (tmp_path / "x").exists()


def test_link_folders_replace_only_their_own_and_hard_links_share_the_files(folder_run, tmp_path, capsys):
    root, influence = folder_run
    links = tmp_path / "pruned"
    base = [
        "prune",
        influence,
        "--prune-count",
        "4",
        "--method",
        "random",
        "--out",
        tmp_path / "m.h5",
        "--link-dir",
        links,
    ]
    assert _quiet([*base, "--solver-seed", "1"], capsys)[0] == 0
    first = sorted(_listing(links / "train"))
    assert _quiet([*base, "--solver-seed", "2", "--link-kind", "hard"], capsys)[0] == 0  # its own: replaced
    second = sorted(p for p in _listing(links / "train") if p.endswith(".png"))
    assert second != [p for p in first if p.endswith(".png")] and len(second) == 15 - 4
    for rel in second:
        st = (links / "train" / rel).lstat()
        assert not (links / "train" / rel).is_symlink() and st.st_ino == (root / "train" / rel).stat().st_ino
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for target, what in ((foreign, "did not lay out"), (root / "train" / "ant" / "x", "overlaps")):
        code, err = _quiet(
            ["prune", influence, "--prune-count", "4", "--link-dir", target, "--out", tmp_path / "m2.h5"], capsys
        )
        assert code == 2 and what in _one_line(err)
    assert (foreign / "notes.txt").read_text() == "keep me" and not (tmp_path / "m2.h5").exists()


def test_a_failure_while_linking_leaves_no_folder_and_no_mask(folder_run, tmp_path, capsys, monkeypatch):
    _, influence = folder_run
    made = []
    real = os.symlink

    def full(src, dst, *a, **k):
        if len(made) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        made.append(dst)
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "symlink", full)
    code, err = _quiet(
        [
            "prune",
            influence,
            "--prune-count",
            "4",
            "--method",
            "random",
            "--out",
            tmp_path / "m.h5",
            "--paths-out",
            tmp_path / "kept.txt",
            "--link-dir",
            tmp_path / "pruned",
        ],
        capsys,
    )
    assert code == 74 and "No space left on device" in _one_line(err)
    assert _listing(tmp_path) == set() and len(made) == 3


def test_paths_are_refused_once_the_folder_changed_since_S(folder_run, tmp_path, capsys):
    root, influence = folder_run
    extra = root / "train" / "bee" / "9.png"
    Image.new("RGB", (8, 8)).save(extra)
    try:
        code, err = _quiet(
            ["prune", influence, "--prune-count", "2", "--paths-out", tmp_path / "p.txt", "--out", tmp_path / "m.h5"],
            capsys,
        )
    finally:
        extra.unlink()
    assert code == 2 and "changed since S was computed" in _one_line(err) and "16 listed now, 15 then" in err
    res = run_json(
        ["prune", influence, "--prune-count", "2", "--paths-out", tmp_path / "p.txt", "--out", tmp_path / "m.h5"],
        capsys,
    )
    with h5py.File(res["mask"], "r") as f:
        kept = np.flatnonzero(f["keep"][()])
    listed = masks.read_mask(res["mask"]).samples.total
    assert listed == 15 and len((tmp_path / "p.txt").read_text().splitlines()) == len(kept) == 13


def test_retrain_refuses_an_out_that_is_its_mask_and_names_are_refused_before_training(tiny_run, tmp_path, capsys):
    mask = tmp_path / "m.h5"
    code, _ = _quiet(["prune", tiny_run.influence, "--prune-count", "5", "--method", "random", "--out", mask], capsys)
    assert code == 0
    before = mask.read_bytes()
    code, err = _quiet(["retrain", "digits", "--mask", mask, "--out", mask, "--epochs", "1"], capsys)
    assert code == 2 and "--out" in _one_line(err) and "--mask" in err and mask.read_bytes() == before
    code, err = _quiet(
        [
            "prune",
            "digits",
            "--prune-count",
            "5",
            "--paths-out",
            tmp_path / "p.txt",
            "--epochs",
            "1",
            "--run-root",
            tmp_path / "runs",
        ],
        capsys,
    )
    assert code == 2 and "rows without file names" in _one_line(err)
    assert not list((tmp_path / "runs").rglob("*.h5"))  # refused before training
