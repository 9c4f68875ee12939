"""The paper's selector (Yang et al., ICLR 2023): Eq. 3 / Eq. 4 solved on S, optionally under coverage.

Without coverage options this is the plain discrete problem (``--solver``, ``--buckets``); with
``--balance``, ``--strata``, ``--hard-cutoff`` or ``--match-features`` the same objective is solved
under per-group counts (:mod:`dpcli.select.coverage`).
"""

from __future__ import annotations

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select import solvers
from dpcli.select.base import Context, Selector
from dpcli.select.methods.ccs import resolve_cutoff


class Optimization(Selector):
    name = "optimization"
    help = "the paper's objective alone: Eq. 3 (epsilon) / Eq. 4 (count) on S"
    epsilon_mode = True
    coverage = True
    solves = True

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        cfg = self.cfg
        if cfg.uses_coverage:
            return self._covered(ctx, m)
        if cfg.buckets != 1:
            from dpcli.select.buckets import solve_bucketed

            sel = solve_bucketed(
                ctx.S,
                m=m,
                epsilon=epsilon,
                buckets=cfg.buckets,
                workers=cfg.workers,
                solver=cfg.solver,
                time_budget=cfg.time_budget,
                seed=cfg.seed,
                progress=ctx.progress,
            )
        elif m is None:
            assert epsilon is not None  # base.select gives one of m and epsilon
            sel = solvers.maximize_pruned(
                ctx.S,
                epsilon,
                solver=cfg.solver,
                time_budget=cfg.time_budget,
                seed=cfg.seed,
                progress=ctx.progress,
                device=ctx.device,
            )
        else:
            sel = solvers.minimize_norm(
                ctx.S,
                m,
                solver=cfg.solver,
                time_budget=cfg.time_budget,
                seed=cfg.seed,
                progress=ctx.progress,
                proposals=ctx.proposals,
                device=ctx.device,
            )
        return sel.pruned, sel.solver

    def _covered(self, ctx: Context, m: int | None) -> tuple[np.ndarray, str]:
        from dpcli.select.coverage import (
            Coverage,
            check_budget,
            count_columns,
            maximize_pruned_covered,
            minimize_norm_covered,
            solve_dtype,
        )

        cfg = self.cfg
        if cfg.cutoff is not None and cfg.cutoff_ratio is None:
            cutoff = cfg.cutoff
        else:  # relative to the prune share
            if m is None:
                raise DpcliError("--hard-cutoff auto / Fx needs a prune ratio or count")
            cutoff = min(resolve_cutoff(cfg, m, ctx.n), 0.999999)
        cov = Coverage(balance=cfg.balance, strata=cfg.strata, cutoff=cutoff)
        # the count columns alone may pass the budget: say so before the difficulty and features are computed
        groups = count_columns(len(np.unique(ctx.labels)), cov.balance, cov.strata)
        check_budget(ctx.n, ctx.S.shape[1], groups, 0, solve_dtype(ctx.S).itemsize)
        diff = ctx.difficulty() if (cov.strata > 1 or cov.cutoff > 0) else None
        label = f"{cfg.solver}+coverage(balance={cov.balance},strata={cov.strata},cutoff={cov.cutoff:g})"
        if m is None:
            assert cfg.epsilon is not None  # base.select gives one of m and epsilon
            return maximize_pruned_covered(
                ctx.S, cfg.epsilon, ctx.labels, diff, cov, seed=cfg.seed, solver=cfg.solver, device=ctx.device
            ), label
        feats = ctx.features() if cfg.match_features else None
        if feats is not None:
            label += "+features"
        return minimize_norm_covered(
            ctx.S,
            m,
            ctx.labels,
            diff,
            cov,
            seed=cfg.seed,
            solver=cfg.solver,
            time_budget=cfg.time_budget,
            progress=ctx.progress,
            features=feats,
            proposals=ctx.proposals,
            device=ctx.device,
        ), label
