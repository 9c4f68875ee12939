"""Everything a user can get wrong: one line `dpcli: error: ...`, exit 2, and no work done before it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from dpcli.stages.pipeline import is_artifact_path
from tests.conftest import TINY, run_cli

ROOT = Path(__file__).resolve().parents[2]


def _one_line_error(args, capsys, fragment, seconds: float | None = None, exit_code: int = 2):
    """The command ends in exactly one error line (progress lines of finished steps may precede it)."""
    t0 = time.perf_counter()
    code, out, err = run_cli(args, capsys)
    elapsed = time.perf_counter() - t0
    assert code == exit_code, (code, err)
    assert out == "" and "Traceback" not in err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("dpcli: error: ") and err.count("dpcli: error") == 1, err
    assert fragment in last, err
    if seconds is not None:
        assert elapsed < seconds, f"{args}: answered after {elapsed:.1f}s"
    return last


@pytest.fixture(scope="module")
def warm_digits():
    """Load digits once, so the timings below measure dpcli's checks, not scikit-learn's first import."""
    from dpcli.data.sources import load_dataset

    load_dataset("digits")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["prune", "x.h5", "--epsilom", "1"], "No such option: --epsilom"),
        (["prune", "x.h5", "--epsilon", "abc"], "Invalid value for '--epsilon'"),
        (["prune", "x.h5", "--prune-count", "1.5"], "Invalid value for '--prune-count'"),
        (["prune"], "Missing argument 'SOURCE'"),
        (["verify-bound", "digits", "--mask"], "requires an argument"),
        (["prunee", "x.h5"], "No such command 'prunee'"),
    ],
)
def test_usage_errors_are_one_line(args, fragment, capsys):
    code, _, full = run_cli(args, capsys)
    err = _one_line_error(args, capsys, fragment)
    assert full == err + "\n"  # nothing but the one line
    if "--epsilom" in args:
        assert "--epsilon" in err.split("--epsilom", 1)[1]  # Click's suggestion is kept


def test_usage_error_through_the_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "dpcli", "prune", "x.h5", "--epsilom", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("dpcli: error: No such option: --epsilom") and proc.stderr.count("\n") == 1


def test_dpcli_warnings_print_as_their_one_line(tmp_path):
    """Not Python's 'file:line: UserWarning: ...' plus a source line: the message, as the user reads errors."""
    from tests.data.test_data_scale import mixed_folder

    folder = mixed_folder(tmp_path / "f", n_train=2, n_test=1)
    from PIL import Image

    Image.new("RGB", (9, 9)).save(folder / "train" / "ant" / "x.gif")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpcli",
            "train",
            f"imagefolder:{folder}",
            "--image-size",
            "8",
            "--epochs",
            "1",
            "--width",
            "2",
            "--depth",
            "1",
            "--run-root",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("dpcli: left out 1 image file(s) in a format dpcli does not read (1 .gif;"), proc.stderr
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr


@pytest.mark.parametrize(
    "command, extra, fragment",
    [
        ("train", ["--epochs", "0"], "--epochs must be a positive integer"),
        ("train", ["--arch", "torchvision:resnet1"], "unknown torchvision classification model 'resnet1'"),
        ("prune", ["--prune-ratio", "0.5", "--lr", "-1"], "--lr must be a positive finite number"),
        ("verify-bound", ["--epsilons", "0.1", "--width", "0"], "--width must be a positive integer"),
    ],
)
def test_model_options_are_checked_before_the_image_cache_is_built(command, extra, fragment, tmp_path, capsys):
    """Building an ImageNet-size cache takes an hour: a typo in a model option must not cost it."""
    from tests.data.test_data_scale import mixed_folder

    folder = mixed_folder(tmp_path / "f", n_train=2, n_test=1)
    data = tmp_path / "data"
    _one_line_error(
        [
            command,
            f"imagefolder:{folder}",
            "--image-size",
            "8",
            "--data-root",
            data,
            "--run-root",
            tmp_path / "runs",
            *extra,
        ],
        capsys,
        fragment,
    )
    assert _artifacts(data) == [] and _artifacts(tmp_path / "runs") == []


