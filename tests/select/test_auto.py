"""``--method auto``: the regime it picks on problems whose right answer is known, its validation
scores against a plain re-fit, determinism, and the fallbacks to the paper's objective."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import dpcli.api as dp
from dpcli.errors import DpcliError
from dpcli.config import PruneConfig
from dpcli.select.base import Context
from dpcli.select.linalg import count_from_ratio
from dpcli.select.methods import auto
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
    """Abundant, separable data (many samples per dimension, clean labels): keeping the hard
    samples is right (Sorscher et al.), so auto must stay with the objective (within class quotas)."""
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


def test_rich_separable_keeps_the_objective_within_class_quotas(rich):
    x, y, S = rich
    sel = dp.prune(S, prune_ratio=0.5, labels=y, features=x)
    rec = sel.auto
    assert rec["chosen"] == "balanced" and rec["strength"] == 0 and rec["decided_by"] == "validation"
    assert rec["line"].startswith("auto: coverage=balanced (held-out acc ")
    base = dp.prune(S, prune_ratio=0.5, labels=y, method="optimization", balance=True)
    assert np.array_equal(sel.keep, base.keep) and sel.norm == base.norm
    # every class pruned by exactly its largest-remainder share of the count
    assert np.bincount(y[~sel.keep], minlength=3).tolist() == class_quotas(np.bincount(y).tolist(), count_from_ratio(len(y), 0.5))
    assert [c["name"] for c in rec["candidates"]] == [r.name for r in auto.LADDER]
    assert all(c["gain_vs_base"] <= c["noise"] for c in rec["candidates"])


def test_scarce_noisy_moves_to_coverage(scarce):
    x, y, S = scarce
    sel = dp.prune(S, prune_ratio=0.8, labels=y, features=x)
    rec = sel.auto
    assert rec["strength"] >= 1, rec["line"]
    chosen = rec["candidates"][rec["strength"]]
    assert chosen["gain_vs_base"] > chosen["noise"] > 0
    assert chosen["val_accuracy"] == max(c["val_accuracy"] for c in rec["candidates"])
    assert f"vs {rec['candidates'][0]['val_accuracy']:.1f} % balanced" in rec["line"]
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
    assert [c["name"] for c in rec["candidates"]] == [r.name for r in auto.LADDER[:3]]
    assert rec["decided_by"] == "validation" and "strata+cutoff+features skipped" in rec["reason"]
    assert f"covered solves {need['strata+cutoff+features'] / 2**30:.1f} GiB" in rec["reason"]

    monkeypatch.setenv("DPCLI_SOLVE_BUDGET", str(need["balanced"]))  # only the first rung: nothing to compare
    sel = dp.prune(S, prune_ratio=0.5, labels=y, features=x)
    base = dp.prune(S, prune_ratio=0.5, labels=y, method="optimization", balance=True)
    assert np.array_equal(sel.keep, base.keep) and sel.auto["chosen"] == "balanced"
    assert sel.auto["decided_by"] == "rule" and sel.auto["candidates"] == []
    assert "no coverage rung to compare; strata, strata+cutoff, strata+cutoff+features skipped" in sel.auto["reason"]

    pure = dp.prune(S, prune_ratio=0.5, labels=y, method="optimization")
    # not even the class quotas; the second: their solve on all of S fits, but not the validation's copy beside it
    for budget in (need["balanced"] - 1, n * (d + 3) * item):
        monkeypatch.setenv("DPCLI_SOLVE_BUDGET", str(budget))
        sel = dp.prune(S, prune_ratio=0.5, labels=y, features=x)
        assert np.array_equal(sel.keep, pure.keep) and sel.auto["chosen"] == "pure"
        assert "balanced, strata" in sel.auto["reason"] and "DPCLI_SOLVE_BUDGET" in sel.auto["reason"]


def test_buckets_keep_the_bucketed_objective_as_first_rung(rich):
    """The bucketed solver has no class quotas: with --buckets the first rung is the objective alone, bucketed."""
    from dpcli.select.methods.optimization import Optimization

    x, y, S = rich
    m = count_from_ratio(len(y), 0.5)
    cfg = PruneConfig(ratio=0.5, buckets=2).validate()
    ctx = Context(S=S, labels=y)
    pruned, label = auto.Auto(cfg).select(ctx, m, None)
    ref, ref_label = Optimization(PruneConfig(ratio=0.5, buckets=2, method="optimization").validate()).select(
        Context(S=S, labels=y), m, None)
    assert np.array_equal(pruned, ref) and label == ref_label
    assert ctx.record["auto"]["chosen"] == "pure" and auto.ladder(cfg)[0] is auto.PURE
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


def _score(strength, acc, correct):
    return auto.Score(auto.LADDER[strength].name, strength, acc, 0.0, np.asarray(correct, bool), np.ones(1, bool))


def test_decide_needs_a_gain_beyond_the_paired_noise():
    base = np.array([1, 0] * 50)  # 50 % correct on 100 validation samples
    flip = lambda k: np.where(np.arange(100) < 2 * k, 1, base)  # noqa: E731  (k more correct)
    for k, expected in ((1, 0), (3, 0), (12, 2)):
        scores = [_score(0, 50.0, base), _score(1, 50.0, base), _score(2, 50.0 + k, flip(k)), _score(3, 40.0, base)]
        for s in scores:
            s.gain = s.accuracy - 50.0
            s.noise = auto.paired_noise(s.correct, base)
        rung, reason = auto.decide(scores)
        assert rung.strength == expected, (k, reason)
    # k = 3: a 3-point gain from 3 changed answers has noise 2 * sqrt(3/99 - ...) * 100 / 10 > 3
    assert 3.0 < auto.paired_noise(flip(3), base)
    # equal accuracy beyond the noise: the weaker rung wins
    scores = [_score(0, 50.0, base), _score(1, 62.0, flip(12)), _score(2, 62.0, flip(12))]
    for s in scores:
        s.gain, s.noise = s.accuracy - 50.0, auto.paired_noise(s.correct, base)
    assert auto.decide(scores)[0].strength == 1


def test_dataset_run_validates_on_the_checkpoints_features(tiny_run, tmp_path, capsys):
    """S from a trained model: features from the checkpoint, difficulty from its dynamics, the full
    model's accuracies among the signals; one line on stderr and the same record in mask.h5 and --json."""
    code, out, err = run_cli(["prune", tiny_run.influence, "--prune-ratio", 0.8, "--out", tmp_path / "m.h5",
                              "--json"], capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("auto:")]
    assert len(lines) == 1 and "held-out acc" in lines[0]
    rec = json.loads(out)["auto"]
    assert rec["line"] == lines[0] and rec["decided_by"] == "validation" and len(rec["candidates"]) == 4
    # the checkpoint's dynamics let DUAL's Beta sampling challenge the choice, on the same fit part
    ch = rec["challenger"]
    assert ch["name"] == "dual-beta" and ch["n_kept_fit"] == rec["candidates"][0]["n_kept_fit"]
    sig = rec["signals"]
    assert sig["difficulty_source"].startswith("mean training loss") and sig["n_kept"] == sig["n"] - count_from_ratio(sig["n"], 0.8)
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
    assert run_cli(["influence", "--features", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--out", inf,
                    "--quiet"])[0] == 0
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


