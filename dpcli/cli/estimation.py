"""Options of the influence estimators, shared by `influence` and `prune` in dataset mode."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Optional

import typer

from dpcli.cli.options import P_DS_INFLUENCE, P_ESTIMATOR, P_SCALE, default_note
from dpcli.config import InfluenceConfig

# ------------------------------------------------------------------ influence
INFLUENCE_DEFAULTS = InfluenceConfig()  # what an option left out means (help shows it)


def _estimator(panel: str) -> Any:
    return typer.Option(
        "--estimator",
        metavar="NAME",
        rich_help_panel=panel,
        help="Influence estimator: @ESTIMATORS@. exact = dense Hessian, Cholesky (cg above "
        "d = 16384); cg = conjugate gradients; lissa = the paper's; sgd = SGD-Influence (replays training).",
    )


def _damping(panel: str) -> Any:
    return typer.Option(
        "--damping",
        rich_help_panel=panel,
        help="lambda added to the last-layer Hessian. " + default_note("the checkpoint's weight decay; 1e-3 if 0"),
    )


def _lissa_depth(panel: str) -> Any:
    return typer.Option("--lissa-depth", rich_help_panel=panel, help="LiSSA recursion depth.")


def _lissa_scale(panel: str) -> Any:
    return typer.Option(
        "--lissa-scale", rich_help_panel=panel, help="LiSSA scale (above the largest Hessian eigenvalue)."
    )


def _lissa_batch_size(panel: str) -> Any:
    return typer.Option("--lissa-batch-size", rich_help_panel=panel, help="LiSSA minibatch for the stochastic Hessian.")


def _lissa_repeats(panel: str) -> Any:
    return typer.Option("--lissa-repeats", rich_help_panel=panel, help="Independent LiSSA runs averaged.")


def _lissa_seed(panel: str) -> Any:
    return typer.Option("--lissa-seed", rich_help_panel=panel, help="LiSSA sampling seed.")


# `influence` shows them under "Estimator", `prune` (and verify-bound's --damping) under dataset mode (Ds...)
Estimator = Annotated[str, _estimator(P_ESTIMATOR)]


DsEstimator = Annotated[str, _estimator(P_DS_INFLUENCE)]


Damping = Annotated[Optional[float], _damping(P_ESTIMATOR)]


DsDamping = Annotated[Optional[float], _damping(P_DS_INFLUENCE)]


LissaDepth = Annotated[int, _lissa_depth(P_ESTIMATOR)]


DsLissaDepth = Annotated[int, _lissa_depth(P_DS_INFLUENCE)]


LissaScale = Annotated[float, _lissa_scale(P_ESTIMATOR)]


DsLissaScale = Annotated[float, _lissa_scale(P_DS_INFLUENCE)]


LissaBatchSize = Annotated[int, _lissa_batch_size(P_ESTIMATOR)]


DsLissaBatchSize = Annotated[int, _lissa_batch_size(P_DS_INFLUENCE)]


LissaRepeats = Annotated[int, _lissa_repeats(P_ESTIMATOR)]


DsLissaRepeats = Annotated[int, _lissa_repeats(P_DS_INFLUENCE)]


LissaSeed = Annotated[int, _lissa_seed(P_ESTIMATOR)]


DsLissaSeed = Annotated[int, _lissa_seed(P_DS_INFLUENCE)]


@dataclasses.dataclass
class Estimation:
    """The estimator options a user gave."""

    estimator: str
    damping: Optional[float]
    lissa_depth: int
    lissa_scale: float
    lissa_batch_size: int
    lissa_repeats: int
    lissa_seed: int

    def config(self, **more: Any) -> InfluenceConfig:
        """The validated InfluenceConfig (``more``: the command's own estimator settings)."""
        from dpcli.stages import pipeline

        pipeline.check_estimator(self.estimator)
        return InfluenceConfig(
            estimator=self.estimator,
            damping=self.damping,
            lissa_depth=self.lissa_depth,
            lissa_scale=self.lissa_scale,
            lissa_batch_size=self.lissa_batch_size,
            lissa_repeats=self.lissa_repeats,
            seed=self.lissa_seed,
            **more,
        ).validate()


# how the estimators solve: precision, CG's tolerance and cap, SGD-Influence's epochs, the sketch's seed
def _precision(panel: str) -> Any:
    return typer.Option(
        "--precision",
        metavar="P",
        rich_help_panel=panel,
        help="exact: float64 = Cholesky in float64; float32-refined = float32 Cholesky refined in float64 to "
        "--cg-tol (GPUs with slow float64); auto = float64 on CPUs and data-centre GPUs (A100/H100/H200), "
        "float32-refined elsewhere (docs/gpu.md).",
    )


def _cg_tol(panel: str) -> Any:
    return typer.Option(
        "--cg-tol",
        rich_help_panel=panel,
        help="cg (and exact above the dense limit): stop each column at relative residual ||r|| <= TOL ||g_i||.",
    )


def _cg_max_iter(panel: str) -> Any:
    return typer.Option(
        "--cg-max-iter", rich_help_panel=panel, help="cg: iteration cap per chunk (an error if reached)."
    )


def _sgd_epochs(panel: str) -> Any:
    return typer.Option(
        "--sgd-epochs",
        rich_help_panel=panel,
        help="sgd: replay only the last E recorded epochs. " + default_note("all recorded epochs"),
    )


def _sketch_seed(panel: str) -> Any:
    return typer.Option("--sketch-seed", rich_help_panel=panel, help="Seed of the sketch matrix R.")


Precision = Annotated[str, _precision(P_ESTIMATOR)]


DsPrecision = Annotated[str, _precision(P_DS_INFLUENCE)]


CgTol = Annotated[float, _cg_tol(P_ESTIMATOR)]


DsCgTol = Annotated[float, _cg_tol(P_DS_INFLUENCE)]


CgMaxIter = Annotated[int, _cg_max_iter(P_ESTIMATOR)]


DsCgMaxIter = Annotated[int, _cg_max_iter(P_DS_INFLUENCE)]


SgdEpochs = Annotated[Optional[int], _sgd_epochs(P_ESTIMATOR)]


DsSgdEpochs = Annotated[Optional[int], _sgd_epochs(P_DS_INFLUENCE)]


SketchSeed = Annotated[int, _sketch_seed(P_SCALE)]


DsSketchSeed = Annotated[int, _sketch_seed(P_DS_INFLUENCE)]


@dataclasses.dataclass
class Solve:
    """The estimator's solve settings (``influence``, and ``prune`` in dataset mode), named as InfluenceConfig's
    fields."""

    precision: str
    cg_tol: float
    cg_max_iter: int
    sgd_epochs: Optional[int]
    sketch_seed: int

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
