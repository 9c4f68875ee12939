"""`prune --method`: every selector through the real CLI, checked against independent computations
of its scores (plain loops, autograd), and its mask usable by retrain."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpcli.data.sources import load_dataset
from dpcli.select import solvers as selection
from dpcli.select.base import SELECTORS
from dpcli.stages.core import load_S
from dpcli.stages.masks import read_mask
from dpcli.train.checkpoint import load_checkpoint
from dpcli.train.loop import make_model
from tests.conftest import TINY, run_cli, run_json
from tests.select.quotas import class_quotas

CPU = torch.device("cpu")


def _prune(tiny_run, tmp_path, capsys, method, *extra):
    out = tmp_path / f"{method}.h5"
    summary = run_json(
        ["prune", tiny_run.influence, "--method", method, *extra, "--out", out, "--device", "cpu"], capsys
    )
    return summary, read_mask(out)


@pytest.mark.parametrize("method", [m for m in SELECTORS.names() if m not in ("el2n", "grand")])
def test_every_method_prunes_the_count_and_certifies_its_norm(tiny_run, tmp_path, capsys, method):
    summary, mask = _prune(tiny_run, tmp_path, capsys, method, "--prune-ratio", "0.4")
    S = load_S(tiny_run.influence)
    m = selection.count_from_ratio(S.shape[0], 0.4)
    assert mask.n_pruned == m and summary["n_pruned"] == m and summary["method"] == method
    assert mask.norm == pytest.approx(selection.subset_norm(S, ~mask.keep), rel=1e-9)


def _forgetting_loop(correct):
    out = []
    for i in range(correct.shape[1]):
        seq = list(correct[:, i])
        out.append(len(seq) + 1 if 1 not in seq else sum(a == 1 and b == 0 for a, b in zip(seq, seq[1:])))
    return np.array(out)


def test_forgetting_and_influence_score_masks(tiny_run, tmp_path, capsys):
    S = load_S(tiny_run.influence)
    m = 500
    _, mask = _prune(tiny_run, tmp_path, capsys, "influence-score", "--prune-count", m)
    norms = np.linalg.norm(S.astype(np.float64), axis=1)
    assert norms[~mask.keep].max() <= norms[mask.keep].min()
    with h5py.File(tiny_run.checkpoint, "r") as f:
        correct = f["dynamics/correct"][()]
    counts = _forgetting_loop(correct)
    _, mask = _prune(tiny_run, tmp_path, capsys, "forgetting", "--prune-count", m)
    assert counts[~mask.keep].max() <= counts[mask.keep].min()


def test_grand_scores_match_autograd(tiny_run):
    from dpcli.select import signals as scores

    ck = load_checkpoint(tiny_run.checkpoint)
    ds = load_dataset("digits")
    state = scores.load_dynamics(ck.path).snapshots[0]
    got = scores.grand_scores(ck, ds, [state], CPU)
    model = make_model(ck.config, ds)
    model.load_state_dict(state)
    model.eval()
    x = (
        torch.from_numpy(ds.train.images[:12]).float().permute(0, 3, 1, 2) / 255
        - torch.tensor(ds.mean).view(1, -1, 1, 1)
    ) / torch.tensor(ds.std).view(1, -1, 1, 1)
    for i in range(12):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), torch.tensor([int(ds.train.labels[i])])).backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())).item()
        assert got[i] == pytest.approx(norm, rel=1e-4)


def test_el2n_averages_the_extra_seeds(tiny_run, tmp_path, capsys):
    _, mask = _prune(
        tiny_run, tmp_path, capsys, "el2n", "--prune-count", 400, "--score-seeds", "2", "--score-epoch", "1"
    )
    ck = load_checkpoint(tiny_run.checkpoint)
    ds = load_dataset("digits")
    extra = load_checkpoint(tiny_run.checkpoint.parent / "score-runs" / "seed-1" / "checkpoint.h5")
    assert extra.epoch == 1 and extra.config.seed == ck.config.seed + 1
    from dpcli.select.signals import load_dynamics

    states = [load_dynamics(ck.path).snapshots[1], extra.state]
    x = (
        torch.from_numpy(ds.train.images).float().permute(0, 3, 1, 2) / 255 - torch.tensor(ds.mean).view(1, -1, 1, 1)
    ) / torch.tensor(ds.std).view(1, -1, 1, 1)
    onehot = F.one_hot(torch.from_numpy(ds.train.labels).long(), ds.num_classes).double()
    score = 0
    for st in states:
        model = make_model(ck.config, ds)
        model.load_state_dict(st)
        model.eval()
        with torch.no_grad():
            score = score + (torch.softmax(model(x).double(), 1) - onehot).norm(dim=1).numpy() / 2
    assert score[~mask.keep].max() <= score[mask.keep].min() + 1e-6


def test_score_rule_epsilon_mode_is_the_longest_feasible_prefix(tiny_run, tmp_path, capsys):
    S = load_S(tiny_run.influence).astype(np.float64)
    norms = np.linalg.norm(S, axis=1)
    eps = 0.5
    _, mask = _prune(tiny_run, tmp_path, capsys, "influence-score", "--epsilon", eps)
    order = np.lexsort((np.arange(len(norms)), norms))
    prefix = np.linalg.norm(np.cumsum(S[order], axis=0), axis=1)
    k = int(np.flatnonzero(prefix <= eps)[-1]) + 1
    assert mask.n_pruned == k and set(np.flatnonzero(~mask.keep)) == set(order[:k])


def test_forgetting_epsilon_mask_is_certified_and_an_overshoot_refused(tiny_run, tmp_path, capsys, monkeypatch):
    S = load_S(tiny_run.influence).astype(np.float64)
    with h5py.File(tiny_run.checkpoint, "r") as f:
        counts = _forgetting_loop(f["dynamics/correct"][()])
    order = np.lexsort((np.arange(len(counts)), counts))
    prefix = np.linalg.norm(np.cumsum(S[order], axis=0), axis=1)
    k = 40
    eps = float(prefix[k - 1]) * (1 + 1e-9)  # the first k fit (with room for summation order)
    _, mask = _prune(tiny_run, tmp_path, capsys, "forgetting", "--epsilon", eps)
    own = float(np.linalg.norm(S[~mask.keep].sum(0)))
    assert mask.n_pruned >= k and own <= eps and mask.norm == pytest.approx(own, rel=1e-9)
    assert mask.n_pruned == int(np.flatnonzero(prefix <= eps)[-1]) + 1
    # a score rule that oversteps epsilon by 20% must be refused by the certificate, not written
    import dpcli.select.base as base

    monkeypatch.setattr(base, "longest_prefix", lambda S_, s, e: np.isin(np.arange(len(s)), order[:k]))
    code, out, err = run_cli(
        [
            "prune",
            tiny_run.influence,
            "--method",
            "forgetting",
            "--epsilon",
            eps / 1.2,
            "--out",
            tmp_path / "over.h5",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 2 and out == "" and "refusing the selection" in err and "Traceback" not in err, err
    assert not (tmp_path / "over.h5").exists()


def test_covered_optimization_via_cli_and_retrain(tiny_run, tmp_path, capsys):
    _, mask = _prune(
        tiny_run,
        tmp_path,
        capsys,
        "optimization",
        "--prune-ratio",
        "0.5",
        "--balance",
        "--strata",
        "3",
        "--hard-cutoff",
        "0.05",
    )
    with h5py.File(tiny_run.influence, "r") as f:
        labels = f["labels"][()]
    sizes = np.bincount(labels).tolist()  # each class pruned by exactly its share (the cutoff is per class)
    assert np.bincount(labels[~mask.keep], minlength=len(sizes)).tolist() == class_quotas(sizes, mask.n_pruned)
    summary = run_json(["retrain", "digits", "--mask", mask.path, *TINY, "--out", tmp_path / "r.h5"], capsys)
    assert summary["n_kept"] == mask.n_kept
    ck = load_checkpoint(tmp_path / "r.h5", weights=False)
    np.testing.assert_array_equal(ck.keep_indices, mask.keep_indices)


def test_relative_hard_cutoff_prunes_the_hardest_share(tiny_run, tmp_path, capsys):
    from dpcli.select.signals import difficulty, load_dynamics

    _, mask = _prune(
        tiny_run,
        tmp_path,
        capsys,
        "optimization",
        "--prune-ratio",
        "0.4",
        "--balance",
        "--hard-cutoff",
        "0.5x",
        "--match-features",
    )
    diff = difficulty(load_dynamics(tiny_run.checkpoint))
    with h5py.File(tiny_run.influence, "r") as f:
        labels = f["labels"][()]
    for c in np.unique(labels):  # --balance: the hardest fifth of each class
        members = np.flatnonzero(labels == c)
        hardest = members[np.lexsort((members, -diff[members]))[: round(0.2 * len(members))]]
        assert (~mask.keep)[hardest].all()
    assert mask.n_pruned == selection.count_from_ratio(len(diff), 0.4)


def test_user_errors(tiny_run, tmp_path, capsys):
    for args, fragment in [
        (["--method", "herding", "--epsilon", "0.1"], "no epsilon mode"),
        (["--method", "nope", "--prune-ratio", "0.1"], "unknown --method"),
        (["--method", "random", "--balance", "--prune-ratio", "0.1"], "apply to --method auto and optimization"),
        (["--prune-ratio", "0.1", "--hard-cutoff", "lots"], "--hard-cutoff"),
        (["--epsilon", "0.1", "--hard-cutoff", "0.5x"], "relative to the prune ratio"),
    ]:
        code, out, err = run_cli(["prune", tiny_run.influence, *args, "--out", tmp_path / "x.h5"], capsys)
        assert code == 2 and out == "" and "Traceback" not in err
        assert fragment in err and err.startswith("dpcli: error:") and err.strip().count("\n") == 0, err
