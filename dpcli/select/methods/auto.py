"""The default selector: the paper's objective within class quotas, moved toward coverage when held-out data says so.

Minimizing ``||sum_W S_i||`` alone keeps the hard samples.  Sorscher et al. (2022) show, for linear
classifiers, that keeping the hard samples is right when data is abundant and keeping the easy ones
when it is scarce; on dpcli's scarce CIFAR proxy the pure objective trails random pruning while the
coverage variant wins, and on a data-rich set the opposite holds (docs/benchmarks.md).  A user cannot
know the regime, so ``auto`` measures it, cheaply, with the model the theory is about:

1. split the training set (seeded, stratified by class) into a fit part and a validation part;
2. for every rung of :data:`LADDER` (the objective within class quotas -> + difficulty strata ->
   + hard cutoff -> + feature matching), select the same prune share on the fit part's rows of S;
3. refit an L2-regularized softmax head on the kept fit rows' penultimate features (standardized,
   deterministic full-batch Newton / L-BFGS) and score it on the validation part;
4. keep the first rung unless a later one beats it on validation accuracy by more than
   :data:`Z` paired standard errors (the noise of the difference on the same validation samples);
   then take the best such rung;
5. where the checkpoint recorded training dynamics, let DUAL's Beta sampling (:data:`CHALLENGER`, the
   published rule that led at 70 % pruned on two CIFAR regimes) challenge that choice: it must beat the
   first rung by the same :data:`Z` and, where a coverage rung was chosen, that rung by :data:`Z_SWITCH`
   paired standard errors; run the winner on all of S.

The first rung is the paper's objective with every class pruned by the same share (``--balance``),
not the objective alone.  Alone, it drops classes unevenly at high prune shares (on digits at 90 %
it kept 5 samples of one class and 23 of another), which costs a network trained from scratch on the
kept set far more than the validation's linear head on full-data features can show: the retrained
accuracy rose by 1.5 points there, and it was never lower beyond the seed noise in any regime of
docs/benchmarks.md.  Class-wise quotas are also what the class-wise baselines (herding, CCS) do.

The challenger's bar is lower against a coverage rung than against the first rung because only the
first rung carries the paper's objective: leaving it trades a smaller ``||sum S||`` for coverage and
needs strong evidence, while two coverage selections are both away from it (the bar of 1 was set on
the cifar-scarce and cifar-rich-cpu validations, docs/benchmarks.md, and re-checked on mnist5k).

No rule reads a dataset's name.  Without features (an external S with no lineage, the API without
``features=``), without two classes, with too few samples to validate, or with ``--epsilon`` (the
largest set within a norm bound: coverage constraints can only shrink it), it skips the validation
and says why: it runs the first rung, or the objective alone with ``--epsilon`` or a single class.
Rungs whose covered solve on all of S would pass ``$DPCLI_SOLVE_BUDGET`` are dropped from
the end of the ladder (their constraint columns grow with the classes), and the line says so.
Explicit coverage options are the user's choice and are run as given.  Whatever it
chooses, the mask is certified from S like every other.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.base import Context, Selector
from dpcli.select.methods.optimization import Optimization

VAL_SHARE = 0.2  # share of every class held out for validation
Z = 2.0  # a rung must beat the first rung by Z paired standard errors
MIN_VAL = 50  # fewer validation samples than this: too noisy to decide anything
HEAD_L2 = 1e-3  # L2 of the validation head on standardized features (the embeddings default)
HEAD_TOL = 1e-6
# the rungs' solves on the fit part stop at their local optimum (no annealing): the rungs differ by far
# more than annealing buys, and four local searches on 80 % of S cost about one annealed solve on all of it
VAL_PROPOSALS = 0
VAL_BUDGET_SHARE = 0.4  # with --time-budget: the rungs' solves share this part of it, the final solve the rest
Z_SWITCH = 1.0  # the challenger must beat a chosen coverage rung by this many paired standard errors


@dataclass(frozen=True)
class Rung:
    """One coverage strength: a name for the line and the optimization options it sets."""

    name: str
    strength: int
    options: dict = field(default_factory=dict)


CHALLENGER = Rung("dual-beta", 4, {"method": "dual-beta"})  # not a coverage strength: a rival rule
PURE = Rung("pure", 0, {})  # the paper's objective alone: --epsilon, or no classes to balance
LADDER: tuple[Rung, ...] = (
    Rung("balanced", 0, {"balance": True}),
    Rung("strata", 1, {"balance": True, "strata": 10}),
    Rung("strata+cutoff", 2, {"balance": True, "strata": 10, "cutoff_ratio": 0.5}),
    Rung("strata+cutoff+features", 3, {"balance": True, "strata": 10, "cutoff_ratio": 0.5, "match_features": True}),
)


@dataclass
class Score:
    """A kept fit-part set scored on the validation part."""

    name: str
    strength: int | None  # None: a reference (no pruning, random), never chosen
    accuracy: float  # %
    loss: float  # mean cross-entropy
    correct: np.ndarray = field(repr=False)  # per validation sample
    keep: np.ndarray = field(repr=False)  # bool over the fit part
    head: tuple | None = field(default=None, repr=False)  # (W, b) of its validation head
    gain: float = 0.0  # accuracy minus the first rung's, percentage points
    noise: float = 0.0  # Z paired standard errors of that gain, percentage points
    lost: int = 0  # classes the first rung keeps and this set does not: never chosen then

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "strength": self.strength, "val_accuracy": float(self.accuracy),
                "val_loss": float(self.loss), "gain_vs_base": float(self.gain), "noise": float(self.noise),
                "n_kept_fit": int(self.keep.sum()), "classes_lost": int(self.lost)}


@dataclass
class Validation:
    """The held-out comparison: the split, every rung's and reference's score, the choice."""

    fit: np.ndarray  # indices into the training set
    val: np.ndarray
    m_fit: int
    scores: list[Score]
    references: list[Score]
    chosen: Rung
    reason: str
    challenger: Score | None = None  # DUAL's Beta sampling, when the dynamics allow it
    challenger_note: str = ""  # why it was not scored, if so


def split(labels: np.ndarray, seed: int, share: float = VAL_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """(fit, val) indices: ``round(share * size)`` of every class with at least two samples held out."""
    rng = np.random.default_rng([seed, 0x6175746F])  # "auto": its own stream, not the solver's
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(share * len(idx))) if len(idx) >= 2 else 0
        val.append(rng.permutation(idx)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    fit = np.ones(len(labels), dtype=bool)
    fit[val_idx] = False
    return np.flatnonzero(fit), val_idx.astype(np.int64)


def standardize(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Features scaled by the mean and spread of ``rows``: the head's L2 then means the same on any backbone."""
    x = np.asarray(features, dtype=np.float64)
    mu = x[rows].mean(0)
    sd = x[rows].std(0)
    sd[sd < 1e-12] = 1.0
    return (x - mu) / sd


