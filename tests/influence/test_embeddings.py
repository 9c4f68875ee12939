"""The embeddings / frozen-backbone path: exact head fit, S against leave-one-out refits, the sketch-first
solve, the CLI end to end on generated and on shipped data, external S, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dpcli.artifacts.rows import mapped_rows
from dpcli.config import InfluenceConfig
from dpcli.data import embeddings as D
from dpcli.errors import DpcliError
from dpcli.influence import head as H
from dpcli.influence.sketch import Sketch
from dpcli.stages import embeddings as E
from dpcli.stages import heads
from tests.conftest import run_cli


def blobs(n: int, dim: int, c: int, seed: int = 0, sep: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[np.arange(n), y % dim] += sep
    return x, y


def theta(head: H.HeadFit) -> np.ndarray:
    return torch.cat([head.weight.reshape(-1), head.bias]).numpy()


def test_S_matches_leave_one_out_refits():
    """S_i = (1/n) H^-1 g_i against the actual change of the optimum when sample i is removed (weight -1/n:
    the refit of the same objective, (1/n) sum_kept CE + lam/2 ||theta||^2)."""
    n, lam = 60, 1e-2
    x, y = blobs(n, 4, 3)
    emb = D.from_arrays(x, y)
    S, head = E.influence_in_memory(emb, InfluenceConfig(estimator="exact"), damping=lam)
    assert head.grad_norm <= H.DEFAULT_TOL
    idx = np.arange(0, n, 5)
    loo = []
    for i in idx:
        keep = np.ones(n, dtype=bool)
        keep[i] = False
        loo.append(theta(heads.refit(emb, keep, lam).head) - theta(head))
    loo = np.array(loo)
    corr = np.corrcoef(loo.ravel(), S[idx].ravel())[0, 1]
    rel = np.linalg.norm(loo - S[idx]) / np.linalg.norm(loo)
    assert corr > 0.99, corr
    assert rel < 0.25, rel  # first-order error at n = 60; measured 0.19 (it shrinks ~1/n: 0.05 at n = 300)


def test_sketch_first_solve_equals_S_times_R(tmp_path):
    x, y = blobs(90, 5, 3, seed=2)
    emb = D.from_arrays(x, y)
    S, head = E.influence_in_memory(emb, InfluenceConfig(estimator="exact"), damping=1e-2)
    out = tmp_path / "sk.h5"
    E.embeddings_influence(
        emb, out, InfluenceConfig(estimator="cg", sketch_k=7, sketch_seed=3, cg_tol=1e-10), damping=1e-2
    )
    with h5py.File(out, "r") as f:
        sk = f["S"][()]
        assert f.attrs["solver"] == "cg-sketch"
    R = Sketch(S.shape[1], 7, 3).matrix()
    np.testing.assert_allclose(sk, S.astype(np.float64) @ R, rtol=1e-3, atol=1e-7)
    with h5py.File(out, "r") as f:  # stored contiguously: prune maps it
        np.testing.assert_array_equal(mapped_rows(f["S"]), sk)


def _write(tmp_path, name, arr):
    p = tmp_path / name
    np.save(p, arr)
    return p


def test_cli_end_to_end_on_generated_features(tmp_path, capsys):
    x, y = blobs(150, 5, 3, seed=4)
    xt, yt = blobs(60, 5, 3, seed=5)
    f, lab = _write(tmp_path, "f.npy", x), _write(tmp_path, "l.npy", y)
    tf, tl = _write(tmp_path, "tf.npy", xt), _write(tmp_path, "tl.npy", yt)
    inf = tmp_path / "influence.h5"
    code, out, err = run_cli(
        [
            "influence",
            "--features",
            f,
            "--labels",
            lab,
            "--test-features",
            tf,
            "--test-labels",
            tl,
            "--damping",
            "0.01",
            "--out",
            inf,
            "--json",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    with h5py.File(inf, "r") as h:
        lineage = json.loads(h.attrs["lineage"])
        assert lineage["features_sha256"] == D.file_sha256(f) and lineage["labels"] == str(f.with_name("l.npy"))
        S = h["S"][()]
    assert S.shape == (150, 3 * 6)
    mask = tmp_path / "mask.h5"
    code, out, err = run_cli(["prune", inf, "--epsilon", "0.05", "--out", mask, "--json", "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    with h5py.File(mask, "r") as h:
        keep = h["keep"][()]
    norm = float(np.linalg.norm(S[~keep].astype(np.float64).sum(0)))
    assert norm <= 0.05 and abs(norm - summary["achieved_norm"]) < 1e-9 and summary["n_pruned"] > 0
    code, out, err = run_cli(["retrain", f, "--mask", mask, "--json", "--quiet"], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["head_grad_norm"] < 1e-6
    # the refit equals one from scratch of the same objective on the kept rows alone: (1/n) sum_kept CE +
    # lam/2 ||theta||^2 is their mean CE with L2 lam n / n_kept
    ref = heads.refit(
        D.from_arrays(x[keep], y[keep], xt, yt, num_classes=3), np.ones(keep.sum(), bool), 0.01 * 150 / keep.sum()
    )
    # both fits stop at ||grad|| <= 1e-7 with curvature >= the L2 (~0.08): their optima agree to ~1e-6 in theta, so
    # the losses to well under 1e-6; the mean-CE objective (L2 lam, not lam n / n_kept) is ~1e-2 away
    assert abs(metrics["test_loss"] - ref.test_loss) < 1e-6
    code, out, err = run_cli(
        ["verify-bound", inf, "--mask", mask, "--out", tmp_path / "vb", "--json", "--quiet"], capsys
    )
    assert code == 0, err
    rows = json.loads(out)["rows"]
    full = heads.refit(D.from_arrays(x, y, xt, yt), np.ones(150, bool), 0.01)
    assert rows[0]["n_pruned"] == summary["n_pruned"]
    assert abs(rows[0]["observed_gap"] - (ref.test_loss - full.test_loss)) < 1e-6  # no seed noise: fit tolerance only
    assert abs(rows[0]["norm"] - norm) < 1e-6 and rows[1]["label"].startswith("random")


def _independent_fit(x: np.ndarray, y: np.ndarray, c: int, lam: float) -> np.ndarray:
    """Newton on mean CE + lam/2 ||[W, b]||^2 with autograd's gradient and Hessian (none of dpcli's kernels)."""
    xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y)
    dim = x.shape[1]

    def f(t):
        logits = xt @ t[: c * dim].reshape(c, dim).T + t[c * dim :]
        return torch.nn.functional.cross_entropy(logits, yt) + 0.5 * lam * t.pow(2).sum()

    t = torch.zeros(c * (dim + 1), dtype=torch.float64)
    for _ in range(30):
        g = torch.autograd.functional.jacobian(f, t)
        t = t - torch.linalg.solve(torch.autograd.functional.hessian(f, t), g)
    assert float(torch.autograd.functional.jacobian(f, t).norm()) < 1e-12
    return t.numpy()


def test_retrain_writes_a_checkpoint_equal_to_an_independent_refit(tmp_path, capsys):
    """retrain on an embeddings run: a checkpoint artifact (atomic, lineage, keep indices) holding the head
    refitted on the kept rows; equal to an independent Newton refit; verify-bound reuses it."""
    from dpcli.train.checkpoint import load_checkpoint

    lam = 0.02
    x, y = blobs(120, 4, 3, seed=8)
    xt, yt = blobs(50, 4, 3, seed=9)
    f, lab = _write(tmp_path, "f.npy", x), _write(tmp_path, "l.npy", y)
    tf, tl = _write(tmp_path, "tf.npy", xt), _write(tmp_path, "tl.npy", yt)
    inf, mask = tmp_path / "influence.h5", tmp_path / "mask.h5"
    assert run_cli(
        [
            "influence",
            "--features",
            f,
            "--labels",
            lab,
            "--test-features",
            tf,
            "--test-labels",
            tl,
            "--damping",
            lam,
            "--out",
            inf,
            "--quiet",
        ]
    ) == (0, "", "")
    assert run_cli(["prune", inf, "--prune-ratio", "0.25", "--out", mask, "--quiet"]) == (0, "", "")
    with h5py.File(mask, "r") as h:
        keep = h["keep"][()]
        mask_fp = h.attrs["fingerprint"]
    code, out, err = run_cli(["retrain", f, "--mask", mask, "--json", "--quiet"], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    ck = load_checkpoint(metrics["checkpoint"])  # the same reader as every other checkpoint
    assert ck.complete and ck.config.subset == mask_fp and ck.lineage["mask_fingerprint"] == mask_fp
    assert ck.lineage["features_sha256"] == D.file_sha256(f) and ck.n_train == 120 and ck.num_classes == 3
    np.testing.assert_array_equal(ck.keep_indices, np.flatnonzero(keep))
    want = _independent_fit(x[keep], y[keep], 3, lam * 120 / keep.sum())  # (1/n) sum_kept CE + lam/2 ||theta||^2
    got = torch.cat([ck.state["head.weight"].reshape(-1), ck.state["head.bias"]]).numpy()
    # strong convexity (Hessian >= lam I): ||theta - theta*|| <= ||grad|| / lam, the solver's stopping point
    assert np.linalg.norm(got - want) <= metrics["head_grad_norm"] / lam + 1e-12 and metrics["head_grad_norm"] < 1e-7
    assert metrics["l2_over_kept_mean"] == pytest.approx(lam * 120 / keep.sum())
    logits = xt.astype(np.float64) @ want[:12].reshape(3, 4).T + want[12:]
    loss = float(np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(50), yt]))
    acc = 100.0 * float(np.mean(logits.argmax(1) == yt))
    assert abs(metrics["test_loss"] - loss) < 1e-6 and metrics["test_accuracy"] == pytest.approx(acc, abs=1e-9)
    assert ck.final.test_loss == metrics["test_loss"] and ck.final.test_acc == metrics["test_accuracy"]
    full = _independent_fit(x, y, 3, lam)  # the full-data optimum comes from influence.h5's theta
    assert metrics["parameter_change"] == pytest.approx(float(np.linalg.norm(want - full)), abs=1e-5)
    # verify-bound refits the same mask through the same artifact: reused, not recomputed
    before = Path(metrics["checkpoint"]).stat().st_mtime_ns
    code, out, err = run_cli(["verify-bound", inf, "--mask", mask, "--out", tmp_path / "vb", "--json"], capsys)
    assert code == 0, err
    assert f"reusing {metrics['checkpoint']}" in err and Path(metrics["checkpoint"]).stat().st_mtime_ns == before
    assert json.loads(out)["rows"][0]["test_loss"] == metrics["test_loss"]
    # another mask into the same --out is refitted, not mistaken for the artifact already there
    assert run_cli(["prune", inf, "--prune-ratio", "0.5", "--out", tmp_path / "m50.h5", "--quiet"]) == (0, "", "")
    code, out, err = run_cli(
        ["retrain", f, "--mask", tmp_path / "m50.h5", "--out", metrics["checkpoint"], "--json", "--quiet"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["n_kept"] == 60 and len(load_checkpoint(metrics["checkpoint"]).keep_indices) == 60
    _bad(tmp_path, capsys, ["retrain", f, "--mask", mask, "--out", tmp_path / "head.npz"], "ending in .h5")


def test_cli_on_shipped_digits_pixels(tmp_path, capsys):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)[:400]
    f, lab = tmp_path / "digits.npz", tmp_path / "labels.npy"
    np.savez(f, features=x)
    np.save(lab, y[:400])
    inf = tmp_path / "influence.h5"
    code, _, err = run_cli(["influence", "--features", f, "--labels", lab, "--out", inf, "--quiet"], capsys)
    assert code == 0, err
    code, out, err = run_cli(
        ["prune", inf, "--prune-ratio", "0.2", "--out", tmp_path / "m.h5", "--json", "--quiet"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["n_pruned"] == 80


@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_prune_external_S_is_certified_from_S(tmp_path, capsys, fmt):
    rng = np.random.default_rng(7)
    S = rng.normal(size=(40, 6)).astype(np.float32) / 100
    if fmt == "npy":
        src = _write(tmp_path, "S.npy", S)
    else:
        src = tmp_path / "S.h5"
        with h5py.File(src, "w") as h:
            h.create_dataset("S", data=S, chunks=(8, 6))
    mask = tmp_path / "mask.h5"
    code, out, err = run_cli(["prune", src, "--epsilon", "0.01", "--out", mask, "--json"], capsys)
    assert code == 0, err
    assert "no lineage known" in err
    summary = json.loads(out)
    with h5py.File(mask, "r") as h:
        keep = h["keep"][()]
        assert "no lineage known" in h.attrs["lineage"]
    norm = float(np.linalg.norm(S[~keep].astype(np.float64).sum(0)))
    assert norm <= 0.01 and abs(norm - summary["achieved_norm"]) < 1e-9 and (~keep).sum() > 0


def _bad(tmp_path, capsys, args, what):
    before = set(tmp_path.rglob("*"))
    code, out, err = run_cli(args, capsys)
    assert code == 2, (code, err)
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("dpcli: error:") and what in lines[0], err
    assert not any(p.suffix in (".h5", ".npz") for p in set(tmp_path.rglob("*")) - before)


def test_bad_feature_inputs(tmp_path, capsys):
    x, y = blobs(30, 3, 3)
    good_f, good_l = _write(tmp_path, "f.npy", x), _write(tmp_path, "l.npy", y)
    nan = x.copy()
    nan[3, 1] = np.nan
    cases = [
        (_write(tmp_path, "nan.npy", nan), good_l, "NaN or inf"),
        (_write(tmp_path, "inf.npy", np.where(x > 2, np.inf, x)), good_l, "NaN or inf"),
        (good_f, _write(tmp_path, "short.npy", y[:-1]), "same length"),
        (_write(tmp_path, "flat.npy", x[:, 0]), good_l, "must be 2-D"),
        (good_f, _write(tmp_path, "neg.npy", y - 1), "labels must lie in"),
        (good_f, _write(tmp_path, "frac.npy", y + 0.5), "integer class indices"),
    ]
    for f, lab, what in cases:
        _bad(tmp_path, capsys, ["influence", "--features", f, "--labels", lab, "--out", tmp_path / "i.h5"], what)
    _bad(
        tmp_path,
        capsys,
        [
            "influence",
            "--features",
            good_f,
            "--labels",
            good_l,
            "--test-features",
            good_f,
            "--test-labels",
            _write(tmp_path, "big.npy", y + 3),
            "--out",
            tmp_path / "i.h5",
        ],
        "labels must lie in 0..2",
    )


def test_class_names_as_labels_give_the_S_of_their_sorted_indices(tmp_path, capsys):
    """Text and audio pipelines store labels as names: npy strings, h5 bytes and h5py's variable-length
    strings all equal the integer labels of the sorted names, through influence, prune and retrain."""
    x, y = blobs(90, 4, 3, seed=6)
    xt, yt = blobs(30, 4, 3, seed=7)
    names = np.array(["spam", "ham", "eggs"])  # sorted: eggs=0, ham=1, spam=2
    as_index = {"eggs": 0, "ham": 1, "spam": 2}
    y_int = np.array([as_index[v] for v in names[y]])
    yt_int = np.array([as_index[v] for v in names[yt]])
    f, ft = _write(tmp_path, "f.npy", x), _write(tmp_path, "ft.npy", xt)
    with h5py.File(tmp_path / "lb.h5", "w") as h:
        h["labels"] = names[y].astype("S")
    with h5py.File(tmp_path / "lv.h5", "w") as h:
        h.create_dataset("labels", data=names[y].tolist(), dtype=h5py.string_dtype())
    from dpcli.stages.core import load_S

    ref = tmp_path / "ref.h5"
    assert (
        run_cli(
            [
                "influence",
                "--features",
                f,
                "--labels",
                _write(tmp_path, "li.npy", y_int),
                "--test-features",
                ft,
                "--test-labels",
                _write(tmp_path, "lti.npy", yt_int),
                "--out",
                ref,
                "--quiet",
            ]
        )[0]
        == 0
    )
    S_ref = load_S(ref)
    for labels in (_write(tmp_path, "ls.npy", names[y]), tmp_path / "lb.h5", tmp_path / "lv.h5"):
        out = tmp_path / f"{labels.stem}-inf.h5"
        assert (
            run_cli(
                [
                    "influence",
                    "--features",
                    f,
                    "--labels",
                    labels,
                    "--test-features",
                    ft,
                    "--test-labels",
                    _write(tmp_path, "lts.npy", names[yt]),
                    "--out",
                    out,
                    "--quiet",
                ]
            )[0]
            == 0
        )
        np.testing.assert_array_equal(load_S(out), S_ref)
        with h5py.File(out, "r") as h:
            from dpcli.artifacts.h5 import get_attr

            assert get_attr(h, "class_names") == ["eggs", "ham", "spam"] and get_attr(h, "num_classes") == 3
    mask = tmp_path / "m.h5"
    assert run_cli(["prune", out, "--prune-count", "30", "--out", mask, "--quiet"])[0] == 0
    code, out_text, err = run_cli(["retrain", f, "--mask", mask, "--json"], capsys)
    assert code == 0, err
    _bad(
        tmp_path,
        capsys,
        [
            "influence",
            "--features",
            f,
            "--labels",
            labels,
            "--test-features",
            ft,
            "--test-labels",
            _write(tmp_path, "ltx.npy", np.where(yt == 0, "toast", names[yt])),
            "--out",
            tmp_path / "i.h5",
        ],
        "class 'toast' does not occur in the training labels",
    )
    _bad(
        tmp_path,
        capsys,
        [
            "influence",
            "--features",
            f,
            "--labels",
            _write(tmp_path, "lo.npy", names[y].astype(object)),
            "--out",
            tmp_path / "i.h5",
        ],
        "stored as Python objects",
    )


def test_retrain_with_wrong_n_and_external_S_errors(tmp_path, capsys):
    S = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    _bad(
        tmp_path,
        capsys,
        [
            "prune",
            _write(tmp_path, "S.npy", np.where(S > 2, np.nan, S)),
            "--prune-count",
            "5",
            "--out",
            tmp_path / "m.h5",
        ],
        "NaN or inf",
    )
    assert run_cli(
        ["prune", _write(tmp_path, "S2.npy", S), "--prune-count", "5", "--out", tmp_path / "m2.h5", "--quiet"]
    ) == (0, "", "")
    # digits has 1438 training samples (a fixed split): an S of 50 rows cannot be its mask
    _bad(
        tmp_path,
        capsys,
        ["retrain", "digits", "--mask", tmp_path / "m2.h5", "--epochs", "1", "--device", "cpu", "--quiet"],
        "mask was made for 50 samples but dataset 'digits' has 1438",
    )
    with pytest.raises(DpcliError, match="1-D"):
        D.check_labels(np.zeros((3, 2)), 3, None, "labels")


def test_labels_that_leave_class_indices_unused_are_refused_unless_declared():
    """Labels that are IDs (0, 3, 6) would make C = max + 1 = 7 last-layer classes, four of them without a sample:
    an error (a stray label 99 among 0..9 would build a 100-class S), a warning where C is declared; one class
    is always refused (its S is zero)."""
    x, y = blobs(30, 3, 3)
    with pytest.raises(
        DpcliError, match=r"the labels use 3 of the 7 class indices 0\.\.6 \(none is 1; the largest is 6\)"
    ):
        D.from_arrays(x, y * 3)
    with pytest.warns(UserWarning, match=r"dpcli: the labels use 3 of the 7 class indices 0\.\.6"):
        emb = D.from_arrays(x, y * 3, num_classes=7)
    assert emb.num_classes == 7
    with pytest.raises(DpcliError, match="every sample has class 0; pruning needs at least two classes"):
        D.from_arrays(x, np.zeros_like(y))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # indices 0..C-1 and class names: no warning
        D.from_arrays(x, y)
        D.from_arrays(x, np.array(["a", "b", "c"])[y])


def test_head_fit_options_on_the_command_line(tmp_path, capsys):
    """--max-iter / --tol reach the head fit and are recorded; a fit stopped short says what to do; bad values
    and the options without --features are refused in one line, before any file is written."""
    x, y = blobs(150, 5, 3, seed=4)
    f, lab = _write(tmp_path, "f.npy", x), _write(tmp_path, "l.npy", y)
    out = tmp_path / "short.h5"
    code, _, err = run_cli(["influence", "--features", f, "--labels", lab, "--max-iter", "1", "--out", out], capsys)
    assert code == 0, err
    with h5py.File(out, "r") as h:
        gn, steps = float(h.attrs["head_grad_norm"]), int(h.attrs["head_iterations"])
        assert steps == 1 and int(h.attrs["head_max_iter"]) == 1 and float(h.attrs["head_tol"]) == H.DEFAULT_TOL
    assert gn > H.DEFAULT_TOL and f"gradient norm {gn:.3g} > --tol 1e-07 after 1 Newton steps" in err
    assert "raise --max-iter" in err
    code, _, err = run_cli(
        ["influence", "--features", f, "--labels", lab, "--tol", "1e-3", "--out", tmp_path / "t.h5", "--quiet"], capsys
    )
    assert code == 0 and "stopped" not in err
    with h5py.File(tmp_path / "t.h5", "r") as h:
        assert float(h.attrs["head_grad_norm"]) <= 1e-3 < gn and float(h.attrs["head_tol"]) == 1e-3
    for args, what in (
        (["--max-iter", "0"], "--max-iter must be a positive integer"),
        (["--tol", "-1"], "--tol must be a positive number"),
    ):
        _bad(tmp_path, capsys, ["influence", "--features", f, "--labels", lab, *args, "--out", tmp_path / "i.h5"], what)
    _bad(
        tmp_path,
        capsys,
        ["influence", tmp_path / "ck.h5", "--tol", "1e-3", "--out", tmp_path / "i.h5"],
        "--max-iter and --tol set the head fit of --features",
    )


def test_verify_bound_shows_the_refit_agrees_with_S_to_second_order(tmp_path, capsys):
    """S predicts the refit of its own objective: ||sum S - delta theta|| is second order, so it shrinks
    quadratically with the pruned share (x4 per doubling on nested random sets) and is a small part of the
    change itself; against the mean-CE refit (the full run's L2 on the kept rows' mean) it would be first order
    (x2 per doubling: 0.0055, 0.011, 0.027 at 2.5, 5 and 10 % here)."""
    from dpcli.select.certificate import certify
    from dpcli.stages.core import load_S, read_influence_info
    from dpcli.stages.masks import write_mask

    n, lam = 600, 1e-2
    x, y = blobs(n, 5, 3)
    xt, yt = blobs(200, 5, 3, seed=1)
    inf = tmp_path / "influence.h5"
    files = [_write(tmp_path, name, a) for name, a in (("f.npy", x), ("l.npy", y), ("tf.npy", xt), ("tl.npy", yt))]
    assert run_cli(
        [
            "influence",
            "--features",
            files[0],
            "--labels",
            files[1],
            "--test-features",
            files[2],
            "--test-labels",
            files[3],
            "--damping",
            lam,
            "--out",
            inf,
            "--quiet",
        ]
    ) == (0, "", "")
    info, S = read_influence_info(inf), load_S(inf)
    order = np.random.default_rng(1).permutation(n)
    masks = []
    for m in (15, 30, 60):  # nested random sets: 2.5, 5 and 10 % pruned
        pruned = np.zeros(n, dtype=bool)
        pruned[order[:m]] = True
        masks.append(
            write_mask(
                tmp_path / f"m{m}.h5",
                certify(S, pruned),
                mode="cardinality",
                target=float(m),
                solver="test",
                info=info,
                config={"count": m},
                seconds=0.0,
                method="test",
            ).path
        )
    code, out, err = run_cli(
        ["verify-bound", inf, *[a for p in masks for a in ("--mask", p)], "--out", tmp_path / "vb", "--json"], capsys
    )
    assert code == 0, err
    rows = [r for r in json.loads(out)["rows"] if r["method"] == "test"]
    res = [r["first_order_residual"] for r in rows]
    for r in rows:  # measured: 0.0007 of 0.032, 0.0029 of 0.062, 0.0105 of 0.10
        assert r["first_order_residual"] < 0.12 * r["parameter_change"]
        assert abs(r["norm"] - r["parameter_change"]) <= res[-1]
    assert res[1] / res[0] > 3 and res[2] / res[1] > 3, res  # measured 4.2 and 3.6: quadratic
    assert f"parameters moved {rows[0]['parameter_change']:.4g}, predicted {rows[0]['norm']:.4g}" in err


def _freeze(tmp_path, device):
    from dpcli.data.sources import load_dataset
    from tests.conftest import tiny_config

    return E.freeze_backbone(
        tiny_config(), load_dataset("digits"), tmp_path, device=device, icfg=InfluenceConfig().validate()
    )


def test_freeze_backbone_fits_and_solves_on_its_device(tmp_path, monkeypatch):
    """The head fit and the influence solve of --freeze-backbone run on the device the features came from."""
    seen = []
    real = E.fit_embeddings

    def spy(emb, damping, **kw):
        seen.append(kw["device"])
        return real(emb, damping, **kw)

    monkeypatch.setattr(E, "fit_embeddings", spy)
    dev = torch.device("cpu")
    info = _freeze(tmp_path, dev)
    assert seen == [dev] and seen[0] is dev and info.n == 1438  # handed on, not replaced by a CPU device of its own


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_embeddings_on_cuda_match_the_cpu(tmp_path):
    from dpcli.stages.core import load_S

    x, y = blobs(500, 16, 4, seed=11)
    emb = D.from_arrays(x, y)
    S_cpu, h_cpu = E.influence_in_memory(emb, InfluenceConfig(estimator="exact"), damping=1e-2)
    S_gpu, h_gpu = E.influence_in_memory(emb, InfluenceConfig(estimator="exact"), damping=1e-2, device="cuda")
    assert h_gpu.weight.device.type == "cuda" and h_gpu.grad_norm <= H.DEFAULT_TOL
    torch.testing.assert_close(h_gpu.weight.cpu(), h_cpu.weight, atol=1e-7 / 1e-2, rtol=0)
    np.testing.assert_allclose(S_gpu, S_cpu, rtol=1e-4, atol=1e-7 * np.abs(S_cpu).max())
    a = load_S(_freeze(tmp_path / "cpu", torch.device("cpu")).path)
    b = load_S(_freeze(tmp_path / "gpu", torch.device("cuda")).path)
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5 * np.abs(a).max())
