"""``--method auto``: the regime it picks on problems whose right answer is known, its validation
scores against a plain re-fit, determinism, and the fallbacks to the paper's objective."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import dpcli.api as dp
from dpcli.config import PruneConfig
from dpcli.errors import DpcliError
from dpcli.select.base import Context
from dpcli.select.linalg import count_from_ratio
from dpcli.select.methods import auto
from dpcli.select.methods.random_stratified import stratified_prune
from dpcli.select.registry import SELECTORS
from tests.conftest import run_cli
from tests.select.quotas import class_quotas


def _problem(n: int, dim: int, classes: int, noise: float, sep: float, seed: int):
    """Gaussian classes; ``noise`` of the labels redrawn at random."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(classes, dim)) * sep
    y = rng.integers(0, classes, n)
    x = mu[y] + rng.normal(size=(n, dim))
    flip = rng.random(n) < noise
    y[flip] = rng.integers(0, classes, int(flip.sum()))
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def rich():
    """Abundant, separable data (many samples per dimension, clean labels): every kept set's head scores
    the same on the held-out part, so the choice is a tie that the grid's table resolves."""
    x, y = _problem(1200, 4, 3, 0.0, 4.0, 0)
    S, _ = dp.influence(x, y)
    return x, y, S


@pytest.fixture(scope="module")
def scarce():
    """Scarce, noisy data (30 % random labels, 80 % pruned, 120 kept for 20 dimensions): the pure
    objective keeps the hardest samples, mostly mislabelled ones, and coverage must win."""
    x, y = _problem(750, 20, 3, 0.3, 1.0, 1)
    S, _ = dp.influence(x, y)
    return x, y, S


ALL = ("balanced", "pure", "strata", "strata+cutoff", "strata+cutoff+features", "dual-beta", "random-stratified")


def _spread(a, b):
    """Z standard errors (points) of the paired difference, written out."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return auto.Z * 100 * np.sqrt(((d - d.mean()) ** 2).sum() / (len(d) - 1)) / np.sqrt(len(d))


def test_rich_separable_is_a_tie_that_the_grid_table_resolves(rich):
    x, y, S = rich
    sel = dp.prune(S, prune_ratio=0.5, labels=y, features=x)
    rec = sel.auto
    names = [c["name"] for c in rec["candidates"]]
    assert names == [n for n in ALL if n != "dual-beta"]
    assert rec["skipped"] == {"dual-beta": "no training dynamics"} and rec["decided_by"] == "validation"
    # recomputed from the validation's own kept sets: the best eligible, the candidates within its noise
    ctx = Context(S=S, labels=y)
    v = auto.validate(ctx, PruneConfig(ratio=0.5, seed=0), sel.n_pruned, x, auto._difficulty(ctx, x)[0])
    ok = [s for s in v.scores if s.lost == 0 and s.short == 0]
    best = max(ok, key=lambda s: s.accuracy)
    tied = [s.name for s in ok if best.accuracy - s.accuracy <= _spread(best.correct, s.correct)]
    assert len(tied) >= 3 and [c["name"] for c in rec["candidates"] if c["tied"]] == tied
    expected = next(n for n in auto.TIE_ORDER[0.5] if n in tied)
    assert rec["chosen"] == expected and f"{expected} (" in rec["line"] and "retrained best in the grid" in rec["line"]
    ref = dp.prune(S, prune_ratio=0.5, labels=y, method=expected, solver_seed=0)
    assert np.array_equal(sel.keep, ref.keep)


def test_the_objective_alone_is_checked_for_class_shares_not_forced(rich):
    """Unforced, the objective alone keeps under half its share of one class here: it is scored, recorded as
    short and never chosen; the count is redone from its own selection on the fit part."""
    from dpcli.select.scoring import proportional_counts

    x, y, S = rich
    rec = dp.prune(S, prune_ratio=0.5, labels=y, features=x).auto
    pure = next(c for c in rec["candidates"] if c["name"] == "pure")
    fit, _ = auto.split(y, 0)
    m_fit = round(count_from_ratio(len(y), 0.5) * len(fit) / len(y))
    own = dp.prune(S[fit], prune_count=m_fit, labels=y[fit], method="optimization")
    have = np.bincount(y[fit][own.keep], minlength=3)
    quota = proportional_counts(np.bincount(y[fit]), int(own.keep.sum()))
    assert pure["classes_short"] == int(np.sum(have < 0.5 * quota)) == 1
    assert (
        not pure["tied"] and rec["chosen"] != "pure" and "pure keeps under 50 % of its share of 1 class" in rec["line"]
    )
    assert all(c["classes_short"] == 0 for c in rec["candidates"] if c["name"] != "pure")


def test_scarce_noisy_moves_to_coverage(scarce):
    x, y, S = scarce
    sel = dp.prune(S, prune_ratio=0.8, labels=y, features=x)
    rec = sel.auto
    assert rec["strength"] >= 1 and rec["chosen"].startswith("strata"), rec["line"]
    chosen = next(c for c in rec["candidates"] if c["name"] == rec["chosen"])
    assert chosen["gain_vs_base"] > chosen["noise"] > 0 and chosen["tied"]
    assert chosen["val_accuracy"] == max(c["val_accuracy"] for c in rec["candidates"])
    # the objective's plain variants and random within classes are clearly behind, not tied
    assert not any(c["tied"] for c in rec["candidates"] if c["name"] in ("balanced", "pure", "random-stratified"))
    assert sel.n_kept == 150 and sel.solver.startswith("swap+coverage(balance=True,strata=10")
    per_class = np.bincount(y[sel.keep], minlength=3)
    assert rec["signals"]["kept_per_class"] == {str(c): int(k) for c, k in enumerate(per_class)}


def _plain_head(x, y, classes, l2):
    """Mean cross-entropy + l2/2 ||[W, b]||^2 by Newton's method written out in numpy (float64)."""
    xa = np.hstack([x, np.ones((len(x), 1))])
    n, k = xa.shape
    theta = np.zeros((classes, k))
    onehot = np.eye(classes)[y]
    for _ in range(100):
        z = xa @ theta.T
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot).T @ xa / n + l2 * theta
        if np.linalg.norm(g) < 1e-11:
            break
        # H[(c,j),(e,l)] = mean_i (p_ic [c=e] - p_ic p_ie) x_ij x_il + l2 [c=e][j=l]
        w = np.einsum("ic,ce->ice", p, np.eye(classes)) - np.einsum("ic,ie->ice", p, p)
        h = np.einsum("ice,ij,il->cjel", w, xa, xa).reshape(classes * k, classes * k) / n
        h += l2 * np.eye(classes * k)
        theta -= np.linalg.solve(h, g.reshape(-1)).reshape(classes, k)
    return theta