def fit_softmax(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = HEAD_L2,
                init: tuple[np.ndarray, np.ndarray] | None = None, device: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) minimizing mean cross-entropy + l2/2 ||[W, b]||^2 (deterministic; dpcli's head fit).

    ``init``: a start (the objective is strictly convex, so it changes the iterations, not the optimum).
    ``device``: where the fit runs (the prune's device: at a million rows the fits dominate auto's cost)."""
    import torch

    from dpcli.influence.head import fit_head

    dev = torch.device(device if device is not None else "cpu")
    start = None if init is None else tuple(torch.from_numpy(np.asarray(t)) for t in init)
    head = fit_head(torch.from_numpy(np.ascontiguousarray(x)).to(dev),
                    torch.from_numpy(np.asarray(y, dtype=np.int64)).to(dev),
                    num_classes, l2, tol=HEAD_TOL, init=start)
    return head.weight.cpu().numpy(), head.bias.cpu().numpy()


def evaluate(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-sample correctness and the mean cross-entropy of a linear head."""
    logits = x @ w.T + b
    top = logits.max(1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(1))
    return logits.argmax(1) == y, float(np.mean(lse - logits[np.arange(len(y)), y]))


def _score(name: str, strength: int | None, keep: np.ndarray, x: np.ndarray, y: np.ndarray, fit: np.ndarray,
           val: np.ndarray, num_classes: int, init: "Score | None" = None, device: Any = None) -> Score:
    """``init``: a scored set whose head starts this fit (the whole fit part's: every kept set is most of
    it, so the refit starts near its optimum; 1.4x faster on a 20,000 x 128, 20-class test)."""
    rows = fit[keep]
    w, b = fit_softmax(x[rows], y[rows], num_classes, init=None if init is None else init.head, device=device)
    correct, loss = evaluate(w, b, x[val], y[val])
    return Score(name, strength, 100.0 * float(correct.mean()), loss, correct, keep, head=(w, b))


def paired_noise(a: np.ndarray, b: np.ndarray, z: float = Z) -> float:
    """``z`` standard errors (percentage points) of mean(a) - mean(b) over the same validation samples."""
    d = a.astype(np.float64) - b.astype(np.float64)
    if len(d) < 2:
        return float("inf")
    return 100.0 * z * float(d.std(ddof=1)) / np.sqrt(len(d))


def ladder(cfg) -> tuple[Rung, ...]:
    """:data:`LADDER`; with ``--buckets`` its first rung is the objective alone, which the bucketed solver
    runs (it has no class quotas)."""
    return (PURE, *LADDER[1:]) if cfg.buckets != 1 else LADDER


def clears(gain: float, noise: float) -> bool:
    """A lead counts only when positive and beyond its noise (infinite with too few validation samples)."""
    return gain > noise and gain > 0


def eligible(s: Score) -> bool:
    """A set that drops a class the first rung keeps can look better on an imbalanced validation part (the
    class is rare there too), but a model trained on it never predicts that class: never chosen."""
    return s.lost == 0


def _lost_note(scores: list[Score]) -> str:
    lost = [f"{s.name} keeps no sample of {s.lost} class{'es' if s.lost > 1 else ''} {scores[0].name} keeps"
            for s in scores[1:] if s.lost]
    return f"; {', '.join(lost)}" if lost else ""


def decide(scores: list[Score], rungs: tuple[Rung, ...] = LADDER) -> tuple[Rung, str]:
    """The first rung unless a later one beats it by more than the noise; then the best such rung."""
    base = scores[0]
    better = [s for s in scores[1:] if clears(s.gain, s.noise) and eligible(s)]
    if not better:
        best = max(scores[1:], key=lambda s: s.gain, default=None)
        if best is None:
            return rungs[0], "no coverage rung could be evaluated"
        return rungs[0], (f"held-out acc {base.accuracy:.1f} % {base.name} vs {best.accuracy:.1f} % "
                           f"{best.name}, ±{best.noise:.1f}")
    top = max(better, key=lambda s: (s.accuracy, -s.strength))
    return rungs[top.strength], (f"held-out acc {top.accuracy:.1f} % vs {base.accuracy:.1f} % {base.name}, "
                                  f"±{top.noise:.1f}")


def challenge(chosen: Score, base: Score, rival: Score) -> tuple[bool, str]:
    """Whether ``rival`` replaces the ladder's choice: it beats the first rung by the Z noise (``rival.gain``
    and ``rival.noise`` are against it) and, where a coverage rung was chosen, that rung by Z_SWITCH."""
    if not clears(rival.gain, rival.noise) or not eligible(rival):
        return False, f"{rival.name} {rival.accuracy:.1f} %"
    if chosen is base:
        return True, (f"held-out acc {rival.accuracy:.1f} % {rival.name} vs {base.accuracy:.1f} % {base.name}, "
                      f"±{rival.noise:.1f}")
    bar = paired_noise(rival.correct, chosen.correct, Z_SWITCH)
    lead = rival.accuracy - chosen.accuracy
    if clears(lead, bar):
        return True, (f"held-out acc {rival.accuracy:.1f} % {rival.name} vs {chosen.accuracy:.1f} % {chosen.name}, "
                      f"±{bar:.1f} ({Z_SWITCH:g} SE); {base.accuracy:.1f} % {base.name}")
    return False, f"{rival.name} {rival.accuracy:.1f} %, ±{bar:.1f}"


def true_class_probs_of(ctx: Context) -> tuple[np.ndarray | None, str]:
    """The true-class probabilities DUAL reads (epochs x n), or None and why not."""
    from dpcli.select.methods.dual import true_class_probs

    if ctx.checkpoint is None and not ctx.has("dynamics"):
        return None, "no training dynamics"
    try:
        return true_class_probs(ctx.dynamics().loss), ""
    except DpcliError as exc:
        return None, str(exc)


def score_challenger(probs: np.ndarray, m_fit: int, seed: int, x: np.ndarray, y: np.ndarray, fit: np.ndarray,
                     val: np.ndarray, num_classes: int, init: Score, device: Any) -> tuple[Score | None, str]:
    """DUAL's Beta sampling on the fit part's dynamics, scored like a rung; None where it cannot run."""
    from dpcli.select.methods.dual_beta import beta_draw

    try:
        pruned = beta_draw(probs[:, fit], m_fit, seed)
    except DpcliError as exc:
        return None, str(exc)
    return _score(CHALLENGER.name, CHALLENGER.strength, ~pruned, x, y, fit, val, num_classes, init=init,
                  device=device), ""


def rung_config(cfg, rung: Rung, time_budget: float | None = None):
    """The optimization configuration of a rung: the user's solver and seed, and ``time_budget`` (its part
    of the user's, which is one budget for the whole prune)."""
    base = dict(method="optimization", balance=False, strata=1, cutoff=0.0, cutoff_ratio=None, match_features=False,
                time_budget=time_budget)
    return dataclasses.replace(cfg, **{**base, **rung.options})


def n_held_out(labels: np.ndarray) -> int:
    """The validation part's size (:func:`split`), from the class sizes alone."""
    return sum(int(round(VAL_SHARE * c)) for c in np.unique(labels, return_counts=True)[1] if c >= 2)


def remaining(cfg, t0: float) -> float | None:
    """What is left of the user's ``--time-budget`` for the final solve (at least a tenth of it)."""
    if cfg.time_budget is None:
        return None
    return max(cfg.time_budget - (time.perf_counter() - t0), 0.1 * cfg.time_budget)


def affordable(rungs: tuple[Rung, ...], ctx: Context, feature_dim: int | None = None, *,
               validating: bool = True) -> tuple[tuple[Rung, ...], str]:
    """The rungs whose covered solves fit ``$DPCLI_SOLVE_BUDGET``, and a note on the rest: on all of S (the
    final solve) and, when ``validating``, on the fit part beside the copy of its rows of S the validation holds.

    Count and feature constraints are dense columns (class x stratum, class x feature), so with many
    classes the later rungs outgrow memory first; the ladder only adds columns, so the rungs that fit
    are a prefix.  Without ``feature_dim`` the feature rung is kept for a second call once it is known.
    """
    from dpcli.env import solve_budget
    from dpcli.select.coverage import count_columns, covered_bytes, solve_dtype

    classes = len(np.unique(ctx.labels))
    itemsize = solve_dtype(ctx.S).itemsize
    budget = solve_budget()
    n_fit, d = ctx.n - n_held_out(ctx.labels), ctx.S.shape[1]
    s_fit = n_fit * d * np.dtype(ctx.S.dtype).itemsize if validating else 0  # validate()'s ctx.S[fit]
    for i, rung in enumerate(rungs):
        o = rung.options
        if o.get("match_features") and feature_dim is None:
            continue
        extra = (count_columns(classes, bool(o.get("balance")), int(o.get("strata", 1)))
                 + (classes * feature_dim if o.get("match_features") else 0))
        # the objective alone (no options) is solved on S itself, without a covered copy
        full = covered_bytes(ctx.n, d, extra, itemsize) if o else 0
        part = covered_bytes(n_fit, d, extra, itemsize) if o else 0
        need = max(full, s_fit + part if validating else 0)
        if need > budget:
            names = ", ".join(r.name for r in rungs[i:])
            return rungs[:i], (f"; {names} skipped: {classes:,} classes make the covered solves "
                               f"{need / 2**30:.1f} GiB, above DPCLI_SOLVE_BUDGET = {budget / 2**30:.1f} GiB")
    return rungs, ""


def validate(ctx: Context, cfg, m: int, features: np.ndarray, difficulty: np.ndarray,
             rungs: tuple[Rung, ...] | None = None,
             probs: tuple[np.ndarray | None, str] = (None, "no training dynamics")) -> Validation:
    """Select with every rung on the fit part, refit the head on each kept set, score on the validation part.

    ``probs``: the true-class probabilities of the training dynamics, or None and why not
    (:func:`true_class_probs_of`); with them DUAL's Beta sampling challenges the ladder's choice
    (:func:`challenge`).  With ``cfg.time_budget`` the rungs' solves share :data:`VAL_BUDGET_SHARE` of it."""
    labels = np.asarray(ctx.labels)
    n = ctx.n
    fit, val = split(labels, cfg.seed)
    classes, y = np.unique(labels, return_inverse=True)
    x = standardize(features, fit)
    m_fit = int(round(m * len(fit) / n))
    fit_labels = labels[fit]
    sub = Context(S=ctx.S[fit], labels=fit_labels, device=ctx.device, proposals=VAL_PROPOSALS)  # in affordable()
    sub.supply(difficulty=np.asarray(difficulty)[fit], features=np.asarray(features)[fit])
    dev = ctx.device
    refs = [_score("no pruning", None, np.ones(len(fit), dtype=bool), x, y, fit, val, len(classes), device=dev)]
    rnd = np.ones(len(fit), dtype=bool)
    rnd[np.random.default_rng([cfg.seed, 1]).choice(len(fit), size=m_fit, replace=False)] = False
    refs.append(_score("random", None, rnd, x, y, fit, val, len(classes), init=refs[0], device=dev))
    scores = []
    rungs = ladder(cfg) if rungs is None else rungs
    share = None if cfg.time_budget is None else VAL_BUDGET_SHARE * cfg.time_budget / len(rungs)
    for rung in rungs:
        pruned, _ = Optimization(rung_config(cfg, rung, share)).select(sub, m_fit, None)
        scores.append(_score(rung.name, rung.strength, ~np.asarray(pruned, dtype=bool), x, y, fit, val,
                             len(classes), init=refs[0], device=dev))
    p, note = probs
    rival, note = (None, note) if p is None else score_challenger(
        p, m_fit, cfg.seed, x, y, fit, val, len(classes), refs[0], dev)
    base_classes = np.unique(fit_labels[scores[0].keep])
    for s in scores + refs + ([rival] if rival else []):
        s.gain = s.accuracy - scores[0].accuracy
        s.noise = paired_noise(s.correct, scores[0].correct)
        s.lost = int(np.count_nonzero(~np.isin(base_classes, fit_labels[s.keep])))
    chosen, reason = decide(scores, rungs)
    reason += _lost_note(scores + ([rival] if rival else []))
    if rival is not None:
        won, why = challenge(next(s for s in scores if s.name == chosen.name), scores[0], rival)
        chosen, reason = (CHALLENGER, why) if won else (chosen, f"{reason}; {why}")
    return Validation(fit, val, m_fit, scores, refs, chosen, reason, rival, note)


# ------------------------------------------------------------------------------------------ signals
def _checkpoint_signals(ctx: Context) -> dict[str, Any]:
    """The full model's last recorded train/test accuracy and loss, when S descends from a checkpoint."""
    if ctx.checkpoint is None:
        return {}
    try:
        from dpcli.train.loop import load_checkpoint

        final = load_checkpoint(ctx.checkpoint, weights=False).final
    except DpcliError:
        return {}
    if final is None:
        return {}
    return {"train_accuracy": final.train_acc, "train_loss": final.train_loss, "test_accuracy": final.test_acc,
            "test_loss": final.test_loss, "generalization_gap": final.train_acc - final.test_acc}


def _difficulty(ctx: Context, features: np.ndarray) -> tuple[np.ndarray, str]:
    """Mean training loss from the dynamics; else the influence artifact's per-sample loss; else the
    loss of a linear head fitted on all features."""
    if ctx.checkpoint is not None:
        try:
            return ctx.difficulty(), "mean training loss (dynamics)"
        except DpcliError:
            pass
    loss = ctx.influence_loss()
    if loss is not None:
        return loss, "per-sample loss at the trained model"
    classes, y = np.unique(ctx.labels, return_inverse=True)
    x = standardize(features, np.arange(ctx.n))
    w, b = fit_softmax(x, y, len(classes))
    logits = x @ w.T + b
    top = logits.max(1, keepdims=True)
    loss = top[:, 0] + np.log(np.exp(logits - top).sum(1)) - logits[np.arange(ctx.n), y]
    return loss, "per-sample loss of a linear head on the features"


def _features(ctx: Context) -> tuple[np.ndarray | None, str]:
    if ctx.has("features"):
        return ctx.features(), ""
    if ctx.checkpoint is None and ctx.influence is None:
        return None, "S has no known model or features (give features= in the API)"
    try:
        return ctx.features(), ""
    except DpcliError as exc:
        return None, f"no features to validate on ({exc})"


class Auto(Selector):
    name = "auto"
    help = ("the default: the paper's objective within class quotas, moved toward coverage (strata, hard cutoff, "
            "feature matching) or DUAL's Beta sampling only when a held-out linear-head check says so; "
            "says what it chose")
    epsilon_mode = True
    coverage = True  # explicit coverage options are run as given
    solves = True

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        cfg = self.cfg
        t0 = time.perf_counter()
        if cfg.uses_coverage:
            pruned, label = Optimization(dataclasses.replace(cfg, method="optimization")).select(ctx, m, epsilon)
            self._record(ctx, None, "given", None, "coverage options given explicitly; running them as given",
                         pruned, t0, {})
            return pruned, label
        why = self._why_not(ctx, m)
        rungs, over = affordable(ladder(cfg), ctx, validating=why is None)
        if why is None and len(rungs) < 2:
            why = f"no coverage rung to compare{over}"
        features = None
        if why is None:
            features, why = _features(ctx)
            why = why or None
        if why is None:
            features = np.asarray(features)
            if features.ndim != 2 or features.shape[0] != ctx.n:
                raise DpcliError(f"features have shape {features.shape}, S has {ctx.n} rows")
            rungs, over = affordable(rungs, ctx, features.shape[1])
            if len(rungs) < 2:
                why = f"no coverage rung to compare{over}"
        if why is not None:
            # class quotas need a count, two classes and room for their columns; else the objective alone
            rung = ladder(cfg)[0] if m is not None and len(np.unique(ctx.labels)) >= 2 and rungs else PURE
            pruned, label = Optimization(rung_config(cfg, rung, cfg.time_budget)).select(ctx, m, epsilon)
            self._record(ctx, rung, rung.name, None, why, pruned, t0, {})
            return pruned, label
        diff, source = _difficulty(ctx, features)
        ctx.supply(difficulty=diff)
        probs = true_class_probs_of(ctx)
        v = validate(ctx, cfg, m, features, diff, rungs, probs=probs)
        if over:
            v.reason += over
        measured = time.perf_counter() - t0  # features, difficulty and the validation, before the final solve
        if v.chosen is CHALLENGER:
            from dpcli.select.methods.dual_beta import beta_draw

            pruned, label = beta_draw(probs[0], m, cfg.seed), CHALLENGER.name
        else:
            pruned, label = Optimization(rung_config(cfg, v.chosen, remaining(cfg, t0))).select(ctx, m, None)
        self._record(ctx, v.chosen, v.chosen.name, v, v.reason, pruned, t0,
                     {"difficulty_source": source, "feature_dim": int(features.shape[1]),
                      "validation_seconds": measured})
        return pruned, label

    def _why_not(self, ctx: Context, m: int | None) -> str | None:
        """Why no validation is possible, or None."""
        if m is None:
            return "--epsilon asks for the largest set within the norm bound, which coverage can only shrink"
        if len(np.unique(ctx.labels)) < 2:
            return "no class labels to validate with"
        n_val = n_held_out(ctx.labels)
        m_fit = int(round(m * (ctx.n - n_val) / max(ctx.n, 1)))
        if n_val < MIN_VAL:
            return f"too few samples to validate ({n_val} held out, at least {MIN_VAL} needed)"
        if m_fit < 1 or m_fit >= ctx.n - n_val:
            return "the prune count leaves nothing to compare on the fit part"
        return None

    def _record(self, ctx: Context, rung: Rung | None, coverage: str, v: Validation | None, reason: str,
                pruned: np.ndarray, t0: float, extra: dict) -> None:
        keep = ~np.asarray(pruned, dtype=bool)
        classes, counts = np.unique(np.asarray(ctx.labels)[keep], return_counts=True)
        signals = {"n": ctx.n, "n_kept": int(keep.sum()), "keep_share": float(keep.mean()),
                   "kept_per_class": {str(int(c)): int(k) for c, k in zip(classes, counts)},
                   **_checkpoint_signals(ctx), **extra}
        line = f"auto: coverage={coverage} ({reason})"
        if v is not None:
            signals.update({"n_fit": int(len(v.fit)), "n_val": int(len(v.val)), "m_fit": v.m_fit})
        ctx.record["auto"] = {
            "chosen": coverage, "strength": None if rung is None else rung.strength,
            "options": None if rung is None else rung.options, "decided_by": "validation" if v else "rule",
            "reason": reason, "line": line, "z": Z, "z_switch": Z_SWITCH, "val_share": VAL_SHARE,
            "head_l2": HEAD_L2,
            "split_seed": int(self.cfg.seed),
            "candidates": [] if v is None else [s.to_dict() for s in v.scores],
            "challenger": None if v is None or v.challenger is None else v.challenger.to_dict(),
            "challenger_skipped": "" if v is None or v.challenger is not None else v.challenger_note,
            "references": [] if v is None else [s.to_dict() for s in v.references],
            "signals": signals, "seconds": time.perf_counter() - t0,
        }
