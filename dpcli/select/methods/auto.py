"""The default selector: every selection dpcli composes is a candidate; a held-out linear head picks one.

Minimizing ``||sum_W S_i||`` alone keeps the hard samples.  Sorscher et al. (2022) show, for linear
classifiers, that keeping the hard samples is right when data is abundant and keeping the easy ones
when it is scarce; no selector leads in every regime of docs/benchmarks.md.  A user cannot know the
regime, so ``auto`` measures it, cheaply, with the model the theory is about:

1. split the training set (seeded, stratified by class) into a fit part and a validation part;
2. select the same prune share on the fit part with every candidate (feature matching through a sketch of the
   features): the objective within class quotas
   (``balanced``), the objective alone (``pure``), the coverage rungs (+ difficulty strata, + hard cutoff,
   + feature matching), DUAL's Beta sampling (``dual-beta``, where the checkpoint recorded training
   dynamics) and class-stratified random pruning (``random-stratified``);
3. refit an L2-regularized softmax head on each kept set's penultimate features (standardized,
   deterministic Newton-CG) and score it on the validation part;
4. take the best eligible candidate; every candidate within :data:`Z` paired standard errors of it (the
   noise of the difference on the same validation samples) is tied with it, and a tie goes to the
   candidate that retrained best across the grid's regimes at the nearest prune share
   (:data:`TIE_ORDER`, derived from benchmarks/results/grid by ``benchmarks/auto_evidence.py --prior``);
5. run the choice on all of S.

A candidate is eligible unless its kept set drops a class the first candidate keeps, or keeps fewer than
:data:`SHARE_FLOOR` of some class's proportional share: the objective alone is not forced into class
quotas but checked (on digits at 90 % it kept 5 samples of one class and 23 of another, which costs a
network trained from scratch far more than the validation's head on full-data features can show).

The head cannot tell the candidates apart on most data-rich sets (all approach the full-data accuracy),
so ties are the common case and the table decides them; it ranks by retrained accuracy, which the head
does not see.  No rule reads a dataset's name.  Without features (an external S with no lineage, the API
without ``features=``), without two classes, with too few samples to validate, or with ``--epsilon`` (the
largest set within a norm bound: coverage constraints can only shrink it), it skips the validation and
says why: it runs the objective within class quotas, or alone with ``--epsilon`` or a single class.
Rungs whose covered solve on all of S would pass ``$DPCLI_SOLVE_BUDGET`` are dropped from the end of the
ladder (their constraint columns grow with the classes), and the line says so.  Explicit coverage options
are the user's choice and are run as given.  Whatever it chooses, the mask is certified from S like every other.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select import heldout
from dpcli.select.base import Context, Selector
from dpcli.select.heldout import HEAD_L2, Z, evaluate, fit_softmax, paired_noise, sketch_rows, sketch_width, standardize
from dpcli.select.methods.optimization import Optimization

VAL_SHARE = 0.2  # share of every class held out for validation
MIN_VAL = 50  # fewer validation samples than this: too noisy to decide anything
# the candidates' solves on the fit part stop at their local optimum (no annealing): the candidates differ by far
# more than annealing buys, and five local searches on 80 % of S cost less than one annealed solve on all of it
VAL_PROPOSALS = 0
VAL_BUDGET_SHARE = 0.4  # with --time-budget: the candidates' solves share this part of it, the final solve the rest
SHARE_FLOOR = 0.5  # a kept set with a class below this share of its proportional quota is never chosen


@dataclass(frozen=True)
class Rung:
    """One candidate: a name for the line and the options it sets (the optimization's, or another method)."""

    name: str
    strength: int  # the coverage strength of the objective's variants; 4, 5: rival rules
    options: dict = field(default_factory=dict)

    @property
    def solved(self) -> bool:
        """A variant of the paper's objective (an optimization solve), not a rival rule."""
        return "method" not in self.options


PURE = Rung("pure", 0, {})  # the paper's objective alone
LADDER: tuple[Rung, ...] = (
    Rung("balanced", 0, {"balance": True}),
    Rung("strata", 1, {"balance": True, "strata": 10}),
    Rung("strata+cutoff", 2, {"balance": True, "strata": 10, "cutoff_ratio": 0.5}),
    Rung("strata+cutoff+features", 3, {"balance": True, "strata": 10, "cutoff_ratio": 0.5, "match_features": True}),
)
DUAL_BETA = Rung("dual-beta", 4, {"method": "dual-beta"})  # where the checkpoint recorded training dynamics
STRATIFIED = Rung("random-stratified", 5, {"method": "random-stratified"})
# Who wins a tie on the validation, per prune share of the grid (the nearest share applies): the candidates in
# ascending mean regret (best retrained accuracy of any selector minus the candidate's, points) over the regimes of
# benchmarks/results/grid, written by `python3 benchmarks/auto_evidence.py --prior` (docs/benchmarks.md).
TIE_ORDER: dict[float, tuple[str, ...]] = {
    0.9: ("dual-beta", "random-stratified", "strata+cutoff+features", "pure", "balanced", "strata", "strata+cutoff"),
    0.7: ("dual-beta", "random-stratified", "balanced", "strata+cutoff+features", "pure", "strata", "strata+cutoff"),
    0.5: ("random-stratified", "dual-beta", "pure", "balanced", "strata+cutoff+features", "strata", "strata+cutoff"),
    0.3: ("random-stratified", "dual-beta", "pure", "balanced", "strata+cutoff+features", "strata", "strata+cutoff"),
}


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
    gain: float = 0.0  # accuracy minus the first candidate's, percentage points
    noise: float = 0.0  # Z paired standard errors of that gain, percentage points
    lost: int = 0  # classes the first candidate keeps and this set does not: never chosen then
    short: int = 0  # classes kept below SHARE_FLOOR of their quota: never chosen then
    behind: float = 0.0  # the best eligible candidate's accuracy minus this one's, points
    spread: float = 0.0  # Z paired standard errors of that difference: tied where behind <= spread
    tied: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "strength": self.strength,
            "val_accuracy": float(self.accuracy),
            "val_loss": float(self.loss),
            "gain_vs_base": float(self.gain),
            "noise": float(self.noise),
            "n_kept_fit": int(self.keep.sum()),
            "classes_lost": int(self.lost),
            "classes_short": int(self.short),
            "behind_best": float(self.behind),
            "spread": float(self.spread),
            "tied": bool(self.tied),
        }