def _artifacts(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--prune-count", "5", "--solver", "cplex"], "unknown --solver 'cplex'"),
        (["--prune-count", "5", "--estimator", "exactt"], "unknown --estimator 'exactt' (did you mean 'exact'?)"),
        (["--prune-count", "5", "--method", "herd"], "unknown --method 'herd'"),
        (["--prune-count", "5", "--indices-out", "kept.csv"], "--indices-out must end in .txt or .npy"),
        (["--prune-count", "100000"], "exceeds the 1438 training samples"),
        (["--prune-count", "1438"], "would prune all 1438 training samples"),
        (["--prune-count", "5", "--out", "/proc/m.h5"], "--out /proc/m.h5: cannot write"),
        (["--prune-count", "5", "--out", "."], "is a directory"),
        (["--prune-count", "5", "--indices-out", "afile/k.txt"], "is not a directory"),
    ],
)
def test_dataset_mode_checks_options_before_training(extra, fragment, tmp_path, monkeypatch, capsys, warm_digits):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    runs = tmp_path / "runs"
    io = any(x in fragment for x in ("cannot write", "directory"))  # an unwritable output is an I/O error
    _one_line_error(
        ["prune", "digits", *TINY, "--run-root", runs, *extra], capsys, fragment, seconds=2.0, exit_code=74 if io else 2
    )
    assert _artifacts(runs) == [], "something was trained before the bad option was reported"


def test_unwritable_run_root_is_refused_before_training(tmp_path, capsys, warm_digits):
    (tmp_path / "file").write_text("x")
    _one_line_error(
        ["prune", "digits", "--prune-count", "5", *TINY, "--run-root", tmp_path / "file" / "runs"],
        capsys,
        "--run-root",
        seconds=2.0,
        exit_code=74,
    )
    _one_line_error(
        ["train", "digits", *TINY, "--run-root", tmp_path / "file" / "runs"], capsys, "--run-root", exit_code=74
    )
    _one_line_error(["train", "digits", *TINY, "--out", "/proc/ck.h5"], capsys, "--out /proc/ck.h5", exit_code=74)


def test_prune_count_of_everything_is_refused_like_ratio_one(tiny_run, tmp_path, capsys):
    with h5py.File(tiny_run.influence, "r") as f:
        n = f["S"].shape[0]
    out = tmp_path / "m.h5"
    _one_line_error(["prune", tiny_run.influence, "--prune-count", n, "--out", out], capsys, f"would prune all {n}")
    _one_line_error(["prune", tiny_run.influence, "--prune-ratio", 1], capsys, "--prune-ratio must lie")
    assert not out.exists()
    code, _, _ = run_cli(["prune", tiny_run.influence, "--prune-count", n - 1, "--out", out, "--quiet"], capsys)
    assert code == 0 and out.exists()


def test_influence_whose_rows_differ_from_n_is_refused(tiny_run, tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    shutil.copy(tiny_run.influence, bad)
    with h5py.File(bad, "r+") as f:
        rows = f["S"].shape[0]
        f.attrs["n"] = rows + 438
    _one_line_error(
        ["prune", bad, "--prune-count", 5, "--out", tmp_path / "m.h5"],
        capsys,
        f"S has {rows} rows but the artifact says n = {rows + 438}",
    )
    assert not (tmp_path / "m.h5").exists()


def test_a_file_named_like_a_dataset_does_not_shadow_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("digits").write_text("not a dataset")
    Path("cifar10").mkdir()
    # read as the dataset: its size is known, so the count is checked against digits' 1438 samples
    _one_line_error(
        ["prune", "digits", "--prune-count", "99999", *TINY, "--run-root", tmp_path / "r"],
        capsys,
        "exceeds the 1438 training samples",
    )
    _one_line_error(["prune", "./digits", "--prune-count", "5"], capsys, "not an HDF5 file")
    assert not is_artifact_path("digits") and not is_artifact_path("imagefolder:/data/x")
    assert is_artifact_path("influence.h5") and is_artifact_path("runs/x") and is_artifact_path("S.HDF5")


def test_no_wait_is_passed_to_the_locks_for_this_command_only(monkeypatch, tmp_path, capsys):
    from dpcli.artifacts.lock import no_wait
    from dpcli.errors import DpcliError
    from dpcli.stages import pipeline

    seen = []

    def load(dataset, data_root, *args, **kwargs):
        seen.append(no_wait())
        raise DpcliError("stop here")

    monkeypatch.delenv("DPCLI_NO_WAIT", raising=False)
    monkeypatch.setattr(pipeline, "load", load)
    for extra in (["--no-wait"], []):
        _one_line_error(["train", "digits", "--run-root", tmp_path, *extra], capsys, "stop here")
    assert seen == [True, False] and "DPCLI_NO_WAIT" not in os.environ and not no_wait()