def test_validation_scores_match_a_plain_refit(scarce):
    x, y, S = scarce
    cfg = PruneConfig(ratio=0.8, seed=0)
    ctx = Context(S=S, labels=y)
    diff = np.asarray(np.random.default_rng(5).random(len(y)))  # any difficulty: only the refit is checked
    v = auto.validate(ctx, cfg, 600, x, diff)
    # the split: disjoint, covering, a fifth of every class held out
    assert len(np.intersect1d(v.fit, v.val)) == 0 and len(v.fit) + len(v.val) == len(y)
    assert np.array_equal(np.bincount(y[v.val], minlength=3), np.round(0.2 * np.bincount(y)).astype(int))
    mu, sd = x[v.fit].astype(np.float64).mean(0), x[v.fit].astype(np.float64).std(0)
    z = (x - mu) / sd
    assert v.m_fit == round(600 * len(v.fit) / len(y))
    for s in v.scores + v.references:
        rows = v.fit[s.keep]
        if s.strength is not None:
            assert len(rows) == len(v.fit) - v.m_fit
        theta = _plain_head(z[rows], y[rows], 3, auto.HEAD_L2)
        logits = np.hstack([z[v.val], np.ones((len(v.val), 1))]) @ theta.T
        acc = 100.0 * np.mean(logits.argmax(1) == y[v.val])
        lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        loss = np.mean(lse - logits[np.arange(len(v.val)), y[v.val]])
        assert s.accuracy == pytest.approx(acc, abs=1e-9), s.name
        assert s.loss == pytest.approx(loss, rel=1e-5), s.name
        d = s.correct.astype(float) - v.scores[0].correct
        assert s.noise == pytest.approx(100 * auto.Z * d.std(ddof=1) / np.sqrt(len(d)) if d.any() else 0.0)


