"""`dpcli-runs/latest/<stage>`: stable names for the latest results, moved only by a command's own results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dpcli.artifacts.runs import followed, link_latest
from dpcli.stages.masks import read_mask
from tests.conftest import TINY, run_cli


def _links(root: Path) -> dict[str, Path]:
    latest = root / "latest"
    return {p.name: p.resolve() for p in latest.iterdir()} if latest.is_dir() else {}


def test_prune_links_its_chain_and_verify_bound_leaves_it(tmp_path, capsys):
    root = tmp_path / "runs"
    common = ["digits", *TINY, "--run-root", root, "--json", "--quiet"]
    code, out, err = run_cli(["prune", "--prune-ratio", "0.3", *common], capsys)
    assert code == 0, err
    summary = json.loads(out)
    links = _links(root)
    assert links == {
        "train": Path(summary["checkpoint"]).resolve().parent,
        "influence": Path(summary["influence"]).resolve().parent,
        "prune": Path(summary["mask"]).resolve().parent,
    }
    for name in links:  # relative links: the run root can be moved or mounted elsewhere
        assert not os.readlink(root / "latest" / name).startswith("/")
    mask = read_mask(root / "latest" / "prune" / "mask.h5")
    assert np.array_equal(mask.keep, read_mask(Path(summary["mask"])).keep)

    # verify-bound prunes at two epsilons (two more prune directories) and retrains: only its own link moves
    code, out, err = run_cli(["verify-bound", "--epsilons", "0.02,0.2", *common], capsys)
    assert code == 0, err
    report = json.loads(out)
    after = _links(root)
    assert after.pop("verify-bound") == Path(report["report"]).resolve().parent
    assert after == links
    assert len(list((root / "latest" / "influence").glob("prune-*"))) == 3

    # a retrain given the mask through latest/ writes and reports the real run directory, and is linked
    code, out, err = run_cli(
        [
            "retrain",
            "digits",
            "--mask",
            root / "latest" / "prune" / "mask.h5",
            *TINY,
            "--run-root",
            root,
            "--json",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads(out)
    assert "latest" not in metrics["checkpoint"] and "latest" not in metrics["mask"]
    assert Path(metrics["checkpoint"]).resolve().parent.parent == links["prune"]
    assert _links(root)["retrain"] == Path(metrics["checkpoint"]).resolve().parent
    assert not [p for p in (root / "latest").iterdir() if p.name.startswith(".")]  # no link temporaries left


def test_results_written_elsewhere_get_no_link(tmp_path, capsys):
    root = tmp_path / "runs"
    (root / "latest").mkdir(parents=True)  # a run root in use
    code, _, err = run_cli(
        ["train", "digits", *TINY, "--out", tmp_path / "ck.h5", "--run-root", root, "--quiet"], capsys
    )
    assert code == 0, err
    assert _links(root) == {}
    # and a run root whose latest/ cannot be made: one note, the result stands
    (root / "latest").rmdir()
    (root / "latest").write_text("not a directory")
    code, out, err = run_cli(["train", "digits", *TINY, "--run-root", root, "--json"], capsys)
    assert code == 0, err
    assert Path(json.loads(out)["checkpoint"]).is_file()
    notes = [ln for ln in err.splitlines() if "latest" in ln]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "not updated" in notes[0]


def test_a_link_is_replaced_atomically_and_points_at_the_artifacts_directory(tmp_path):
    a, b = tmp_path / "ds" / "train-a", tmp_path / "ds" / "train-b"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "checkpoint.h5").write_text(d.name)
    assert link_latest(tmp_path, {"train": a / "checkpoint.h5", "prune": None}) == ["train"]
    assert (tmp_path / "latest" / "train" / "checkpoint.h5").read_text() == "train-a"
    assert link_latest(tmp_path, {"train": b / "checkpoint.h5"}) == ["train"]
    assert (tmp_path / "latest" / "train" / "checkpoint.h5").read_text() == "train-b"
    assert os.readlink(tmp_path / "latest" / "train") == os.path.join("..", "ds", "train-b")
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == ["train"]
    # a path through the link is followed to the real file; other paths and dataset names stay as given
    assert followed(tmp_path / "latest" / "train" / "checkpoint.h5") == (b / "checkpoint.h5").resolve()
    assert followed(str(b / "checkpoint.h5")) == str(b / "checkpoint.h5")
    assert followed("digits") == "digits" and followed(None) is None