def test_challenger_is_scored_like_a_rung(scarce):
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
    ch = rec["challenger"]
    assert ch["name"] == "dual-beta" and rec["challenger_skipped"] == ""
    fit, val = auto.split(y, 2)
    m_fit = round(m * len(fit) / len(y))
    p = true_class_probs(ctx.dynamics().loss)[:, fit]
    keep = ~dual_beta_select(p, dual_scores(p), m_fit, np.random.default_rng(2))
    assert ch["n_kept_fit"] == int(keep.sum()) == len(fit) - m_fit
    mu, sd = x[fit].astype(np.float64).mean(0), x[fit].astype(np.float64).std(0)
    z = (x - mu) / sd
    rows = fit[keep]
    theta = _plain_head(z[rows], y[rows], 3, auto.HEAD_L2)
    acc = 100.0 * np.mean((np.hstack([z[val], np.ones((len(val), 1))]) @ theta.T).argmax(1) == y[val])
    assert ch["val_accuracy"] == pytest.approx(acc, abs=1e-9)
    assert ch["gain_vs_base"] == pytest.approx(acc - rec["candidates"][0]["val_accuracy"])
    assert len(rec["candidates"]) == len(auto.LADDER) and int((~pruned).sum()) == len(y) - m


def test_challenger_that_wins_runs_on_all_of_S(scarce, monkeypatch):
    """The winning challenger's mask is exactly `--method dual-beta` with the same seed, and the line says so."""
    x, y, S = scarce
    monkeypatch.setattr(auto, "challenge", lambda chosen, base, rival: (True, "forced"))
    ctx = _ctx_with_dynamics(scarce)
    cfg = PruneConfig(ratio=0.8, seed=4)
    m = count_from_ratio(len(y), 0.8)
    pruned, label = auto.Auto(cfg).select(ctx, m, None)
    ref = _ctx_with_dynamics(scarce)
    expected, _ = SELECTORS.get("dual-beta")(PruneConfig(ratio=0.8, seed=4, method="dual-beta")).select(ref, m, None)
    assert label == "dual-beta" and np.array_equal(pruned, expected)
    rec = ctx.record["auto"]
    assert rec["chosen"] == "dual-beta" and rec["line"] == "auto: coverage=dual-beta (forced)"


def test_without_dynamics_there_is_no_challenger(scarce):
    x, y, S = scarce
    rec = dp.prune(S, prune_ratio=0.8, labels=y, features=x).auto
    assert rec["challenger"] is None and rec["challenger_skipped"] == "no training dynamics"


def _rival(acc, correct):
    return auto.Score("dual-beta", 4, acc, 0.0, np.asarray(correct, bool), np.ones(1, bool))