def test_recorded_choice_is_deterministic_given_the_seed(scarce):
    x, y, S = scarce
    a = dp.prune(S, prune_count=600, labels=y, features=x, solver_seed=3)
    b = dp.prune(S, prune_count=600, labels=y, features=x, solver_seed=3)

    def strip(r):  # everything but the timings
        sig = {k: v for k, v in r["signals"].items() if k != "validation_seconds"}
        return {**{k: v for k, v in r.items() if k != "seconds"}, "signals": sig}

    assert np.array_equal(a.keep, b.keep) and strip(a.auto) == strip(b.auto)
    f3, v3 = auto.split(y, 3)
    f4, v4 = auto.split(y, 4)
    assert np.array_equal(v3, auto.split(y, 3)[1]) and not np.array_equal(v3, v4)


def test_fallbacks_skip_the_validation_and_say_why(rich):
    x, y, S = rich
    pure = dp.prune(S, prune_ratio=0.5, labels=y, method="optimization")
    base = dp.prune(S, prune_ratio=0.5, labels=y, method="optimization", balance=True)
    no_features = dp.prune(S, prune_ratio=0.5, labels=y)
    assert np.array_equal(no_features.keep, base.keep) and no_features.auto["chosen"] == "balanced"
    assert no_features.auto["decided_by"] == "rule" and "features" in no_features.auto["reason"]
    assert no_features.auto["candidates"] == []
    no_labels = dp.prune(S, prune_ratio=0.5, features=x)
    assert np.array_equal(no_labels.keep, pure.keep) and "labels" in no_labels.auto["reason"]
    assert no_labels.auto["chosen"] == "pure"
    eps = 0.5 * float(np.linalg.norm(S.sum(0)))
    by_eps = dp.prune(S, epsilon=eps, labels=y, features=x)
    ref = dp.prune(S, epsilon=eps, labels=y, method="optimization")
    assert np.array_equal(by_eps.keep, ref.keep) and by_eps.norm <= eps
    assert "--epsilon" in by_eps.auto["reason"] and by_eps.auto["chosen"] == "pure"
    tiny = dp.prune(S[:100], prune_ratio=0.5, labels=y[:100], features=x[:100])
    assert "too few samples" in tiny.auto["reason"]
    given = dp.prune(S, prune_ratio=0.5, labels=y, features=x, balance=True)
    ref = dp.prune(S, prune_ratio=0.5, labels=y, balance=True, method="optimization")
    assert np.array_equal(given.keep, ref.keep) and given.auto["chosen"] == "given"


def test_rungs_over_the_solve_budget_are_skipped_and_said(rich, monkeypatch):
    """The count and feature columns grow with the classes: rungs whose covered solves would pass
    DPCLI_SOLVE_BUDGET are dropped from the ladder (a prefix stays), and the line says which and why.  A rung
    needs its solve on all of S, and on the fit part beside the copy of the fit part's rows of S."""
    x, y, S = rich
    n, d, item = S.shape[0], S.shape[1], S.dtype.itemsize
    n_fit = n - sum(int(round(0.2 * k)) for k in np.bincount(y))  # every class holds out a fifth

    def cost(extra: int) -> int:
        return max(n * (d + extra), n_fit * d + n_fit * (d + extra)) * item

    need = {"balanced": cost(3), "strata": cost(30), "strata+cutoff+features": cost(30 + 3 * x.shape[1])}
    assert need["strata"] > n * (d + 30) * item  # the copy of the fit part's rows is counted
    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", str(need["strata"]))  # every rung but the feature rung fits
    sel = dp.prune(S, prune_ratio=0.5, labels=y, features=x)
    rec = sel.auto
    assert [c["name"] for c in rec["candidates"]] == [
        "balanced",
        "pure",
        "strata",
        "strata+cutoff",
        "random-stratified",
    ]
    assert rec["decided_by"] == "validation" and "strata+cutoff+features skipped" in rec["reason"]
    assert f"covered solves {need['strata+cutoff+features'] / 2**30:.1f} GiB" in rec["reason"]

    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", str(need["balanced"]))  # only the class quotas of the covered rungs
    rec = dp.prune(S, prune_ratio=0.5, labels=y, features=x).auto
    assert [c["name"] for c in rec["candidates"]] == ["balanced", "pure", "random-stratified"]
    assert rec["decided_by"] == "validation"
    assert "; strata, strata+cutoff, strata+cutoff+features skipped" in rec["reason"]

    pure = dp.prune(S, prune_ratio=0.5, labels=y, method="optimization")
    # not even the class quotas; the second: their solve on all of S fits, but not the validation's copy beside it
    for budget in (need["balanced"] - 1, n * (d + 3) * item):
        monkeypatch.setenv("DPCLI_SOLVE_BUDGET", str(budget))
        sel = dp.prune(S, prune_ratio=0.5, labels=y, features=x)
        assert np.array_equal(sel.keep, pure.keep) and sel.auto["chosen"] == "pure"
        assert "balanced, strata" in sel.auto["reason"] and "DPCLI_SOLVE_BUDGET" in sel.auto["reason"]


