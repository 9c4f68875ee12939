"""The selector interface behind ``prune --method``, and the context every selector reads from.

A selector is one module in :mod:`dpcli.select.methods` whose class subclasses :class:`Selector`
(or :class:`ScoreSelector` for "keep the highest scores" rules) with a ``name``; subclassing
registers it.  It declares what it ``needs`` beyond S (``features``, ``dynamics``, ``snapshots``,
``dataset``), which :class:`Context` loads on demand, and returns the PRUNED mask.  Whatever it
returns is then certified from S (:mod:`dpcli.select.certificate`) and written as the same mask
artifact, so every selector works with ``retrain`` and ``verify-bound`` unchanged.

Adding one (see docs/howto-add-a-selector.md)::

    # dpcli/select/methods/my_rule.py
    class MyRule(ScoreSelector):
        name = "my-rule"
        needs = frozenset({"dynamics"})
        help = "keep the samples whose loss fell the most"

        def scores(self, ctx):
            loss = ctx.dynamics().loss
            return loss[0] - loss[-1]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.certificate import repair
from dpcli.select.linalg import count_from_ratio, row_sq_norms
from dpcli.select.registry import SELECTORS  # noqa: F401 (re-exported: the selector registry)
from dpcli.select.scoring import longest_prefix, prune_lowest

if TYPE_CHECKING:  # torch-free at import time: the CLI lists selectors without loading torch
    from dpcli.config import PruneConfig
    from dpcli.data.sources import Dataset
    from dpcli.train.dynamics import Dynamics

NEEDS = frozenset({"features", "dynamics", "snapshots", "dataset"})
SUPPLIED = ("features", "difficulty", "dynamics")  # what a caller may hand a Context (Context.supply)
TARGET_OPTIONS = ("epsilon", "ratio", "count", "method", "seed")  # every selector's (seed: random, ties)
SOLVER_OPTIONS = ("solver", "time_budget", "buckets")  # --workers never changes a mask
COVERAGE_OPTIONS = ("balance", "strata", "cutoff", "cutoff_ratio", "match_features")


@dataclass
class Context:
    """What a selector may read beyond S; the dataset, model and dynamics load only when asked for."""

    S: np.ndarray
    labels: np.ndarray
    checkpoint: Path | None = None
    device: Any = None
    data_root: Path | None = None
    ds: "Dataset | None" = None
    progress: Callable[[float], None] | None = None
    influence: Path | None = None  # the influence.h5 S came from (features of an embeddings run, its loss)
    proposals: int | None = None  # swap's annealing length past the local optimum; None = the solver's default
    # attributes a selector wants stored in mask.h5 and the --json summary (``auto`` records its decision)
    record: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.S.shape[0])

    def supply(self, **known: Any) -> "Context":
        """Hand over what the caller already holds (``features``, ``difficulty``, ``dynamics``), one entry per
        sample of S, so that it is read from here instead of loaded."""
        for name, value in known.items():
            if name not in SUPPLIED:
                raise TypeError(f"Context.supply: unknown {name!r}; one of {', '.join(SUPPLIED)}")
            rows = value.loss.shape[1] if name == "dynamics" else len(value)
            if rows != self.n:
                raise DpcliError(f"{name} have {rows} rows but S has {self.n}")
            self._cache[name] = value
        return self

    def has(self, name: str) -> bool:
        """Whether ``name`` is at hand (supplied or loaded already), so asking for it costs nothing."""
        return name in self._cache

    def _require_checkpoint(self, what: str) -> Path:
        if self.checkpoint is None:
            raise DpcliError(f"this selector needs {what} from the training run, but S has no known checkpoint")
        return Path(self.checkpoint)

    def dataset(self) -> "Dataset":
        if self.ds is None:
            from dpcli.data.sources import load_dataset
            from dpcli.train.checkpoint import load_checkpoint

            ck = load_checkpoint(self._require_checkpoint("the dataset"), weights=False)
            self.ds = load_dataset(ck.config.dataset, self.data_root, image_size=ck.config.image_size)
        return self.ds

    def dynamics(self) -> "Dynamics":
        """Per-epoch training losses and correctness recorded by ``train`` (no weight snapshots)."""
        if "dynamics" not in self._cache:
            from dpcli.select.signals import load_dynamics

            self._cache["dynamics"] = load_dynamics(self._require_checkpoint("training dynamics"), snapshots=False)
        return self._cache["dynamics"]

    def difficulty(self) -> np.ndarray:
        """Large = hard: the mean training loss over the recorded epochs; where S has no training run (fitted on
        embeddings) the per-sample loss at the trained model that ``influence`` stored, as ``auto`` uses."""
        if "difficulty" not in self._cache:
            loss = self.influence_loss() if self.checkpoint is None and "dynamics" not in self._cache else None
            if loss is not None:
                self._cache["difficulty"] = loss
            else:
                from dpcli.select.signals import difficulty

                self._cache["difficulty"] = difficulty(self.dynamics())
        return self._cache["difficulty"]

    def influence_loss(self) -> np.ndarray | None:
        """The per-sample training loss at the trained model, where the influence artifact stored it."""
        if self.influence is None:
            return None
        from dpcli.artifacts.h5 import open_artifact

        with open_artifact(self.influence, "influence") as f:
            if "loss" in f and f["loss"].shape == (self.n,):
                return np.asarray(f["loss"][()], dtype=np.float64)
        return None

    def features(self) -> np.ndarray:
        """The final model's penultimate features of the training set (n x D); for S fitted on
        features (``influence --features``) the features themselves."""
        if "features" not in self._cache:
            if self.checkpoint is None and self.influence is not None:
                from dpcli.data.embeddings import is_embeddings_run, reload_embeddings

                if is_embeddings_run(self.influence):
                    self._cache["features"] = reload_embeddings(self.influence)[0].x
                    return self._cache["features"]
            from dpcli.train.loop import extract_features, load_trained

            model, _, ds = load_trained(self._require_checkpoint("features"), self.device, self.data_root, self.ds)
            self.ds = ds
            self._cache["features"] = extract_features(model, ds.train, ds, self.device).cpu().numpy()
        return self._cache["features"]


class Selector:
    """Chooses the samples to prune.  Subclass with a ``name`` to register; override :meth:`select`."""

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    help: ClassVar[str] = ""
    epsilon_mode: ClassVar[bool] = False  # can it honour --epsilon (prune within a norm bound)?
    coverage: ClassVar[bool] = False  # does it read --balance / --strata / --hard-cutoff / --match-features?
    solves: ClassVar[bool] = False  # does it minimize ||sum S|| with --solver/--buckets (and all coverage options)?
    auto_cutoff: ClassVar[bool] = False  # is its default --hard-cutoff the CCS schedule ("auto") rather than 0?
    reads: ClassVar[frozenset[str]] = frozenset()  # PruneConfig fields it reads beyond :meth:`options`' own

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The PruneConfig fields that can change its mask: they, and only they, key its run directory."""
        return (
            *TARGET_OPTIONS,
            *(SOLVER_OPTIONS if cls.solves else ()),
            *(COVERAGE_OPTIONS if cls.coverage else ()),
            *sorted(cls.reads),
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.needs) - NEEDS
        if unknown:
            raise TypeError(f"{cls.__qualname__}.needs has unknown entries {sorted(unknown)}; allowed: {sorted(NEEDS)}")
        if cls.name:
            SELECTORS.add(cls)

    def __init__(self, cfg: "PruneConfig") -> None:
        self.cfg = cfg

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        """The pruned mask (exactly ``m`` samples, or within ``epsilon`` of S) and a label of the rule used.

        ``m`` is None only in epsilon mode, and only for selectors that declare ``epsilon_mode``.
        """
        raise NotImplementedError


