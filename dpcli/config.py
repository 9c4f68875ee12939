"""Typed configurations and per-dataset defaults.

A configuration fully determines an artifact (together with its inputs), so its
canonical JSON form keys the run directory: two configurations never share files.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from dpcli.errors import DpcliError


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model, except the device it ran on."""

    dataset: str
    arch: str = "resnet18"
    width: int = 32
    depth: int = 3
    epochs: int = 200
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    augment: bool = True
    seed: int = 0
    # Content hash of the keep-mask when training on a subset (retrain); None = all data.
    subset: str | None = None
    # imagefolder: side of the model's input (random resized crop / resize + center crop); None = stored size
    image_size: int | None = None
    # library models (--arch torchvision:NAME / timm:NAME): --weights and --head-module; None = unset
    weights: str | None = None
    head_module: str | None = None
    # Speed options (docs/gpu.md)
    channels_last: bool | None = None  # conv models: NHWC activations; None = on for CUDA, off on the CPU
    compile: bool = False  # torch.compile the model for training steps
    deterministic: bool = False  # bitwise-repeatable CUDA runs (deterministic kernels, slower)
    fp32: bool = False  # CUDA: no bf16 autocast (float32 throughout; TF32 matmuls are not enabled)

    def validate(self) -> "TrainConfig":
        from dpcli.models.base import check_arch

        check_arch(self.arch)
        _positive_int("--epochs", self.epochs)
        _positive_int("--batch-size", self.batch_size)
        _positive_int("--width", self.width)
        _positive_int("--depth", self.depth)
        _positive_float("--lr", self.lr)
        _nonneg_float("--momentum", self.momentum)
        _nonneg_float("--weight-decay", self.weight_decay)
        if self.image_size is not None:
            _positive_int("--image-size", self.image_size)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class InfluenceConfig:
    """How S is estimated from a checkpoint."""

    estimator: str = "exact"
    damping: float | None = None  # None: the checkpoint's weight decay (the true L2 curvature)
    lissa_depth: int = 1000
    lissa_scale: float = 10.0
    lissa_batch_size: int = 512
    lissa_repeats: int = 1
    seed: int = 0
    # cg (and exact above the dense limit): relative residual and iteration cap; sketch: JL width and seed
    cg_tol: float = 1e-6
    cg_max_iter: int = 1000
    sketch_k: int | None = None
    sketch_seed: int = 0
    sgd_epochs: int | None = None  # --estimator sgd: replay the last E recorded epochs (None: all)
    # exact: float64 Cholesky, or a float32 one refined in float64 to cg_tol (GPUs with slow float64); "auto" picks
    precision: str = "float64"

    def validate(self) -> "InfluenceConfig":
        from dpcli.influence.base import ESTIMATORS

        ESTIMATORS.get(self.estimator)  # one line naming the choices for an unknown name
        if self.damping is not None and not (math.isfinite(self.damping) and self.damping > 0):
            raise DpcliError(f"--damping must be a positive finite number, got {self.damping}")
        _positive_int("--lissa-depth", self.lissa_depth)
        _positive_float("--lissa-scale", self.lissa_scale)
        _positive_int("--lissa-batch-size", self.lissa_batch_size)
        _positive_int("--lissa-repeats", self.lissa_repeats)
        if not (math.isfinite(self.cg_tol) and 0 < self.cg_tol < 1):
            raise DpcliError(f"--cg-tol must lie strictly between 0 and 1, got {self.cg_tol}")
        _positive_int("--cg-max-iter", self.cg_max_iter)
        if self.sketch_k is not None:
            _positive_int("--sketch", self.sketch_k)
        if self.sgd_epochs is not None:
            _positive_int("--sgd-epochs", self.sgd_epochs)
        if self.precision not in ("float64", "float32-refined", "auto"):
            raise DpcliError(f"unknown --precision {self.precision!r}; choose one of float64, float32-refined, auto")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.estimator != "lissa":  # LiSSA knobs do not change an exact S
            d = {k: v for k, v in d.items() if not k.startswith("lissa") and k != "seed"}
        if self.estimator != "sgd":
            d.pop("sgd_epochs", None)
        return d