def test_buckets_keep_the_bucketed_objective_as_first_rung(rich, monkeypatch):
    """The bucketed solver has no class quotas: with --buckets the first candidate is the objective alone,
    bucketed, and chosen it runs exactly as `--method optimization --buckets 2`."""
    from dpcli.select.methods.optimization import Optimization

    x, y, S = rich
    m = count_from_ratio(len(y), 0.5)
    cfg = PruneConfig(ratio=0.5, buckets=2).validate()
    monkeypatch.setattr(auto, "decide", lambda scores, share: (scores[0], "forced"))
    ctx = Context(S=S, labels=y).supply(features=x)
    pruned, label = auto.Auto(cfg).select(ctx, m, None)
    ref, ref_label = Optimization(PruneConfig(ratio=0.5, buckets=2, method="optimization").validate()).select(
        Context(S=S, labels=y), m, None
    )
    assert np.array_equal(pruned, ref) and label == ref_label
    rec = ctx.record["auto"]
    assert rec["chosen"] == "pure" and [c["name"] for c in rec["candidates"]][:2] == ["pure", "strata"]
    assert auto.ladder(cfg)[0] is auto.PURE and "balanced" not in [c["name"] for c in rec["candidates"]]
    assert auto.ladder(PruneConfig(ratio=0.5).validate())[0].options == {"balance": True}


def test_cli_prints_one_line_and_records_it(tmp_path, capsys, rich):
    x, y, S = rich
    path = tmp_path / "S.h5"
    with h5py.File(path, "w") as f:  # an external S with labels but no lineage: no features to validate on
        f["S"] = S
        f["labels"] = y
    code, out, err = run_cli(["prune", path, "--prune-ratio", "0.5", "--out", tmp_path / "m.h5", "--json"], capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("auto:")]
    assert lines == ["auto: coverage=balanced (S has no known model or features (give features= in the API))"]
    doc = json.loads(out)
    assert doc["method"] == "auto" and doc["auto"]["line"] == lines[0]
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert json.loads(f.attrs["auto"])["chosen"] == "balanced" and f.attrs["method"] == "auto"
    code, out, err = run_cli(["prune", path, "--prune-ratio", "0.5", "--out", tmp_path / "q.h5", "--quiet"], capsys)
    assert code == 0 and err == ""


def _score(name, acc, correct):
    return auto.Score(name, 0, acc, 0.0, np.asarray(correct, bool), np.ones(1, bool))


def test_a_tie_goes_to_the_grid_tables_first_and_a_clear_win_does_not():
    """Three candidates on 100 validation samples: within the paired noise of the best, the candidate the grid
    ranks first at the nearest prune share wins; beyond it, the best wins whatever the table says."""
    base = np.array([1, 0] * 50)  # 50 % correct
    flip = lambda k: np.where(np.arange(100) < 2 * k, 1, base)  # noqa: E731  (k more correct)
    for k, share, expected in (
        (1, 0.9, "dual-beta"),
        (1, 0.85, "dual-beta"),
        (1, 0.3, "random-stratified"),
        (1, 0.42, "random-stratified"),
        (12, 0.9, "balanced"),
        (12, 0.3, "balanced"),
    ):
        scores = [
            _score("balanced", 50.0 + k, flip(k)),
            _score("dual-beta", 50.0, base),
            _score("random-stratified", 50.0, base),
        ]
        pick, reason = auto.decide(scores, share)
        assert pick.name == expected, (k, share, reason)
        within = k <= _spread(flip(k), base)
        assert [s.tied for s in scores] == [True, within, within]
        assert scores[1].behind == pytest.approx(k) and scores[1].spread == pytest.approx(_spread(flip(k), base))
    assert 1 < _spread(flip(1), base) and 12 > _spread(flip(12), base)  # the two cases really are a tie and a win
    # the order itself: the table's row for the nearest share, candidates it does not list last
    assert auto.prior_rank("dual-beta", 0.9) == 0 and auto.prior_rank("nothing", 0.9) == len(auto.TIE_ORDER[0.9])
    assert auto.tie_order(0.6) == auto.TIE_ORDER[0.5] and auto.tie_order(0.61) == auto.TIE_ORDER[0.7]


