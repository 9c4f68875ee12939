"""The command line as a user runs it: the whole chain, caching, --json, and every bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from dpcli.artifacts.h5 import atomic_h5, seal
from dpcli.stages.core import read_influence_info
from dpcli.stages.masks import read_mask
from dpcli.train.checkpoint import load_checkpoint
from tests.conftest import TINY, run_cli, run_json


def _S(path):
    with h5py.File(path, "r") as f:
        return f["S"][()]


def test_explicit_chain_equals_dataset_mode(tiny_run, tmp_path, capsys):
    S = _S(tiny_run.influence)
    n = S.shape[0]
    # an epsilon that allows a real but partial prune: a tenth of a random half's summed influence
    rng = np.random.default_rng(0)
    eps = 0.1 * float(np.linalg.norm(S[rng.random(n) < 0.5].astype(np.float64).sum(0)))
    explicit = tmp_path / "mask.h5"
    res = run_json(
        ["prune", tiny_run.influence, "--epsilon", eps, "--out", explicit, "--indices-out", tmp_path / "keep.txt"],
        capsys,
    )
    auto = run_json(["prune", "digits", "--epsilon", eps, *TINY, "--run-root", tmp_path / "runs"], capsys)
    a, b = read_mask(explicit), read_mask(auto["mask"])
    assert np.array_equal(a.keep, b.keep)
    assert 0 < a.n_pruned < n
    # the certificate holds when recomputed here from S
    norm = float(np.linalg.norm(S[~a.keep].astype(np.float64).sum(0)))
    assert norm <= eps and math.isclose(norm, res["achieved_norm"], rel_tol=1e-6)
    assert res["n_pruned"] + res["n_kept"] == n == a.n
    kept = np.loadtxt(tmp_path / "keep.txt", dtype=np.int64)
    assert np.array_equal(kept, np.flatnonzero(a.keep))
    with h5py.File(explicit, "r") as f:
        assert np.array_equal(f["keep_indices"][()], np.flatnonzero(f["keep"][()]))
        assert np.array_equal(f["pruned_indices"][()], np.flatnonzero(~f["keep"][()]))
    # rerunning dataset mode reuses every cached stage and gives the same mask
    again = run_json(["prune", "digits", "--epsilon", eps, *TINY, "--run-root", tmp_path / "runs"], capsys)
    assert again["mask"] == auto["mask"] and again["checkpoint"] == auto["checkpoint"]


def test_cardinality_mode_and_npy_indices(tiny_run, tmp_path, capsys):
    res = run_json(
        [
            "prune",
            tiny_run.influence,
            "--prune-ratio",
            0.4,
            "--method",
            "optimization",
            "--out",
            tmp_path / "m.h5",
            "--indices-out",
            tmp_path / "keep.npy",
        ],
        capsys,
    )
    n = res["n"]
    assert res["n_pruned"] == round(0.4 * n) or res["n_pruned"] == int(0.4 * n)
    kept = np.load(tmp_path / "keep.npy")
    assert len(kept) == n - res["n_pruned"]
    S = _S(tiny_run.influence).astype(np.float64)
    mask = read_mask(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r") as f:  # the .npy holds exactly the KEPT indices, in order
        assert kept.dtype == np.int64 and np.array_equal(kept, f["keep_indices"][()])
    assert np.array_equal(kept, np.flatnonzero(mask.keep))
    assert math.isclose(np.linalg.norm(S[~mask.keep].sum(0)), res["achieved_norm"], rel_tol=1e-6)
    # beats random pruning of the same count by a wide margin
    rng = np.random.default_rng(1)
    rand = np.linalg.norm(S[rng.choice(n, res["n_pruned"], replace=False)].sum(0))
    assert res["achieved_norm"] < 0.2 * rand
    count = run_json(["prune", tiny_run.influence, "--prune-count", 7, "--out", tmp_path / "c.h5"], capsys)
    assert count["n_pruned"] == 7


def test_same_seed_same_mask_and_anneal(tiny_run, tmp_path, capsys):
    # no --time-budget: a wall-clock budget makes any solver's result depend on machine speed
    opt = ["--method", "optimization"]
    a = run_json(
        ["prune", tiny_run.influence, "--prune-ratio", 0.3, "--solver-seed", 3, *opt, "--out", tmp_path / "a.h5"],
        capsys,
    )
    b = run_json(
        ["prune", tiny_run.influence, "--prune-ratio", 0.3, "--solver-seed", 3, *opt, "--out", tmp_path / "b.h5"],
        capsys,
    )
    assert a["solver"] == "swap" and a["n_pruned"] == b["n_pruned"]
    assert np.array_equal(read_mask(tmp_path / "a.h5").keep, read_mask(tmp_path / "b.h5").keep)
    # the paper's annealer is selectable and its result is certified like any other
    c = run_json(
        [
            "prune",
            tiny_run.influence,
            "--prune-count",
            50,
            "--solver",
            "anneal",
            "--time-budget",
            0.5,
            *opt,
            "--out",
            tmp_path / "c.h5",
        ],
        capsys,
    )
    S = _S(tiny_run.influence).astype(np.float64)
    assert c["solver"] == "anneal" and c["n_pruned"] == 50
    assert c["achieved_norm"] == pytest.approx(np.linalg.norm(S[~read_mask(tmp_path / "c.h5").keep].sum(0)), rel=1e-9)


def test_json_goes_to_stdout_only(tiny_run, tmp_path, capsys):
    code, out, err = run_cli(
        ["prune", tiny_run.influence, "--prune-count", 5, "--out", tmp_path / "m.h5", "--json"], capsys
    )
    assert code == 0
    payload = json.loads(out)  # stdout is exactly one JSON document
    assert payload["command"] == "prune" and payload["n_pruned"] == 5
    assert "pruned 5 of" in err


def test_influence_artifact_schema(tiny_run):
    info = read_influence_info(tiny_run.influence)
    with h5py.File(tiny_run.influence, "r") as f:
        S = f["S"]
        assert S.dtype == np.float32 and S.chunks is None and S.id.get_offset() is not None  # contiguous: prune maps it
        assert S.shape == (info.n, info.d) and info.d == info.num_classes * (info.feature_dim + 1)
        assert f["loss"].shape == (info.n,) and f["grad_norm"].shape == (info.n,)
        assert f["test_grad"].shape == (info.d,)
    assert info.method == "exact" and info.damping == pytest.approx(5e-4)  # default: the training weight decay


def _trained_on(checkpoint, mask_path) -> None:
    """The retrained checkpoint used exactly the mask's KEPT rows (not the pruned ones)."""
    ck = load_checkpoint(checkpoint, weights=False)
    with h5py.File(mask_path, "r") as f:
        np.testing.assert_array_equal(ck.keep_indices, f["keep_indices"][()])
        np.testing.assert_array_equal(ck.keep_indices, np.flatnonzero(f["keep"][()]))


