"""No option silently ignored (issue 27 items 3 and 5): options that cannot act are refused by name, an external S
takes --labels (then --balance and auto's class quotas act on it), dataset-mode prune takes every option of the
stages it runs, and the summary says which selector chose the pruned set and how its class shares came out."""

from __future__ import annotations

import json
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from dpcli.stages import masks
from tests.conftest import TINY, run_cli

# train's and influence's options that dataset-mode prune does not take, and why
NOT_IN_PRUNE = {
    "--out": "prune's --out is the mask; the stages' artifacts go to the run directory",
    "--shard": "splits one influence computation over machines; dataset-mode prune computes S in one process",
    "--merge": "joins shard files, which dataset-mode prune never writes",
    "--features": "embeddings replace the dataset: `dpcli influence --features`, then prune its influence.h5",
    "--test-features": "as --features",
    "--test-labels": "as --features",
}


def _options(name: str) -> set[str]:
    import typer

    from dpcli.cli.application import app

    command = typer.main.get_command(app).commands[name]
    return {opt for p in command.params for opt in p.opts if opt.startswith("--")}


def test_dataset_mode_prune_takes_every_option_of_the_stages_it_runs():
    stages = _options("train") | _options("influence")
    assert set(NOT_IN_PRUNE) <= stages  # every exclusion names a real option
    missing = stages - set(NOT_IN_PRUNE) - _options("prune")
    assert not missing, f"prune DATASET lacks {sorted(missing)}"


def _err(args, capsys) -> str:
    code, out, err = run_cli([str(a) for a in args], capsys)
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("dpcli: error:"), (code, err)
    return lines[0]