def test_an_ineligible_best_is_passed_over():
    base = np.array([1, 0] * 50)
    flip = lambda k: np.where(np.arange(100) < 2 * k, 1, base)  # noqa: E731
    for lost, short in ((0, 1), (1, 0)):  # starves a class / drops one the first candidate keeps
        scores = [_score("balanced", 50.0, base), _score("pure", 62.0, flip(12))]
        scores[1].lost, scores[1].short = lost, short
        pick, reason = auto.decide(scores, 0.5)
        assert pick.name == "balanced" and not scores[1].tied and scores[1].behind == pytest.approx(-12.0)


def test_the_tie_table_is_what_the_grid_results_give():
    """TIE_ORDER is benchmarks/auto_evidence.py's derivation from the committed grid; one row recounted here:
    per regime, the best selector's mean minus the candidate's grid method's, averaged over regimes."""
    from pathlib import Path

    from benchmarks import auto_evidence as ev

    root = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "grid"
    table = ev.prior(ev.load(root))
    assert {r: tuple(c for c, _, _ in ranked) for r, ranked in table.items()} == auto.TIE_ORDER
    regret: dict = {}
    for path in sorted(root.glob("cells-*.jsonl")):
        acc: dict = {}
        for line in path.read_text().splitlines():
            c = json.loads(line)
            if c["method"] in {"full", "auto", "optimization-eps", "readme-eps0.05"} or "error" in c or c.get("toy"):
                continue
            if round(float(c["ratio"]), 6) == 0.9:
                acc.setdefault(c["method"], []).append(c["test_accuracy"])
        if acc:
            top = max(np.mean(v) for v in acc.values())
            for cand, method in ev.GRID_NAME.items():
                if method in acc:
                    regret.setdefault(cand, []).append(top - np.mean(acc[method]))
    by_hand = sorted(regret, key=lambda c: np.mean(regret[c]))
    assert list(auto.TIE_ORDER[0.9][: len(by_hand)]) == by_hand


def test_dataset_run_validates_on_the_checkpoints_features(tiny_run, tmp_path, capsys):
    """S from a trained model: features from the checkpoint, difficulty from its dynamics, the full
    model's accuracies among the signals; one line on stderr and the same record in mask.h5 and --json."""
    code, out, err = run_cli(
        ["prune", tiny_run.influence, "--prune-ratio", 0.8, "--out", tmp_path / "m.h5", "--json"], capsys
    )
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("auto:")]
    assert len(lines) == 1 and "held-out acc" in lines[0]
    rec = json.loads(out)["auto"]
    assert rec["line"] == lines[0] and rec["decided_by"] == "validation"
    # the checkpoint's dynamics make DUAL's Beta sampling a candidate, on the same fit part
    assert [c["name"] for c in rec["candidates"]] == list(ALL) and rec["skipped"] == {}
    assert len({c["n_kept_fit"] for c in rec["candidates"]}) == 1
    sig = rec["signals"]
    assert sig["difficulty_source"].startswith("mean training loss") and sig["n_kept"] == sig["n"] - count_from_ratio(
        sig["n"], 0.8
    )
    assert sig["generalization_gap"] == pytest.approx(sig["train_accuracy"] - sig["test_accuracy"])
    assert sum(sig["kept_per_class"].values()) == sig["n_kept"] and sig["n_fit"] + sig["n_val"] == sig["n"]
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert json.loads(f.attrs["auto"]) == rec