def test_retrain_reports_metrics(tiny_run, tmp_path, capsys):
    # ratio 0.3, not 0.5: kept and pruned sets then differ in size, so their step counts differ too
    run_json(["prune", tiny_run.influence, "--prune-ratio", 0.3, "--out", tmp_path / "m.h5"], capsys)
    res = run_json(
        ["retrain", "digits", "--mask", tmp_path / "m.h5", "--out", tmp_path / "r" / "ck.h5", "--device", "cpu"], capsys
    )
    n_kept = res["n_kept"]
    assert n_kept == read_mask(tmp_path / "m.h5").n_kept and res["n_pruned"] < n_kept
    _trained_on(tmp_path / "r" / "ck.h5", tmp_path / "m.h5")
    assert res["epochs"] == 3 and res["optimizer_steps"] == 3 * math.ceil(n_kept / 64)
    full = load_checkpoint(tiny_run.checkpoint, weights=False)
    assert res["full_data_optimizer_steps"] == full.steps == 3 * math.ceil(full.n_train / 64)
    assert 0 <= res["test_accuracy"] <= 100 and res["test_loss"] > 0
    assert "seconds_to_target" in res and (tmp_path / "r" / "metrics.json").exists()
    # transfer to another architecture (Figure 3)
    res2 = run_json(
        [
            "retrain",
            "digits",
            "--mask",
            tmp_path / "m.h5",
            "--arch",
            "convnet",
            "--width",
            "12",
            "--epochs",
            "1",
            "--out",
            tmp_path / "r2" / "ck.h5",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert res2["epochs"] == 1
    _trained_on(tmp_path / "r2" / "ck.h5", tmp_path / "m.h5")


def _own_test_loss(checkpoint) -> float:
    """Mean test cross-entropy of a checkpoint's weights: its own normalisation and forward pass."""
    import torch
    import torch.nn.functional as F

    from dpcli.data.sources import load_dataset
    from dpcli.train.loop import make_model

    ck = load_checkpoint(checkpoint)
    ds = load_dataset(ck.config.dataset)
    model = make_model(ck.config, ds)
    model.load_state_dict(ck.state)
    model.eval()
    x = (
        torch.from_numpy(ds.test.images).float().permute(0, 3, 1, 2) / 255 - torch.tensor(ds.mean).view(1, -1, 1, 1)
    ) / torch.tensor(ds.std).view(1, -1, 1, 1)
    with torch.no_grad():
        return F.cross_entropy(model(x).double(), torch.from_numpy(ds.test.labels).long()).item()


def test_within_bound_compares_the_gap_with_the_bound_itself():
    from dpcli.stages.bound import BoundRow

    def row(gap, bound):
        return BoundRow(
            label="x",
            method="optimization",
            mask="m.h5",
            n_pruned=1,
            prune_ratio=0.1,
            epsilon=None,
            norm=1.0,
            predicted_bound=bound,
            first_order=0.0,
            observed_gap=gap,
            test_loss=1.0,
            test_accuracy=50.0,
        )

    for gap, bound, inside in [
        (0.5, 1.0, True),
        (-1.0, 1.0, True),
        (1.5, 1.0, False),
        (-1.01, 1.0, False),
        (1.9, 1.0, False),
        (0.0, 0.0, True),
        (1e-9, 0.0, False),
    ]:
        assert row(gap, bound).within_bound is inside, (gap, bound)
        assert row(gap, bound).to_dict()["within_bound"] is inside


def test_verify_bound(tiny_run, tmp_path, capsys):
    run_json(
        ["prune", tiny_run.influence, "--prune-ratio", 0.3, "--method", "optimization", "--out", tmp_path / "m.h5"],
        capsys,
    )
    rep = run_json(
        ["verify-bound", "digits", "--mask", tmp_path / "m.h5", "--out", tmp_path / "vb", "--device", "cpu"], capsys
    )
    rows = rep["rows"]
    assert [r["method"] for r in rows] == ["optimization", "random"]
    assert rows[0]["n_pruned"] == rows[1]["n_pruned"]
    S = _S(tiny_run.influence).astype(np.float64)
    with h5py.File(tiny_run.influence, "r") as f:
        g = f["test_grad"][()]
    for r in rows:
        keep = read_mask(r["mask"]).keep
        s = S[~keep].sum(0)
        assert r["norm"] == pytest.approx(np.linalg.norm(s), rel=1e-6)
        assert r["predicted_bound"] == pytest.approx(np.linalg.norm(s) * np.linalg.norm(g), rel=1e-6)
        assert r["first_order"] == pytest.approx(g @ s, rel=1e-6, abs=1e-12)
        assert abs(r["first_order"]) <= r["predicted_bound"] * (1 + 1e-9)  # Cauchy-Schwarz
        assert r["observed_gap"] == pytest.approx(r["test_loss"] - rep["full_test_loss"])
        assert r["within_bound"] == (abs(r["observed_gap"]) <= r["predicted_bound"])
        # the row's model was retrained on this mask's kept rows
        mine = [
            p
            for p in Path(r["mask"]).parent.glob("retrain-*/checkpoint.h5")
            if load_checkpoint(p, weights=False).lineage.get("mask") == str(Path(r["mask"]).resolve())
        ]
        assert len(mine) == 1
        _trained_on(mine[0], r["mask"])
    # the full-data loss is that of the FINAL full-data model, evaluated here without dpcli's evaluate()
    assert rep["full_test_loss"] == pytest.approx(_own_test_loss(tiny_run.checkpoint), rel=1e-5)
    assert rows[0]["norm"] < rows[1]["norm"]  # the optimized set moves the parameters less than random
    assert (tmp_path / "vb" / "bound.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "vb" / "bound.json").read_text())["rows"] == rows


# ---------------------------------------------------------------- bad inputs: one line, non-zero, no traceback
def _assert_user_error(args, capsys, fragment):
    code, out, err = run_cli(args, capsys)
    assert code == 2, (code, err)
    assert "Traceback" not in err and out == ""
    assert fragment in err, err
    assert err.startswith("dpcli: error:") and err.strip().count("\n") == 0, err


def _corrupt_copy(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
        seal(f, force=True)  # an edit with valid checksums: what is checked is the content behind them


def test_bad_inputs(tiny_run, tmp_path, capsys):
    inf = tiny_run.influence
    _assert_user_error(["prune", tmp_path / "nope.h5", "--epsilon", 1], capsys, "no such file")
    (tmp_path / "text.h5").write_text("hello")
    _assert_user_error(["prune", tmp_path / "text.h5", "--epsilon", 1], capsys, "not an HDF5 file")
    _assert_user_error(["influence", inf], capsys, "expected a checkpoint artifact")
    _assert_user_error(["prune", tiny_run.checkpoint, "--epsilon", 1], capsys, "expected an influence artifact")
    _assert_user_error(["prune", inf, "--epsilon", -1], capsys, "--epsilon must be")
    _assert_user_error(["prune", inf, "--epsilon", "nan"], capsys, "--epsilon must be")
    _assert_user_error(["prune", inf, "--prune-ratio", 1.0], capsys, "--prune-ratio must lie strictly between 0 and 1")
    _assert_user_error(["prune", inf, "--prune-ratio", 0], capsys, "--prune-ratio must lie")
    _assert_user_error(["prune", inf], capsys, "give exactly one of")
    _assert_user_error(["prune", inf, "--prune-count", 10**7], capsys, "exceeds")
    _assert_user_error(["prune", inf, "--epsilon", 1, "--solver", "cplex"], capsys, "unknown --solver")
    _assert_user_error(
        ["prune", inf, "--epsilon", 1, "--indices-out", tmp_path / "k.csv"], capsys, "must end in .txt or .npy"
    )
    _assert_user_error(["train", "mnist"], capsys, "Unknown dataset")
    _assert_user_error(["train", "digits", "--arch", "vgg", "--epochs", "1"], capsys, "vgg")
    _assert_user_error(["train", "digits", "--epochs", "0"], capsys, "--epochs must be a positive integer")
    _assert_user_error(["influence", tiny_run.checkpoint, "--damping", "-1"], capsys, "--damping must be")
    _assert_user_error(
        ["train", "digits", "--device", "cuda", "--epochs", "1"]
        if not __import__("torch").cuda.is_available()
        else ["train", "digits", "--device", "tpu"],
        capsys,
        "device",
    )
    # non-finite values in S
    _corrupt_copy(inf, tmp_path / "nan.h5", lambda f: f["S"].__setitem__((3, 0), np.nan))
    _assert_user_error(["prune", tmp_path / "nan.h5", "--epsilon", 1], capsys, "non-finite")
    # a checkpoint made for another dataset
    _corrupt_copy(
        tiny_run.checkpoint, tmp_path / "other.h5", lambda f: f.attrs.__setitem__("dataset_fingerprint", "0" * 16)
    )
    _assert_user_error(
        ["influence", tmp_path / "other.h5", "--out", tmp_path / "x.h5"], capsys, "checkpoint was made for dataset"
    )
    # a mask whose n does not match the dataset
    with atomic_h5(
        tmp_path / "small.h5",
        "mask",
        {
            "mode": "cardinality",
            "target": 1.0,
            "achieved_norm": 0.0,
            "solver": "swap",
            "n": 5,
            "influence": "",
            "influence_fingerprint": "",
            "checkpoint": "",
            "dataset": "digits",
            "dataset_fingerprint": "",
            "fingerprint": "x",
        },
    ) as f:
        f["keep"] = np.ones(5, bool)
        f["keep_indices"], f["pruned_indices"] = np.arange(5), np.arange(0)
    _assert_user_error(
        ["retrain", "digits", "--mask", tmp_path / "small.h5", "--epochs", "1"],
        capsys,
        "mask was made for 5 samples but dataset 'digits' has 1438 samples",
    )
    # epsilon mode is refused if the certificate fails (simulated solver bug)
    from dpcli.errors import DpcliError
    from dpcli.select.certificate import certify

    with pytest.raises(DpcliError, match="refusing"):
        S = _S(inf)
        certify(S, np.ones(len(S), bool), epsilon=1e-12)


def test_entry_point_exit_codes(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "dpcli", "prune", str(tmp_path / "missing.h5"), "--epsilon", "0.1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"dpcli: error: {tmp_path / 'missing.h5'}: no such file"
    usage = subprocess.run([sys.executable, "-m", "dpcli", "prune"], capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    ok = subprocess.run([sys.executable, "-m", "dpcli", "--version"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("dpcli ")