@dataclass
class Validation:
    """The held-out comparison: the split, every candidate's and reference's score, the choice."""

    fit: np.ndarray  # indices into the training set
    val: np.ndarray
    m_fit: int
    scores: list[Score]
    references: list[Score]
    chosen: Rung
    reason: str
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not scored


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


def _score(
    name: str,
    strength: int | None,
    keep: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    fit: np.ndarray,
    val: np.ndarray,
    num_classes: int,
    init: "Score | None" = None,
    device: Any = None,
) -> Score:
    """``init``: a scored set whose head starts this fit (the whole fit part's: every kept set is most of
    it, so the refit starts near its optimum; 1.4x faster on a 20,000 x 128, 20-class test)."""
    rows = fit[keep]
    w, b = fit_softmax(x[rows], y[rows], num_classes, init=None if init is None else init.head, device=device)
    correct, loss = evaluate(w, b, x[val], y[val])
    return Score(name, strength, 100.0 * float(correct.mean()), loss, correct, keep, head=(w, b))


def ladder(cfg) -> tuple[Rung, ...]:
    """:data:`LADDER`; with ``--buckets`` its first rung is the objective alone, which the bucketed solver
    runs (it has no class quotas)."""
    return (PURE, *LADDER[1:]) if cfg.buckets != 1 else LADDER