class ScoreSelector(Selector):
    """Keep the highest scores: prune the ``m`` lowest, or in epsilon mode the longest prefix of the
    lowest that stays within epsilon."""

    epsilon_mode = True

    def scores(self, ctx: Context) -> np.ndarray:
        raise NotImplementedError

    def select(self, ctx: Context, m: int | None, epsilon: float | None) -> tuple[np.ndarray, str]:
        s = np.asarray(self.scores(ctx), dtype=np.float64)
        if s.shape != (ctx.n,):
            raise DpcliError(f"selector {self.name} returned {s.shape} scores for {ctx.n} samples")
        if m is not None:
            return prune_lowest(s, m), self.name
        if np.isnan(s).any():
            raise DpcliError("a selection score is NaN; the training dynamics do not cover every sample")
        assert epsilon is not None  # select() gives one of m and epsilon
        pruned = longest_prefix(ctx.S, s, float(epsilon))
        # the prefix sums add in another order than the certificate: settle boundary rounding here
        return repair(ctx.S, row_sq_norms(ctx.S), pruned, float(epsilon))[0], self.name


def prune_count(cfg: "PruneConfig", n: int) -> int | None:
    """The number of samples to prune in cardinality mode (None in epsilon mode)."""
    return None if cfg.epsilon is not None else _count(cfg, n)