def _external(tmp_path, rows=(20, 40, 60)):
    """An external S whose last class has near-zero rows (what an unconstrained solve prunes first), its labels
    as class names in a .txt, and the class index of every row (sorted names)."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(len(rows)), rows)
    S = rng.normal(size=(len(y), 6)).astype(np.float32)
    S[y == len(rows) - 1] *= 1e-4
    np.save(tmp_path / "S.npy", S)
    names = np.array(["cat", "dog", "eel"])[y]
    (tmp_path / "labels.txt").write_text("".join(f"{v}\n" for v in names))
    return tmp_path / "S.npy", tmp_path / "labels.txt", y


def _pruned_per_class(mask, y) -> list[int]:
    with h5py.File(mask, "r") as f:
        keep = f["keep"][()]
    return np.bincount(y[~keep], minlength=y.max() + 1).tolist()


def test_balance_on_an_external_S_with_labels_prunes_every_class_by_the_same_share(tmp_path, capsys):
    S, labels, y = _external(tmp_path)
    base = ["prune", S, "--prune-ratio", "0.5", "--method", "optimization"]
    assert "no class labels" in _err([*base, "--balance", "--out", tmp_path / "x.h5"], capsys)
    code, _, err = run_cli(
        [*map(str, base), "--balance", "--labels", str(labels), "--out", str(tmp_path / "b.h5")], capsys
    )
    assert code == 0, err
    assert _pruned_per_class(tmp_path / "b.h5", y) == [10, 20, 30]  # half of 20, 40 and 60
    code, _, err = run_cli([*map(str, base), "--out", str(tmp_path / "u.h5")], capsys)
    assert code == 0 and _pruned_per_class(tmp_path / "u.h5", y) != [10, 20, 30]  # without labels: the objective
    code, _, err = run_cli(
        ["prune", str(S), "--prune-ratio", "0.5", "--labels", str(labels), "--out", str(tmp_path / "a.h5")], capsys
    )  # auto: class quotas from the labels
    assert code == 0 and _pruned_per_class(tmp_path / "a.h5", y) == [10, 20, 30]
    assert "method auto -> chose balanced, solver swap" in err
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f.attrs["labels_file"] == str(labels.resolve())


def test_labels_are_checked_and_act_only_on_an_external_S(tiny_run, tmp_path, capsys):
    S, labels, y = _external(tmp_path)
    (tmp_path / "short.txt").write_text("cat\n" * 5)
    assert "5 labels for 120" in _err(["prune", S, "--prune-count", "3", "--labels", tmp_path / "short.txt"], capsys)
    line = _err(["prune", tiny_run.influence, "--prune-count", "3", "--labels", labels], capsys)
    assert "--labels has no effect here" in line and "external S" in line
    with h5py.File(tmp_path / "own.h5", "w") as f:
        f["S"], f["labels"] = np.load(S), y
    assert "keep one of them" in _err(["prune", tmp_path / "own.h5", "--prune-count", "3", "--labels", labels], capsys)


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--epochs", "3"], "--epochs has no effect here"),
        (["--estimator", "cg", "--cg-tol", "1e-4"], "--estimator, --cg-tol have no effect here"),
        (["--run-root", "elsewhere"], "--run-root has no effect here"),
        (["--freeze-backbone"], "--freeze-backbone has no effect here"),
        (["--link-kind", "hard"], "--link-kind has no effect here"),
        (["--workers", "2"], "--workers has no effect here"),
        (["--method", "random", "--solver", "anneal"], "--method random does not run a solver"),
        (["--method", "optimization", "--score-seeds", "5"], "they tune el2n and grand"),
    ],
)
def test_options_that_cannot_act_on_an_influence_file_are_refused(tiny_run, tmp_path, capsys, extra, fragment):
    line = _err(["prune", tiny_run.influence, "--prune-count", "3", "--out", tmp_path / "m.h5", *extra], capsys)
    assert fragment in line
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--data-root", "somewhere"], "no dataset to read"),
        (["--strata", "4"], "training loss"),
        (["--method", "forgetting"], "needs the dynamics of a dpcli training run"),
        (["--arch", "resnet18"], "SOURCE is an external S"),
    ],
)
def test_options_that_need_what_an_external_S_lacks_are_refused(tmp_path, capsys, extra, fragment):
    S, _, _ = _external(tmp_path)
    assert fragment in _err(["prune", S, "--prune-count", "3", "--out", tmp_path / "m.h5", *extra], capsys)


def test_dataset_mode_prune_takes_freeze_backbone(tmp_path, capsys):
    from dpcli.data.embeddings import is_embeddings_run

    args = [
        "prune",
        "digits",
        "--freeze-backbone",
        "--arch",
        "convnet",
        "--width",
        "4",
        "--depth",
        "1",
        "--device",
        "cpu",
        "--prune-ratio",
        "0.3",
        "--method",
        "optimization",
        "--run-root",
        tmp_path / "runs",
    ]
    assert "--freeze-backbone fits the last layer" in _err([*args, "--epochs", "2"], capsys)
    code, out, err = run_cli([*map(str, args), "--json", "--quiet"], capsys)
    assert code == 0, err
    res = json.loads(out)
    mask = masks.read_mask(res["mask"])
    assert is_embeddings_run(mask.influence) and res["freeze_backbone"] is True
    assert mask.n == 1438 and mask.n_pruned == round(0.3 * 1438)


def test_the_summary_names_the_selector_and_a_skewed_class_share(tmp_path, capsys):
    S, labels, y = _external(tmp_path)
    with pytest.warns(UserWarning, match="more than 2x away") as warned:
        code, out, err = run_cli(
            [
                "prune",
                str(S),
                "--prune-ratio",
                "0.4",
                "--method",
                "optimization",
                "--labels",
                str(labels),
                "--out",
                str(tmp_path / "m.h5"),
                "--json",
            ],
            capsys,
        )
    assert code == 0, err
    message = " ".join(str(w.message) for w in warned)
    with h5py.File(tmp_path / "m.h5", "r") as f:
        keep = f["keep"][()]
        recorded = json.loads(f.attrs["class_shares"])
    kept, train = np.bincount(y[keep], minlength=3), np.bincount(y, minlength=3)
    ratio = (kept / kept.sum()) / (train / train.sum())  # the recount
    flagged = [c for c in range(3) if ratio[c] < 0.5 or ratio[c] > 2]
    assert flagged == [2] and sorted(recorded) == ["2"]
    assert recorded["2"] == {"train": int(train[2]), "kept": int(kept[2]), "ratio": pytest.approx(ratio[2])}
    assert (
        f"class 2 at {ratio[2]:.2f}x ({kept[2]} of {kept.sum()} kept, {train[2]} of {train.sum()} in training)"
        in message
    )
    assert (
        "method optimization, solver swap" in err and json.loads(out)["selector"] == "method optimization, solver swap"
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # balanced: no share strays, so no warning
        code, _, err = run_cli(
            [
                "prune",
                str(S),
                "--prune-ratio",
                "0.4",
                "--method",
                "optimization",
                "--balance",
                "--labels",
                str(labels),
                "--out",
                str(tmp_path / "b.h5"),
            ],
            capsys,
        )
    assert code == 0, err


def test_selector_text_says_what_auto_chose():
    from dpcli.cli.prune import selector_text

    def mask(method, solver, chosen=None):
        return SimpleNamespace(method=method, solver=solver, auto=None if chosen is None else {"chosen": chosen})

    assert selector_text(mask("auto", "dual-beta", "dual-beta")) == "method auto -> chose dual-beta"
    assert selector_text(mask("auto", "swap", "strata")) == "method auto -> chose strata, solver swap"
    assert selector_text(mask("herding", "herding")) == "method herding"


def test_tiny_digits_summary_line(tiny_run, tmp_path, capsys):
    code, _, err = run_cli(
        ["prune", str(tiny_run.influence), "--prune-ratio", "0.3", "--out", str(tmp_path / "m.h5"), *TINY[-2:]], capsys
    )
    assert code == 0, err
    assert "method auto -> chose " in err and "solver dual-beta" not in err


def test_retrain_and_verify_bound_refuse_the_pruning_options_a_given_mask_leaves_unused(tiny_run, tmp_path, capsys):
    mask = tmp_path / "m.h5"
    code, _, err = run_cli(
        ["prune", str(tiny_run.influence), "--prune-count", "5", "--method", "random", "--out", str(mask)], capsys
    )
    assert code == 0, err
    line = _err(["retrain", "digits", "--mask", mask, "--prune-ratio", "0.3", "--solver", "anneal"], capsys)
    assert "--prune-ratio, --solver have no effect here" in line
    assert "--time-budget has no effect here" in _err(
        ["verify-bound", "digits", "--mask", mask, "--time-budget", "5"], capsys
    )


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--freeze-backbone", "--epochs", "2"], "--epochs has no effect here: --freeze-backbone fits the last layer"),
        (["--freeze-backbone", "--lr", "0.1", "--snapshot-epochs", "1"], "--lr, --snapshot-epochs have no effect here"),
        (
            ["--damping", "0.01", "--tol", "1e-5"],
            "--damping, --tol have no effect here: they set the --freeze-backbone",
        ),
        (["--freeze-backbone", "--max-iter", "0"], "--max-iter must be a positive integer"),
    ],
)
def test_train_refuses_options_its_path_would_leave_unused(tmp_path, capsys, extra, fragment):
    assert fragment in _err(["train", "digits", "--run-root", tmp_path / "runs", *extra], capsys)
    assert not (tmp_path / "runs").exists()


def test_the_head_fit_options_reach_the_frozen_backbone_fit(tmp_path, capsys):
    """train --freeze-backbone --max-iter/--tol set the head fit that S is taken at (recorded in influence.h5)."""
    args = [
        "train",
        "digits",
        "--freeze-backbone",
        "--arch",
        "convnet",
        "--width",
        "4",
        "--depth",
        "1",
        "--device",
        "cpu",
        "--run-root",
        tmp_path / "runs",
        "--json",
    ]
    code, out, err = run_cli([*map(str, args), "--max-iter", "1", "--tol", "1e-12"], capsys)
    assert code == 0, err
    with h5py.File(json.loads(out)["influence"], "r") as f:
        assert f.attrs["head_max_iter"] == 1 and f.attrs["head_tol"] == 1e-12
        assert f.attrs["head_iterations"] == 1 and f.attrs["head_grad_norm"] > 1e-12
    assert "raise --max-iter" in err  # a fit stopped short says what to do
    assert "--max-iter has no effect here" in _err(
        ["prune", "digits", "--max-iter", "3", "--prune-ratio", "0.3", "--run-root", tmp_path / "runs"], capsys
    )
