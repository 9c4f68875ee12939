"""Every selector behind ``prune --method``, reduced to one call that returns the pruned mask.

``optimization`` is the paper's (Eq. 3/4 on S, optionally under coverage constraints,
:mod:`dpcli.coverage`); the rest are the published baselines (:mod:`dpcli.baselines`,
:mod:`dpcli.scores`).  All of them see the same S, so every mask is certified and reports
its ``||sum S_i||``, and all of them write the same mask artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dpcli.select.baselines import rules as baselines
from dpcli.select import solvers as selection
from dpcli.config import PruneConfig
from dpcli.select.coverage import Coverage, maximize_pruned_covered, minimize_norm_covered
from dpcli.data.sources import Dataset, load_dataset
from dpcli.train.dynamics import default_snapshot_epochs
from dpcli.errors import DpcliError


@dataclass
class Context:
    """What a selector may need beyond S; the dataset and model are loaded only on demand."""

    S: np.ndarray
    labels: np.ndarray
    checkpoint: Path
    device: torch.device
    data_root: Path | None = None
    ds: Dataset | None = None
    progress: object = None

    def dataset(self) -> Dataset:
        if self.ds is None:
            from dpcli.train.loop import load_checkpoint

            self.ds = load_dataset(load_checkpoint(self.checkpoint, weights=False).config.dataset, self.data_root)
        return self.ds


def prune_count(cfg: PruneConfig, n: int) -> int | None:
    if cfg.epsilon is not None:
        return None
    return cfg.count if cfg.count is not None else selection.count_from_ratio(n, cfg.ratio)


def select(cfg: PruneConfig, ctx: Context) -> tuple[np.ndarray, str]:
    """The pruned mask chosen by ``cfg.method`` and a label for the solver/rule used."""
    n = ctx.S.shape[0]
    m = prune_count(cfg, n)
    method = cfg.method
    if method == "optimization":
        return _optimization(cfg, ctx, m)
    rng = np.random.default_rng(cfg.seed)
    if method == "random":
        return baselines.random_prune(n, m, rng), "random"
    if method == "herding":
        return baselines.herding(_features(ctx), ctx.labels, m), "herding"
    if method == "ccs":
        cutoff = baselines.ccs_cutoff(m / n) if cfg.cutoff is None else cfg.cutoff
        return baselines.ccs(_difficulty(ctx), m, rng, cutoff=cutoff), f"ccs(cutoff={cutoff:g})"
    scores = _scores(method, cfg, ctx)
    if m is not None:
        return baselines.prune_lowest(scores, m), method
    return _longest_prefix(ctx.S, scores, cfg.epsilon), method


def _optimization(cfg: PruneConfig, ctx: Context, m: int | None) -> tuple[np.ndarray, str]:
    cutoff = cfg.cutoff
    if cfg.cutoff is None or cfg.cutoff_ratio is not None:  # relative to the prune share
        if m is None:
            raise DpcliError("--hard-cutoff auto / Fx needs a prune ratio or count")
        share = m / ctx.S.shape[0]
        cutoff = min(baselines.ccs_cutoff(share) if cfg.cutoff is None else cfg.cutoff_ratio * share, 0.999999)
    cov = Coverage(balance=cfg.balance, strata=cfg.strata, cutoff=cutoff)
    needs_difficulty = cov.strata > 1 or cov.cutoff > 0
    diff = _difficulty(ctx) if needs_difficulty else None
    label = (f"{cfg.solver}+coverage(balance={cov.balance},strata={cov.strata},cutoff={cov.cutoff:g})")
    if m is None:
        return maximize_pruned_covered(ctx.S, cfg.epsilon, ctx.labels, diff, cov, seed=cfg.seed,
                                       solver=cfg.solver), label
    feats = _features(ctx) if cfg.match_features else None
    if feats is not None:
        label += "+features"
    return minimize_norm_covered(ctx.S, m, ctx.labels, diff, cov, seed=cfg.seed, solver=cfg.solver,
                                 time_budget=cfg.time_budget, progress=ctx.progress, features=feats), label


def _scores(method: str, cfg: PruneConfig, ctx: Context) -> np.ndarray:
    from dpcli.select import signals as scores
    from dpcli.train.loop import load_checkpoint

    if method == "influence-score":  # the individual influence, no group effect
        return np.sqrt(np.einsum("ij,ij->i", ctx.S.astype(np.float64), ctx.S.astype(np.float64)))
    if method == "forgetting":
        return baselines.forgetting_counts(scores.load_dynamics(ctx.checkpoint, snapshots=False).correct)
    if method == "tdds":
        return baselines.tdds_scores(scores.load_dynamics(ctx.checkpoint, snapshots=False).loss)
    ck = load_checkpoint(ctx.checkpoint, weights=False)  # el2n / grand use its config and snapshots only
    ds = ctx.dataset()
    epoch = cfg.score_epoch if cfg.score_epoch is not None else default_snapshot_epochs(ck.config.epochs)[1]
    if method == "grand" and cfg.score_epoch is None:
        epoch = 0  # GraNd is defined at initialization (Paul et al., 2021)
    if epoch > ck.config.epochs:
        raise DpcliError(f"--score-epoch {epoch} exceeds the {ck.config.epochs} training epochs")
    states = scores.snapshot_states(ck, ds, epoch, cfg.score_seeds, ctx.device)
    if method == "el2n":
        return scores.el2n_scores(ck, ds, states, ctx.device)
    return scores.grand_scores(ck, ds, states, ctx.device)


def _difficulty(ctx: Context) -> np.ndarray:
    from dpcli.select import signals as scores

    return scores.difficulty(scores.load_dynamics(ctx.checkpoint, snapshots=False))


def _features(ctx: Context) -> np.ndarray:
    from dpcli.train.loop import extract_features, load_trained

    model, _, ds = load_trained(ctx.checkpoint, ctx.device, ctx.data_root, ctx.ds)
    ctx.ds = ds
    return extract_features(model, ds.train, ds, ctx.device).cpu().numpy()


def _longest_prefix(S: np.ndarray, scores: np.ndarray, epsilon: float) -> np.ndarray:
    """Epsilon mode for a score rule: prune in score order as long as ||sum S_i|| <= epsilon."""
    order = np.lexsort((np.arange(len(scores)), scores))
    running = np.zeros(S.shape[1])
    best = 0
    for start in range(0, len(order), 4096):
        block = np.cumsum(S[order[start:start + 4096]].astype(np.float64), axis=0) + running
        ok = np.flatnonzero(np.linalg.norm(block, axis=1) <= epsilon)
        if len(ok):
            best = max(best, start + int(ok[-1]) + 1)
        running = block[-1]
    pruned = np.zeros(len(scores), dtype=bool)
    pruned[order[:best]] = True
    return pruned