def prune_target(cfg: "PruneConfig", n: int) -> float:
    """A mask's target: epsilon, or the number of samples to prune."""
    return float(cfg.epsilon) if cfg.epsilon is not None else float(_count(cfg, n))


def _count(cfg: "PruneConfig", n: int) -> int:
    if cfg.count is not None:
        return cfg.count
    assert cfg.ratio is not None  # a validated PruneConfig sets exactly one of epsilon, count, ratio
    return count_from_ratio(n, cfg.ratio)


def select(cfg: "PruneConfig", ctx: Context) -> tuple[np.ndarray, str]:
    """The pruned mask chosen by ``cfg.method`` and a label for the rule used (not yet certified)."""
    cls = SELECTORS.get(cfg.method)
    m = prune_count(cfg, ctx.n)
    if m is None and not cls.epsilon_mode:
        raise DpcliError(f"--method {cfg.method} has no epsilon mode; give --prune-ratio or --prune-count")
    return cls(cfg).select(ctx, m, cfg.epsilon)


def warn_emptied_classes(labels: np.ndarray, keep: np.ndarray, record: dict) -> None:
    """Say so (and record it in the mask) when the kept set lacks a class the training set has: a model
    trained on it can never predict that class, whatever the norm bound says."""
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    gone = ~np.isin(classes, np.unique(np.asarray(labels)[keep]))
    if not gone.any():
        return
    if not np.any(keep):  # as --prune-count n is refused: a mask that keeps nothing trains nothing
        raise DpcliError(
            f"every one of the {len(keep)} samples would be pruned (the whole set's ||sum S|| is "
            "within --epsilon), leaving nothing to train on; give a smaller --epsilon, or "
            "--prune-count/--prune-ratio"
        )
    lost = {str(int(c)): int(k) for c, k in zip(classes[gone], counts[gone])}
    record["classes_without_kept_samples"] = lost
    shown = ", ".join(f"{c} ({k} sample{'s' if k > 1 else ''})" for c, k in list(lost.items())[:10])
    more = f" and {len(lost) - 10} more" if len(lost) > 10 else ""
    warnings.warn(
        f"dpcli: the kept set has no sample of {len(lost)} of the {len(classes)} classes: {shown}{more}; "
        "a model trained on it cannot predict them (--balance prunes every class by the same share, and "
        "with it --hard-cutoff takes each class's hardest samples within that share)",
        stacklevel=3,
    )


SHARE_FACTOR = 2.0  # a kept class share below 1/2 or above 2 times its training share is reported


def warn_class_shares(labels: np.ndarray, keep: np.ndarray, record: dict) -> None:
    """Say so (and record it in the mask) when a class's share of the kept set differs from its share of the
    training set by more than :data:`SHARE_FACTOR`: a model trained on it sees another class balance.  Classes
    with no kept sample are :func:`warn_emptied_classes`' to report."""
    labels = np.asarray(labels)
    if not np.any(keep):
        return
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    kept = np.bincount(inverse[np.asarray(keep, dtype=bool)], minlength=len(classes))
    ratio = (kept / kept.sum()) / (counts / counts.sum())
    off = np.flatnonzero((kept > 0) & ((ratio < 1 / SHARE_FACTOR) | (ratio > SHARE_FACTOR)))
    if not off.size:
        return
    off = off[np.argsort(-np.abs(np.log(ratio[off])), kind="stable")]
    record["class_shares"] = {
        str(int(classes[i])): {"train": int(counts[i]), "kept": int(kept[i]), "ratio": float(ratio[i])} for i in off
    }
    shown = ", ".join(
        f"class {int(classes[i])} at {ratio[i]:.2f}x ({int(kept[i])} of {int(kept.sum())} kept, "
        f"{int(counts[i])} of {int(counts.sum())} in training)"
        for i in off[:5]
    )
    more = f" and {len(off) - 5} more" if len(off) > 5 else ""
    warnings.warn(
        f"dpcli: {len(off)} class(es) hold a share of the kept set more than {SHARE_FACTOR:g}x away from "
        f"their share of the training set: {shown}{more}; --balance prunes every class by the same share",
        stacklevel=3,
    )