def test_embeddings_run_validates_on_its_own_features(tmp_path, capsys):
    """S fitted on features (influence --features): auto reads them back through the lineage and takes
    the difficulty from the artifact's per-sample loss."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    np.save(tmp_path / "x.npy", (x[:600] / 16).astype(np.float32))
    np.save(tmp_path / "y.npy", y[:600])
    inf = tmp_path / "influence.h5"
    assert (
        run_cli(
            ["influence", "--features", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--out", inf, "--quiet"]
        )[0]
        == 0
    )
    code, out, err = run_cli(["prune", inf, "--prune-ratio", 0.7, "--out", tmp_path / "m.h5", "--json"], capsys)
    assert code == 0, err
    rec = json.loads(out)["auto"]
    assert rec["decided_by"] == "validation" and rec["signals"]["feature_dim"] == 64
    assert rec["signals"]["difficulty_source"] == "per-sample loss at the trained model"
    assert rec["signals"]["n_val"] == sum(round(0.2 * c) for c in np.bincount(y[:600]))


def _dynamics(y: np.ndarray, noisy: np.ndarray, epochs: int = 12, seed: int = 0):
    """Training dynamics of a run that learns the clean samples (p_y rising, with jitter) and never the
    mislabelled ones (p_y near 0): what DUAL reads."""
    from dpcli.train.dynamics import Dynamics

    rng = np.random.default_rng(seed)
    speed = rng.uniform(0.5, 3.0, len(y))
    t = np.linspace(0.0, 1.0, epochs)[:, None]
    p = np.where(noisy[None, :], 0.03, 0.1 + 0.85 * (1 - np.exp(-speed[None, :] * 3 * t)))
    p = np.clip(p + rng.normal(0, 0.04, p.shape), 1e-3, 1 - 1e-3)
    return Dynamics(loss=(-np.log(p)).astype(np.float32), correct=(p > 0.5).astype(np.uint8))


def _ctx_with_dynamics(scarce):
    x, y, S = scarce
    noisy = np.random.default_rng(9).random(len(y)) < 0.3
    ctx = Context(S=S, labels=y)
    ctx.supply(features=x, dynamics=_dynamics(y, noisy))
    return ctx


def test_dual_beta_is_a_candidate_scored_like_the_others(scarce):
    """With training dynamics, DUAL's Beta sampling on the fit part's dynamics is scored on the validation
    part; its recorded accuracy is that of a plain numpy refit on the set it keeps."""
    from dpcli.select.methods.dual import dual_scores, true_class_probs
    from dpcli.select.methods.dual_beta import dual_beta_select

    x, y, S = scarce
    ctx = _ctx_with_dynamics(scarce)
    cfg = PruneConfig(ratio=0.8, seed=2)
    m = count_from_ratio(len(y), 0.8)
    pruned, label = auto.Auto(cfg).select(ctx, m, None)
    rec = ctx.record["auto"]
    assert [c["name"] for c in rec["candidates"]] == list(ALL) and rec["skipped"] == {}
    fit, val = auto.split(y, 2)
    m_fit = round(m * len(fit) / len(y))
    p = true_class_probs(ctx.dynamics().loss)[:, fit]
    mu, sd = x[fit].astype(np.float64).mean(0), x[fit].astype(np.float64).std(0)
    z = (x - mu) / sd
    for name, keep in (
        ("dual-beta", ~dual_beta_select(p, dual_scores(p), m_fit, np.random.default_rng(2))),
        ("random-stratified", ~stratified_prune(y[fit], m_fit, 2)),
    ):
        c = next(c for c in rec["candidates"] if c["name"] == name)
        assert c["n_kept_fit"] == int(keep.sum()) == len(fit) - m_fit
        rows = fit[keep]
        theta = _plain_head(z[rows], y[rows], 3, auto.HEAD_L2)
        acc = 100.0 * np.mean((np.hstack([z[val], np.ones((len(val), 1))]) @ theta.T).argmax(1) == y[val])
        assert c["val_accuracy"] == pytest.approx(acc, abs=1e-9), name
        assert c["gain_vs_base"] == pytest.approx(acc - rec["candidates"][0]["val_accuracy"])
    assert int((~pruned).sum()) == len(y) - m


@pytest.mark.parametrize("name", ["dual-beta", "random-stratified", "pure"])
def test_a_chosen_candidate_runs_on_all_of_S_as_its_own_method(scarce, monkeypatch, name):
    """The chosen candidate's mask is exactly `--method NAME` (the objective alone: `optimization`) with the
    same seed on all of S, and the line says so."""
    x, y, S = scarce
    monkeypatch.setattr(auto, "decide", lambda scores, share: (next(s for s in scores if s.name == name), "forced"))
    ctx = _ctx_with_dynamics(scarce)
    m = count_from_ratio(len(y), 0.8)
    pruned, label = auto.Auto(PruneConfig(ratio=0.8, seed=4)).select(ctx, m, None)
    method = "optimization" if name == "pure" else name
    expected, ref_label = SELECTORS.get(method)(PruneConfig(ratio=0.8, seed=4, method=method).validate()).select(
        _ctx_with_dynamics(scarce), m, None
    )
    assert label == ref_label and np.array_equal(pruned, expected)
    rec = ctx.record["auto"]
    assert rec["chosen"] == name and rec["line"] == f"auto: coverage={name} (forced)"


def test_without_dynamics_dual_beta_is_skipped_and_said(scarce):
    x, y, S = scarce
    rec = dp.prune(S, prune_ratio=0.8, labels=y, features=x).auto
    assert "dual-beta" not in [c["name"] for c in rec["candidates"]]
    assert rec["skipped"] == {"dual-beta": "no training dynamics"}


def test_dual_beta_that_dual_refuses_is_skipped_with_duals_reason(scarce):
    """Dynamics that miss a sample: DUAL cannot run, the other candidates decide and the record says DUAL's why."""
    x, y, S = scarce
    ctx = _ctx_with_dynamics(scarce)
    ctx.dynamics().loss[0, 5] = np.nan
    pruned, label = auto.Auto(PruneConfig(ratio=0.8, seed=0)).select(ctx, count_from_ratio(len(y), 0.8), None)
    rec = ctx.record["auto"]
    assert rec["skipped"]["dual-beta"].startswith("DUAL needs the loss of every sample")
    assert rec["chosen"] != "dual-beta" and "dual-beta" not in [c["name"] for c in rec["candidates"]]