def candidates(rungs: tuple[Rung, ...], dynamics: bool) -> tuple[Rung, ...]:
    """The affordable rungs with the objective alone second (it needs no covered copy), then the rival rules."""
    solved = rungs if not rungs or rungs[0] is PURE else (rungs[0], PURE, *rungs[1:])
    return (*solved, *((DUAL_BETA,) if dynamics else ()), STRATIFIED)


def eligible(s: Score) -> bool:
    """A set that drops a class the first candidate keeps, or starves one, can look better on an imbalanced
    validation part (the class is rare there too), but a model trained on it rarely predicts that class."""
    return s.lost == 0 and s.short == 0


def short_classes(kept_labels: np.ndarray, labels: np.ndarray) -> int:
    """Classes of ``labels`` that keep fewer than :data:`SHARE_FLOOR` of their proportional share of the kept set."""
    from dpcli.select.scoring import proportional_counts

    classes, sizes = np.unique(labels, return_counts=True)
    quota = proportional_counts(sizes, len(kept_labels))
    have = np.bincount(np.searchsorted(classes, kept_labels), minlength=len(classes))
    return int(np.count_nonzero(have < SHARE_FLOOR * quota))


def grid_share(share: float) -> float:
    """The grid's prune share nearest ``share`` (a key of :data:`TIE_ORDER`)."""
    return min(TIE_ORDER, key=lambda r: (abs(r - share), r))


def tie_order(share: float) -> tuple[str, ...]:
    return TIE_ORDER[grid_share(share)]


def prior_rank(name: str, share: float) -> int:
    """``name``'s place in the tie order at ``share``; unlisted names last."""
    order = tie_order(share)
    return order.index(name) if name in order else len(order)


def _excluded_note(scores: list[Score]) -> str:
    out = [
        f"{s.name} keeps no sample of {s.lost} class{'es' if s.lost > 1 else ''} {scores[0].name} keeps"
        for s in scores[1:]
        if s.lost
    ]
    out += [
        f"{s.name} keeps under {100 * SHARE_FLOOR:.0f} % of its share of {s.short} class{'es' if s.short > 1 else ''}"
        for s in scores
        if s.short and not s.lost
    ]
    return f"; {', '.join(out)}" if out else ""


def decide(scores: list[Score], share: float) -> tuple[Score, str]:
    """The best eligible candidate, or, where others are within its paired noise, the tie's first in
    :data:`TIE_ORDER` at ``share``; marks each score's distance to the best and whether it tied."""
    ok = [s for s in scores if eligible(s)] or scores[:1]
    best = max(ok, key=lambda s: s.accuracy)
    for s in scores:
        s.behind = best.accuracy - s.accuracy
        s.spread = paired_noise(best.correct, s.correct)
        s.tied = any(s is o for o in ok) and s.behind <= s.spread
    tied = [s for s in ok if s.tied]
    pick = min(tied, key=lambda s: prior_rank(s.name, share))
    if len(tied) == 1:
        rest = [s for s in ok if s is not best]
        if not rest:
            return best, f"held-out acc {best.accuracy:.1f} % {best.name}, no other eligible candidate"
        second = max(rest, key=lambda s: s.accuracy)
        return best, (
            f"held-out acc {best.accuracy:.1f} % {best.name} vs {second.accuracy:.1f} % {second.name}, "
            f"±{second.spread:.1f}"
        )
    names = ", ".join(s.name for s in sorted(tied, key=lambda s: prior_rank(s.name, share)) if s is not pick)
    return pick, (
        f"held-out acc {best.accuracy:.1f} % {best.name}; tied within ±{max(s.spread for s in tied):.1f}: "
        f"{pick.name} ({pick.accuracy:.1f} %) retrained best in the grid at {100 * grid_share(share):.0f} % "
        f"pruned, before {names}"
    )