@dataclass(frozen=True)
class PruneConfig:
    """Which subset to drop: by epsilon, by ratio or by count."""

    epsilon: float | None = None
    ratio: float | None = None
    count: int | None = None
    solver: str = "swap"
    time_budget: float | None = None
    seed: int = 0
    buckets: int = 1  # > 1: bucketed, parallel selection (dpcli.buckets)
    workers: int | None = None  # processes for buckets [default: min(buckets, cpu count)]; never a key
    # which selector (a name in dpcli.select.base.SELECTORS); the run key holds the options it reads
    method: str = "auto"  # the paper's objective, moved toward coverage when held-out data says so
    balance: bool = False  # optimization: per-class prune counts
    strata: int = 1  # optimization: difficulty quantile bins with proportional counts
    cutoff: float | None = 0.0  # optimization/ccs: hardest share pruned first; None = CCS's schedule
    cutoff_ratio: float | None = None  # instead: cutoff = cutoff_ratio x the prune ratio ("--hard-cutoff 0.5x")
    match_features: bool = False  # optimization: also keep every group's mean feature (herding's criterion)
    score_epoch: int | None = None  # el2n/grand: epoch of the scoring snapshot [default: 10 % of training]
    score_seeds: int = 3  # el2n/grand: training seeds averaged

    def validate(self) -> "PruneConfig":
        given = [x is not None for x in (self.epsilon, self.ratio, self.count)]
        if sum(given) != 1:
            raise DpcliError("give exactly one of --epsilon, --prune-ratio, --prune-count")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise DpcliError(f"--epsilon must be a finite number >= 0, got {self.epsilon}")
        if self.ratio is not None and not (math.isfinite(self.ratio) and 0 < self.ratio < 1):
            raise DpcliError(f"--prune-ratio must lie strictly between 0 and 1, got {self.ratio}")
        if self.count is not None and self.count < 0:
            raise DpcliError(f"--prune-count must be >= 0, got {self.count}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise DpcliError(f"--time-budget must be a positive number of seconds, got {self.time_budget}")
        if isinstance(self.buckets, bool) or not isinstance(self.buckets, int) or self.buckets < 1:
            raise DpcliError(f"--buckets must be an integer >= 1, got {self.buckets}")
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise DpcliError(f"--workers must be an integer >= 1, got {self.workers}")
        from dpcli.select.registry import SELECTORS, SOLVERS

        selector = SELECTORS.get(self.method)  # one line naming the choices for an unknown name
        if self.solver not in SOLVERS:
            raise DpcliError(f"unknown --solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        from dpcli.env import solve_budget

        solve_budget()  # a malformed $DPCLI_SOLVE_BUDGET fails here, not after training and influence
        if isinstance(self.strata, bool) or int(self.strata) != self.strata or self.strata < 1:
            raise DpcliError(f"--strata must be an integer >= 1, got {self.strata}")
        if self.cutoff is not None and not (math.isfinite(self.cutoff) and 0 <= self.cutoff < 1):
            raise DpcliError(f"--hard-cutoff must lie in [0, 1) or be 'auto', got {self.cutoff}")
        if self.score_epoch is not None and (int(self.score_epoch) != self.score_epoch or self.score_epoch < 0):
            raise DpcliError(f"--score-epoch must be an integer >= 0, got {self.score_epoch}")
        _positive_int("--score-seeds", self.score_seeds)
        if self.cutoff_ratio is not None:
            if not (math.isfinite(self.cutoff_ratio) and 0 <= self.cutoff_ratio <= 1) or self.cutoff != 0.0:
                raise DpcliError(f"--hard-cutoff Fx needs 0 <= F <= 1, got {self.cutoff_ratio}")
            if self.epsilon is not None:
                raise DpcliError("--hard-cutoff Fx is relative to the prune ratio; give --prune-ratio or --prune-count")
        if self.match_features and self.epsilon is not None:
            raise DpcliError("--match-features needs --prune-ratio or --prune-count")
        solvers = [n for n in SELECTORS.names() if SELECTORS.get(n).solves]
        if self.uses_coverage and not selector.coverage:
            takes = ", ".join(n for n in SELECTORS.names() if SELECTORS.get(n).coverage and n not in solvers)
            raise DpcliError(
                f"--balance/--strata/--hard-cutoff/--match-features apply to --method "
                f"{' and '.join(solvers)} (--hard-cutoff also to {takes}), not {self.method}"
            )
        if not selector.epsilon_mode and self.epsilon is not None:
            raise DpcliError(f"--method {self.method} has no epsilon mode; give --prune-ratio or --prune-count")
        if not selector.solves and self.buckets != 1:
            raise DpcliError(f"--buckets applies to --method {' and '.join(solvers)} only")
        return self

    def check_against(self, n: int) -> "PruneConfig":
        """The checks that need the number of training samples: a count must leave something to train on."""
        if self.count is not None:
            if self.count > n:
                raise DpcliError(f"--prune-count {self.count} exceeds the {n} training samples")
            if self.count == n:
                raise DpcliError(
                    f"--prune-count {self.count} would prune all {n} training samples and leave "
                    f"nothing to train on; give fewer (as --prune-ratio must be below 1)"
                )
        return self

    @property
    def uses_coverage(self) -> bool:
        """Any of the coverage options (dpcli.select.coverage) is set."""
        return (
            self.balance
            or self.strata > 1
            or self.cutoff != 0.0
            or self.cutoff_ratio is not None
            or self.match_features
        )

    @property
    def mode(self) -> str:
        return "epsilon" if self.epsilon is not None else "cardinality"

    def to_dict(self) -> dict[str, Any]:
        """The fields that can change the mask of this selector (:meth:`Selector.options`): its run key."""
        from dpcli.select.registry import SELECTORS

        names = SELECTORS.get(self.method).options()
        return {k: v for k, v in dataclasses.asdict(self).items() if k in names}


@dataclass(frozen=True)
class DatasetProfile:
    """Training defaults that suit a dataset; every field is overridable on the command line."""

    arch: str
    epochs: int
    batch_size: int = 128
    lr: float = 0.01
    width: int = 32
    depth: int = 3
    extra: dict[str, Any] = field(default_factory=dict)


# The paper's settings (section 6.1) for CIFAR; small, fast settings for the offline digits set.
PROFILES: dict[str, DatasetProfile] = {
    "digits": DatasetProfile(arch="convnet", epochs=30, batch_size=64, lr=0.05, width=32, depth=2),
    "cifar10": DatasetProfile(arch="resnet18", epochs=200),
    "cifar100": DatasetProfile(arch="resnet18", epochs=200),
    "imagefolder": DatasetProfile(arch="resnet18", epochs=200),
}


def profile_for(dataset: str) -> DatasetProfile:
    key = dataset.split(":", 1)[0]
    return PROFILES.get(key, PROFILES["imagefolder"])


def default_train_config(dataset: str, augment: bool) -> TrainConfig:
    p = profile_for(dataset)
    return TrainConfig(
        dataset=dataset,
        arch=p.arch,
        width=p.width,
        depth=p.depth,
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        augment=augment,
    )


def _positive_int(name: str, value: int) -> None:
    if int(value) != value or value <= 0:
        raise DpcliError(f"{name} must be a positive integer, got {value}")


def _positive_float(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise DpcliError(f"{name} must be a positive finite number, got {value}")


def _nonneg_float(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise DpcliError(f"{name} must be a finite number >= 0, got {value}")