@pytest.fixture(scope="module")
def imbalanced():
    """Five classes of 1500, 300, 40, 5 and 1 samples.  At 90 % pruned the hard cutoff prunes the rare classes
    first (their samples have the highest loss) and the held-out part, as imbalanced, rewards that."""
    rng = np.random.default_rng(2)
    y = np.concatenate([np.full(c, i) for i, c in enumerate((1500, 300, 40, 5, 1))])
    x = (rng.normal(0, 1, (len(y), 32)) + np.eye(32)[y] * 1.5).astype(np.float32)
    S, _ = dp.influence(x, y)
    return x, y, S


def test_no_rung_drops_a_class_while_the_count_leaves_each_a_sample(imbalanced):
    """Class quotas come first and the hard cutoff is per class (each at most its class's quota), so at 90 %
    pruned no rung keeps fewer classes than the first: the class of one sample keeps it throughout."""
    x, y, S = imbalanced
    sel = dp.prune(S, prune_ratio=0.9, labels=y, features=x)
    fit, _ = auto.split(y, 0)
    m_fit = int(round(0.9 * len(y) * len(fit) / len(y)))
    sizes = np.bincount(y[fit], minlength=5).tolist()
    assert min(q - s for q, s in zip(class_quotas(sizes, m_fit), sizes)) < 0  # every class keeps a sample
    first = dp.prune(S[fit], prune_count=m_fit, labels=y[fit], method="optimization", balance=True)
    assert set(np.unique(y[fit][first.keep])) == set(np.unique(y[fit]))
    cands = {c["name"]: c for c in sel.auto["candidates"]}
    assert all(cands[r.name]["classes_lost"] == 0 for r in auto.LADDER)  # the covered rungs keep every class
    losers = {n for n, c in cands.items() if c["classes_lost"]}  # the unforced candidates may lose one...
    assert sel.auto["chosen"] not in losers  # ...and are then never chosen
    assert set(np.unique(y[sel.keep])) == {0, 1, 2, 3, 4}


