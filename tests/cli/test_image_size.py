"""--image-size through the command line: a mixed-size folder goes train -> influence -> prune -> retrain."""

from __future__ import annotations

import h5py
import numpy as np

from tests.conftest import run_cli
from tests.data.test_data_scale import mixed_folder

SMALL = ["--arch", "convnet", "--width", "4", "--depth", "1", "--epochs", "1", "--batch-size", "8", "--device", "cpu"]


def test_mixed_size_folder_runs_every_stage_with_image_size(tmp_path, capsys):
    root = tmp_path / "imgs"
    mixed_folder(root, n_train=6, n_test=2, classes=("ant", "bee", "cat"))
    spec = f"imagefolder:{root}"
    common = ["--data-root", tmp_path / "data", "--run-root", tmp_path / "runs"]
    code, _, err = run_cli(["prune", spec, "--prune-ratio", "0.3", *SMALL, *common], capsys)
    assert code == 2 and "--image-size" in err.strip().splitlines()[-1]  # mixed sizes need it: one line
    code, out, err = run_cli(
        ["prune", spec, "--prune-ratio", "0.3", "--image-size", "12", *SMALL, *common, "--json", "--quiet"], capsys
    )
    assert code == 0, err
    import json

    summary = json.loads(out)
    with h5py.File(summary["checkpoint"]) as f:
        assert json.loads(f.attrs["config"])["image_size"] == 12
        assert f["model"]  # trained on 12 x 12 crops
    with h5py.File(summary["mask"]) as f:
        keep = f["keep"][()]
    assert keep.shape == (18,) and int((~keep).sum()) == round(0.3 * 18)
    # retrain reads the upstream run's image size without being told
    code, out, err = run_cli(
        ["retrain", spec, "--mask", summary["mask"], "--device", "cpu", *common, "--json", "--quiet"], capsys
    )
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["n_kept"] == int(keep.sum())
    with h5py.File(metrics["checkpoint"]) as f:
        assert np.array_equal(f["keep_indices"][()], np.flatnonzero(keep))