def true_class_probs_of(ctx: Context) -> tuple[np.ndarray | None, str]:
    """The true-class probabilities DUAL reads (epochs x n), or None and why not."""
    from dpcli.select.methods.dual import true_class_probs

    if ctx.checkpoint is None and not ctx.has("dynamics"):
        return None, "no training dynamics"
    try:
        return true_class_probs(ctx.dynamics().loss), ""
    except DpcliError as exc:
        return None, str(exc)


def rung_config(cfg, rung: Rung, time_budget: float | None = None):
    """The configuration of a candidate: the user's solver and seed, and ``time_budget`` (its part of the
    user's, which is one budget for the whole prune)."""
    base = dict(
        method="optimization",
        balance=False,
        strata=1,
        cutoff=0.0,
        cutoff_ratio=None,
        match_features=False,
        time_budget=time_budget,
    )
    return dataclasses.replace(cfg, **{**base, **rung.options})


def run_rung(
    rung: Rung, cfg, ctx: Context, m: int, probs: np.ndarray | None, time_budget: float | None = None
) -> tuple[np.ndarray, str]:
    """The pruned mask and label of ``rung`` on ``ctx`` (the fit part's or all of S); ``probs``: DUAL's
    true-class probabilities of ``ctx``'s rows."""
    if rung is DUAL_BETA:
        from dpcli.select.methods.dual_beta import beta_draw

        assert probs is not None  # the callers pass DUAL's probabilities whenever the ladder holds dual-beta
        return beta_draw(probs, m, cfg.seed), rung.name
    if rung is STRATIFIED:
        from dpcli.select.methods.random_stratified import stratified_prune

        return stratified_prune(ctx.labels, m, cfg.seed), rung.name
    return Optimization(rung_config(cfg, rung, time_budget)).select(ctx, m, None)


def n_held_out(labels: np.ndarray) -> int:
    """The validation part's size (:func:`split`), from the class sizes alone."""
    return sum(int(round(VAL_SHARE * c)) for c in np.unique(labels, return_counts=True)[1] if c >= 2)


def remaining(cfg, t0: float) -> float | None:
    """What is left of the user's ``--time-budget`` for the final solve (at least a tenth of it)."""
    if cfg.time_budget is None:
        return None
    return max(cfg.time_budget - (time.perf_counter() - t0), 0.1 * cfg.time_budget)