def test_a_kept_set_without_some_class_is_warned_about_and_recorded(imbalanced, tmp_path, capsys):
    x, y, S = imbalanced
    m = len(y) - 3  # fewer kept than classes: the quotas cannot leave every class a sample
    counts = np.bincount(y)
    quotas = class_quotas(counts.tolist(), m)
    with pytest.warns(UserWarning) as record:
        sel = dp.prune(S, prune_count=m, labels=y, method="optimization", balance=True)
    gone = sorted(set(y) - set(y[sel.keep]))
    assert gone == [c for c in range(5) if quotas[c] == counts[c]] == [2, 3, 4]
    (message,) = [str(w.message) for w in record if "kept set has no sample" in str(w.message)]
    assert message.startswith(
        f"dpcli: the kept set has no sample of {len(gone)} of the 5 classes: "
        + ", ".join(f"{c} ({counts[c]} sample{'s' if counts[c] > 1 else ''})" for c in gone)
    )
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    inf = tmp_path / "influence.h5"
    assert (
        run_cli(
            ["influence", "--features", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--out", inf, "--quiet"]
        )[0]
        == 0
    )
    code, out, err = run_cli(
        ["prune", inf, "--prune-count", m, "--balance", "--hard-cutoff", "0.1", "--out", tmp_path / "m.h5", "--json"],
        capsys,
    )
    assert code == 0, err
    with h5py.File(tmp_path / "m.h5", "r") as f:
        keep = f["keep"][()]
    expected = {str(c): int(counts[c]) for c in sorted(set(y) - set(y[keep]))}
    assert expected and json.loads(out)["classes_without_kept_samples"] == expected


def test_explicit_strata_on_an_embeddings_run_use_the_artifacts_loss(imbalanced, tmp_path, capsys):
    """auto and the explicit options read the same difficulty: without dynamics, the stored per-sample loss."""
    from dpcli.select.coverage import Coverage, minimize_norm_covered

    x = imbalanced[0][:400]
    y = (np.arange(400) % 3).astype(np.int64)  # three classes, enough samples for 10 strata each
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    inf = tmp_path / "influence.h5"
    assert (
        run_cli(
            ["influence", "--features", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--out", inf, "--quiet"]
        )[0]
        == 0
    )
    code, out, err = run_cli(
        ["prune", inf, "--prune-count", 200, "--balance", "--strata", 10, "--out", tmp_path / "m.h5", "--json"], capsys
    )
    assert code == 0, err
    with h5py.File(inf, "r") as f:
        S, loss = f["S"][()], f["loss"][()]
    with h5py.File(tmp_path / "m.h5", "r") as f:
        keep = f["keep"][()]
    pruned = minimize_norm_covered(S, 200, y, loss.astype(np.float64), Coverage(balance=True, strata=10), seed=0)
    np.testing.assert_array_equal(keep, ~pruned)


def test_an_epsilon_that_admits_the_whole_set_is_refused_like_pruning_every_sample(rich):
    """Eq. 3 takes the largest set within the bound; where the whole set's ||sum S|| is within it, that is
    everything: refused like --prune-count n, since a retrain on nothing cannot run.  Just below the whole
    set's norm a mask keeps samples."""
    from dpcli.errors import DpcliError

    x, y, S = rich
    whole = float(np.linalg.norm(S.astype(np.float64).sum(0)))
    with pytest.raises(DpcliError, match=f"every one of the {len(y)} samples would be pruned"):
        dp.prune(S, epsilon=whole * 1.01, labels=y)
    assert dp.prune(S, epsilon=whole * 0.99, labels=y).keep.any()


def test_a_context_is_supplied_through_its_method_and_checks_the_rows(scarce):
    x, y, S = scarce
    ctx = Context(S=S, labels=y)
    assert not ctx.has("features")
    assert ctx.supply(features=x).has("features") and ctx.features() is x
    with pytest.raises(DpcliError, match=f"difficulty have {len(y) - 1} rows but S has {len(y)}"):
        ctx.supply(difficulty=np.zeros(len(y) - 1))
    with pytest.raises(TypeError, match="unknown 'snapshots'"):
        ctx.supply(snapshots={})


def test_time_budget_is_one_budget_split_across_the_solves(scarce, monkeypatch):
    """--time-budget T bounds the whole prune: the candidates' solves (the rungs and the objective alone) share
    0.4 T, the final solve gets what is left when it starts (at least 0.1 T), instead of T each."""
    import time

    x, y, S = scarce
    seen = []
    real = auto.Optimization.select

    def spy(self, ctx, m, eps):
        seen.append((ctx.n, self.cfg.time_budget, time.perf_counter()))
        return real(self, ctx, m, eps)

    monkeypatch.setattr(auto.Optimization, "select", spy)
    monkeypatch.setattr(auto, "decide", lambda scores, share: (scores[0], "forced"))  # a solve runs on all of S
    T = 2.0
    ctx = Context(S=S, labels=y).supply(features=x)
    t0 = time.perf_counter()
    auto.Auto(PruneConfig(ratio=0.5, time_budget=T)).select(ctx, count_from_ratio(len(y), 0.5), None)
    rungs, final = seen[:-1], seen[-1]
    assert len(rungs) == len(auto.LADDER) + 1 and all(n < len(y) for n, _, _ in rungs) and final[0] == len(y)
    assert all(b == pytest.approx(auto.VAL_BUDGET_SHARE * T / len(rungs)) for _, b, _ in rungs)
    # the final solve gets what the candidates (whose solves may stop early, on convergence) and the fits left
    # of T when it starts: timed at its call, so a loaded machine's overshoot of the solve itself does not count
    assert 0.1 * T <= final[1] < T
    assert final[1] == pytest.approx(max(T - (final[2] - t0), 0.1 * T), abs=0.05)