def test_challenger_beats_the_first_rung_by_z_and_a_chosen_coverage_rung_by_one_standard_error():
    base = np.array([1, 0] * 50)  # 50 % correct on 100 validation samples
    flip = lambda k: np.where(np.arange(100) < 2 * k, 1, base)  # noqa: E731  (k more correct)

    def se(a, b, z):  # z standard errors of the paired difference, in points, written out
        d = a.astype(float) - b
        return z * 100 * np.sqrt(((d - d.mean()) ** 2).sum() / (len(d) - 1)) / np.sqrt(len(d))

    first = _score(0, 50.0, base)
    covered = _score(2, 62.0, flip(12))
    for k, won_vs_base, won_vs_covered in ((2, False, False), (6, True, False), (14, True, True), (12, True, False)):
        rival = _rival(50.0 + k, flip(k))
        rival.gain, rival.noise = k, auto.paired_noise(rival.correct, base)
        assert auto.challenge(first, first, rival)[0] == (k > se(flip(k), base, auto.Z)) == won_vs_base, k
        lead = k - 12
        expected = won_vs_base and lead > 0 and lead > se(flip(k), flip(12), auto.Z_SWITCH)
        assert auto.challenge(covered, first, rival)[0] == expected == won_vs_covered, k
    # the 14-vs-12 case is exactly where one standard error and two differ
    assert se(flip(14), flip(12), 1.0) < 2 < se(flip(14), flip(12), 2.0)
    # ahead of the chosen rung, but by less than one standard error: 3 answers gained, 2 lost
    mixed = flip(12).copy()
    mixed[[25, 27, 29]] = 1
    mixed[[0, 1]] = 0
    rival = _rival(63.0, mixed)
    rival.gain, rival.noise = 13.0, auto.paired_noise(mixed, base)
    assert rival.gain > rival.noise and 0 < 1.0 < se(mixed, flip(12), auto.Z_SWITCH)
    assert auto.challenge(covered, first, rival)[0] is False


def test_a_challenger_dual_refuses_is_skipped_with_duals_reason(scarce):
    """Dynamics that miss a sample: DUAL cannot run, the ladder decides alone and the record says DUAL's why."""
    x, y, S = scarce
    ctx = _ctx_with_dynamics(scarce)
    ctx.dynamics().loss[0, 5] = np.nan
    pruned, label = auto.Auto(PruneConfig(ratio=0.8, seed=0)).select(ctx, count_from_ratio(len(y), 0.8), None)
    rec = ctx.record["auto"]
    assert rec["challenger"] is None and rec["challenger_skipped"].startswith("DUAL needs the loss of every sample")
    assert rec["chosen"] != "dual-beta" and label.startswith("swap")


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
    assert [c["classes_lost"] for c in sel.auto["candidates"]] == [0] * len(auto.LADDER)
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
    assert message.startswith(f"dpcli: the kept set has no sample of {len(gone)} of the 5 classes: "
                              + ", ".join(f"{c} ({counts[c]} sample{'s' if counts[c] > 1 else ''})" for c in gone))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    inf = tmp_path / "influence.h5"
    assert run_cli(["influence", "--features", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--out", inf,
                    "--quiet"])[0] == 0
    code, out, err = run_cli(["prune", inf, "--prune-count", m, "--balance", "--hard-cutoff", "0.1", "--out",
                              tmp_path / "m.h5", "--json"], capsys)
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
    assert run_cli(["influence", "--features", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--out", inf,
                    "--quiet"])[0] == 0
    code, out, err = run_cli(["prune", inf, "--prune-count", 200, "--balance", "--strata", 10, "--out",
                              tmp_path / "m.h5", "--json"], capsys)
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
    """--time-budget T bounds the whole prune: the rungs' solves share 0.4 T, the final solve gets what is left
    (at least 0.1 T), instead of T each."""
    import time

    x, y, S = scarce
    seen = []
    real = auto.Optimization.select

    def spy(self, ctx, m, eps):
        seen.append((ctx.n, self.cfg.time_budget))
        return real(self, ctx, m, eps)

    monkeypatch.setattr(auto.Optimization, "select", spy)
    T = 2.0
    ctx = Context(S=S, labels=y).supply(features=x)
    t0 = time.perf_counter()
    auto.Auto(PruneConfig(ratio=0.5, time_budget=T)).select(ctx, count_from_ratio(len(y), 0.5), None)
    wall = time.perf_counter() - t0
    rungs, final = seen[:-1], seen[-1]
    assert len(rungs) == len(auto.LADDER) and all(n < len(y) for n, _ in rungs) and final[0] == len(y)
    assert all(b == pytest.approx(auto.VAL_BUDGET_SHARE * T / len(rungs)) for _, b in rungs)
    # the final solve gets what the rungs (which may stop early, on convergence) and the fits left of T
    assert 0.1 * T <= final[1] < T
    assert final[1] <= max(T - (wall - final[1]), 0.1 * T) + 0.05