def affordable(
    rungs: tuple[Rung, ...], ctx: Context, feature_dim: int | None = None, *, validating: bool = True
) -> tuple[tuple[Rung, ...], str]:
    """The rungs whose covered solves fit ``$DPCLI_SOLVE_BUDGET``, and a note on the rest: on all of S (the
    final solve) and, when ``validating``, on the fit part (its features sketched) beside the copy of its rows of S
    the validation holds.

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
        counts = count_columns(classes, bool(o.get("balance")), int(o.get("strata", 1)))
        feats = feature_dim if o.get("match_features") and feature_dim is not None else 0
        # the objective alone (no options) is solved on S itself, without a covered copy
        full = covered_bytes(ctx.n, d, counts + classes * feats, itemsize) if o else 0
        part = covered_bytes(n_fit, d, counts + classes * sketch_width(feats), itemsize) if o else 0  # sketched
        need = max(full, s_fit + part if validating else 0)
        if need > budget:
            names = ", ".join(r.name for r in rungs[i:])
            return rungs[:i], (
                f"; {names} skipped: {classes:,} classes make the covered solves "
                f"{need / 2**30:.1f} GiB, above DPCLI_SOLVE_BUDGET = {budget / 2**30:.1f} GiB"
            )
    return rungs, ""


def validate(
    ctx: Context,
    cfg,
    m: int,
    features: np.ndarray,
    difficulty: np.ndarray,
    rungs: tuple[Rung, ...] | None = None,
    probs: tuple[np.ndarray | None, str] = (None, "no training dynamics"),
) -> Validation:
    """Select with every candidate on the fit part, refit the head on each kept set, score on the validation part.

    ``rungs``: the affordable coverage rungs (:func:`candidates` adds the objective alone and the rival rules);
    ``probs``: the true-class probabilities of the training dynamics, or None and why not
    (:func:`true_class_probs_of`), for DUAL's Beta sampling.  With ``cfg.time_budget`` the solves share
    :data:`VAL_BUDGET_SHARE` of it."""
    labels = np.asarray(ctx.labels)
    fit, val = split(labels, cfg.seed)
    classes, y = np.unique(labels, return_inverse=True)
    x = standardize(features, fit)
    m_fit = int(round(m * len(fit) / ctx.n))
    fit_labels = labels[fit]
    sub = Context(S=ctx.S[fit], labels=fit_labels, device=ctx.device, proposals=VAL_PROPOSALS)  # in affordable()
    sub.supply(
        difficulty=np.asarray(difficulty)[fit],
        features=sketch_rows(np.asarray(features), fit, heldout.FEATURE_SKETCH, cfg.seed),
    )
    dev = ctx.device
    refs = [_score("no pruning", None, np.ones(len(fit), dtype=bool), x, y, fit, val, len(classes), device=dev)]
    rnd = np.ones(len(fit), dtype=bool)
    rnd[np.random.default_rng([cfg.seed, 1]).choice(len(fit), size=m_fit, replace=False)] = False
    refs.append(_score("random", None, rnd, x, y, fit, val, len(classes), init=refs[0], device=dev))
    p, p_note = probs
    cands = candidates(ladder(cfg) if rungs is None else rungs, p is not None)
    share = None if cfg.time_budget is None else VAL_BUDGET_SHARE * cfg.time_budget / sum(r.solved for r in cands)
    scores, skipped = [], {} if p is not None else {DUAL_BETA.name: p_note}
    for rung in cands:
        try:
            pruned, _ = run_rung(rung, cfg, sub, m_fit, None if p is None else p[:, fit], share)
        except DpcliError as exc:  # DUAL refuses dynamics that miss a sample, or whose weights are not finite
            if rung.solved:
                raise
            skipped[rung.name] = str(exc)
            continue
        scores.append(
            _score(
                rung.name,
                rung.strength,
                ~np.asarray(pruned, dtype=bool),
                x,
                y,
                fit,
                val,
                len(classes),
                init=refs[0],
                device=dev,
            )
        )
    base_classes = np.unique(fit_labels[scores[0].keep])
    for s in scores + refs:
        s.gain = s.accuracy - scores[0].accuracy
        s.noise = paired_noise(s.correct, scores[0].correct)
        s.lost = int(np.count_nonzero(~np.isin(base_classes, fit_labels[s.keep])))
        s.short = short_classes(fit_labels[s.keep], fit_labels)
    pick, reason = decide(scores, m / ctx.n)
    reason += _excluded_note(scores)
    return Validation(fit, val, m_fit, scores, refs, next(r for r in cands if r.name == pick.name), reason, skipped)


# ------------------------------------------------------------------------------------------ signals
def _checkpoint_signals(ctx: Context) -> dict[str, Any]:
    """The full model's last recorded train/test accuracy and loss, when S descends from a checkpoint."""
    if ctx.checkpoint is None:
        return {}
    try:
        from dpcli.train.checkpoint import load_checkpoint

        final = load_checkpoint(ctx.checkpoint, weights=False).final
    except DpcliError:
        return {}
    if final is None:
        return {}
    return {
        "train_accuracy": final.train_acc,
        "train_loss": final.train_loss,
        "test_accuracy": final.test_acc,
        "test_loss": final.test_loss,
        "generalization_gap": final.train_acc - final.test_acc,
    }


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
    help = (
        "the default: the paper's objective within class quotas or alone, its coverage variants, DUAL's Beta "
        "sampling or class-stratified random, whichever a held-out linear-head check prefers (ties go to the "
        "one that retrained best in dpcli's grid); says what it chose"
    )
    epsilon_mode = True
    coverage = True  # explicit coverage options are run as given
    solves = True

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        cfg = self.cfg
        t0 = time.perf_counter()
        if cfg.uses_coverage:
            pruned, label = Optimization(dataclasses.replace(cfg, method="optimization")).select(ctx, m, epsilon)
            self._record(
                ctx, None, "given", None, "coverage options given explicitly; running them as given", pruned, t0, {}
            )
            return pruned, label
        why = self._why_not(ctx, m)
        rungs, over = affordable(ladder(cfg), ctx, validating=why is None)
        if why is None and not rungs:
            why = f"no candidate to compare{over}"
        features = None
        if why is None:
            features, why = _features(ctx)
            why = why or None
        if why is None:
            features = np.asarray(features)
            if features.ndim != 2 or features.shape[0] != ctx.n:
                raise DpcliError(f"features have shape {features.shape}, S has {ctx.n} rows")
            rungs, more = affordable(rungs, ctx, features.shape[1])
            over = more or over  # the first call's note stands where it dropped the tail already
        if why is not None:
            # class quotas need a count, two classes and room for their columns; else the objective alone
            rung = ladder(cfg)[0] if m is not None and len(np.unique(ctx.labels)) >= 2 and rungs else PURE
            pruned, label = Optimization(rung_config(cfg, rung, cfg.time_budget)).select(ctx, m, epsilon)
            self._record(ctx, rung, rung.name, None, why, pruned, t0, {})
            return pruned, label
        assert m is not None and features is not None  # _why_not refuses no count; _features gave them or a why
        diff, source = _difficulty(ctx, features)
        ctx.supply(difficulty=diff)
        probs = true_class_probs_of(ctx)
        v = validate(ctx, cfg, m, features, diff, rungs, probs=probs)
        if over:
            v.reason += over
        measured = time.perf_counter() - t0  # features, difficulty and the validation, before the final solve
        pruned, label = run_rung(v.chosen, cfg, ctx, m, probs[0], remaining(cfg, t0))
        self._record(
            ctx,
            v.chosen,
            v.chosen.name,
            v,
            v.reason,
            pruned,
            t0,
            {"difficulty_source": source, "feature_dim": int(features.shape[1]), "validation_seconds": measured},
        )
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

    def _record(
        self,
        ctx: Context,
        rung: Rung | None,
        coverage: str,
        v: Validation | None,
        reason: str,
        pruned: np.ndarray,
        t0: float,
        extra: dict,
    ) -> None:
        keep = ~np.asarray(pruned, dtype=bool)
        classes, counts = np.unique(np.asarray(ctx.labels)[keep], return_counts=True)
        signals = {
            "n": ctx.n,
            "n_kept": int(keep.sum()),
            "keep_share": float(keep.mean()),
            "kept_per_class": {str(int(c)): int(k) for c, k in zip(classes, counts)},
            **_checkpoint_signals(ctx),
            **extra,
        }
        line = f"auto: coverage={coverage} ({reason})"
        if v is not None:
            signals.update({"n_fit": int(len(v.fit)), "n_val": int(len(v.val)), "m_fit": v.m_fit})
        ctx.record["auto"] = {
            "chosen": coverage,
            "strength": None if rung is None else rung.strength,
            "options": None if rung is None else rung.options,
            "decided_by": "validation" if v else "rule",
            "reason": reason,
            "line": line,
            "z": Z,
            "val_share": VAL_SHARE,
            "head_l2": HEAD_L2,
            "share_floor": SHARE_FLOOR,
            "split_seed": int(self.cfg.seed),
            "tie_order": [] if v is None else list(tie_order(float(np.mean(pruned)))),
            "candidates": [] if v is None else [s.to_dict() for s in v.scores],
            "skipped": {} if v is None else v.skipped,
            "references": [] if v is None else [s.to_dict() for s in v.references],
            "signals": signals,
            "seconds": time.perf_counter() - t0,
        }
