"""Options shared by several commands, each with one meaning everywhere, grouped into help panels.

Each is an ``Annotated`` alias that a command lists as an ordinary parameter, the way Typer reads it;
where ``prune`` and ``verify-bound`` show an option under a dataset-mode panel, a ``Ds`` alias says so.
The command body gathers the values into :class:`Job`, :class:`Training`, :class:`Estimation` and
:class:`Solve`, whose fields are named as the options.

Defaults shown in ``--help`` are read from the objects that apply them (``dpcli.config``'s
dataclasses and ``PROFILES``, the selector and solver registries), so help never drifts from
behaviour.  Nothing here imports torch, h5py or matplotlib: ``--help`` and argument errors must
answer fast.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer

from dpcli.config import PROFILES, PruneConfig, TrainConfig
from dpcli.errors import DpcliError

# Click as Typer runs it: vendored from Typer 0.29 on, the click package before (both are supported)
if TYPE_CHECKING or importlib.util.find_spec("typer._click") is not None:
    from typer._click.core import ParameterSource
    from typer._click.exceptions import NoArgsIsHelpError as NoArgsIsHelpError  # for application.py
    from typer._click.exceptions import UsageError as UsageError
    from typer._click.globals import get_current_context
else:  # pragma: no cover - older Typer on Click
    from click import get_current_context
    from click.core import ParameterSource
    from click.exceptions import NoArgsIsHelpError as NoArgsIsHelpError
    from click.exceptions import UsageError as UsageError

# ------------------------------------------------------------------ panels
P_TARGET = "Pruning target (give exactly one)"
P_SELECT = "Selection"
P_OUTPUT = "Output"
P_RUN = "Run control"
P_TUNING = "Selector tuning (--method optimization / auto, ccs, el2n, grand)"
P_BOUNDARY = "External S labels, link folders"
P_TRAIN = "Training"
P_DS_TRAIN = "Dataset mode: training (when SOURCE is a dataset name)"
P_DS_INFLUENCE = "Dataset mode: influence (when SOURCE is a dataset name)"
P_ESTIMATOR = "Estimator"
P_SCALE = "Large runs"
P_EMBED = "Embeddings (instead of a checkpoint)"
P_MODEL = "Library models"
P_SPEED = "Speed (GPU)"

# Panels folded out of `prune --help` (shown by --help-all) so the common case reads in one screen.
FOLDED = {"prune": (P_TUNING, P_BOUNDARY, P_DS_TRAIN, P_DS_INFLUENCE, P_SPEED)}


def default_note(text: Any) -> str:
    """A '[default: ...]' suffix in the style Typer prints its own defaults (brackets escaped for rich)."""
    return f"\\[default: {text}]"


def per_dataset(field: str) -> str:
    """The default of a per-dataset training setting, read from ``config.PROFILES``."""
    groups: dict[Any, list[str]] = {}
    for name, profile in PROFILES.items():
        groups.setdefault(getattr(profile, field), []).append(name)
    if len(groups) == 1:
        return default_note(next(iter(groups)))
    parts = "; ".join(f"{', '.join(_short(names))} {value}" for value, names in groups.items())
    return f"\\[default per dataset: {parts}]"


def _short(names: list[str]) -> list[str]:
    """cifar10 and cifar100 read as one name, cifar, in help."""
    if {"cifar10", "cifar100"} <= set(names):
        names = ["cifar" if n == "cifar10" else n for n in names if n != "cifar100"]
    return names


def _config_default(cls: type, field: str) -> Any:
    return {f.name: f.default for f in dataclasses.fields(cls)}[field]


def fill_names(text: str) -> str:
    """Put the registered names into a help text; done only when help is shown (listing solvers and
    selectors imports numpy, which argument errors and real runs should not wait for here)."""
    for token, names in (
        ("@SELECTORS@", selector_names),
        ("@SOLVERS@", solver_names),
        ("@ESTIMATORS@", estimator_names),
    ):
        if token in text:
            text = text.replace(token, " | ".join(names()))
    return text


def selector_names() -> tuple[str, ...]:
    from dpcli.select.registry import SELECTORS

    return SELECTORS.names()


def solver_names() -> tuple[str, ...]:
    from dpcli.select.registry import SOLVERS

    return tuple(SOLVERS)


def estimator_names() -> tuple[str, ...]:
    from dpcli.stages.pipeline import estimator_names as names

    return names()


# ------------------------------------------------------------------ run control and output (every command)
JsonOption = Annotated[
    bool,
    typer.Option("--json", rich_help_panel=P_OUTPUT, help="One JSON summary on stdout (human output stays on stderr)."),
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", rich_help_panel=P_OUTPUT, help="No progress bars or human output.")
]
Device = Annotated[str, typer.Option("--device", rich_help_panel=P_RUN, help="auto, cpu or cuda[:N].")]
DataRoot = Annotated[
    Optional[Path],
    typer.Option(
        "--data-root",
        metavar="DIR",
        rich_help_panel=P_RUN,
        help="Dataset cache. " + default_note("$DPCLI_DATA or ~/.cache/dpcli/data"),
    ),
]
RunRoot = Annotated[
    Optional[Path],
    typer.Option(
        "--run-root",
        metavar="DIR",
        rich_help_panel=P_RUN,
        help="Root of the run directories. " + default_note("$DPCLI_RUNS or ./dpcli-runs"),
    ),
]
Force = Annotated[
    bool,
    typer.Option("--force", rich_help_panel=P_RUN, help="Recompute every stage of this command; reuse nothing cached."),
]
NoWait = Annotated[
    bool,
    typer.Option(
        "--no-wait", rich_help_panel=P_RUN, help="Exit (code 75) instead of waiting for another job's artifact."
    ),
]


@dataclasses.dataclass
class Job:
    """Where and how a command runs and reports (``influence`` writes beside its input: no run root)."""

    json: bool
    quiet: bool
    device: str
    data_root: Optional[Path]
    force: bool
    no_wait: bool
    run_root: Optional[Path] = None


# ------------------------------------------------------------------ training settings
def _arch(panel: str) -> Any:
    return typer.Option(
        "--arch",
        metavar="NAME",
        rich_help_panel=panel,
        help="convnet, resnet18 or resnet50, or a library model: torchvision:NAME (any torchvision.models "
        'classifier) or timm:NAME (pip install "dpcli[timm]"). ' + per_dataset("arch"),
    )


def _width(panel: str) -> Any:
    return typer.Option(
        "--width", rich_help_panel=panel, help="ConvNet channels (convnet only). " + per_dataset("width")
    )


def _depth(panel: str) -> Any:
    return typer.Option("--depth", rich_help_panel=panel, help="ConvNet blocks (convnet only). " + per_dataset("depth"))


def _epochs(panel: str) -> Any:
    return typer.Option("--epochs", rich_help_panel=panel, help="Training epochs. " + per_dataset("epochs"))


def _lr(panel: str) -> Any:
    return typer.Option("--lr", rich_help_panel=panel, help="SGD learning rate, cosine-decayed. " + per_dataset("lr"))


def _momentum(panel: str) -> Any:
    return typer.Option(
        "--momentum",
        rich_help_panel=panel,
        help="SGD momentum. " + default_note(_config_default(TrainConfig, "momentum")),
    )


def _weight_decay(panel: str) -> Any:
    return typer.Option(
        "--weight-decay",
        rich_help_panel=panel,
        help="L2 weight decay. " + default_note(_config_default(TrainConfig, "weight_decay")),
    )


def _batch_size(panel: str) -> Any:
    return typer.Option("--batch-size", rich_help_panel=panel, help="Training batch size. " + per_dataset("batch_size"))


def _augment(panel: str) -> Any:
    return typer.Option(
        "--augment/--no-augment",
        rich_help_panel=panel,
        show_default=False,
        help="Random crop + horizontal flip. " + default_note("on for cifar, imagefolder; off for digits"),
    )


def _image_size(panel: str) -> Any:
    return typer.Option(
        "--image-size",
        metavar="N",
        rich_help_panel=panel,
        help="Model input side for images of any size: train on random resized crops of N plus flips; "
        "evaluate, score and compute influence on a resize to N/0.875 and a center crop of N. Needed for "
        "folders of mixed sizes. " + default_note("the images' own size"),
    )


def _weights(panel: str) -> Any:
    return typer.Option(
        "--weights",
        metavar="W",
        rich_help_panel=panel,
        help="torchvision:/timm: models: DEFAULT (the library's pretrained weights, downloaded by the library), "
        "a weights name (e.g. IMAGENET1K_V1), or a local state-dict file. " + default_note("random init"),
    )


def _head_module(panel: str) -> Any:
    return typer.Option(
        "--head-module",
        metavar="NAME",
        rich_help_panel=panel,
        help="Dotted name of the last linear layer when dpcli cannot find it (it looks for fc, classifier, head "
        "and timm's get_classifier()).",
    )


TRAIN_SEED_HELP = "Seed of the training run (initialization and batch order)."
TRAIN_SEED_DEFAULT: int = _config_default(TrainConfig, "seed")


def _train_seed(panel: str) -> Any:
    return typer.Option("--train-seed", rich_help_panel=panel, help=TRAIN_SEED_HELP)


# `train` and `retrain` show them under "Training", `prune` and `verify-bound` under dataset mode (Ds...)
Arch = Annotated[Optional[str], _arch(P_TRAIN)]
DsArch = Annotated[Optional[str], _arch(P_DS_TRAIN)]
Width = Annotated[Optional[int], _width(P_TRAIN)]
DsWidth = Annotated[Optional[int], _width(P_DS_TRAIN)]
Depth = Annotated[Optional[int], _depth(P_TRAIN)]
DsDepth = Annotated[Optional[int], _depth(P_DS_TRAIN)]
Epochs = Annotated[Optional[int], _epochs(P_TRAIN)]
DsEpochs = Annotated[Optional[int], _epochs(P_DS_TRAIN)]
Lr = Annotated[Optional[float], _lr(P_TRAIN)]
DsLr = Annotated[Optional[float], _lr(P_DS_TRAIN)]
Momentum = Annotated[Optional[float], _momentum(P_TRAIN)]
DsMomentum = Annotated[Optional[float], _momentum(P_DS_TRAIN)]
WeightDecay = Annotated[Optional[float], _weight_decay(P_TRAIN)]
DsWeightDecay = Annotated[Optional[float], _weight_decay(P_DS_TRAIN)]
BatchSize = Annotated[Optional[int], _batch_size(P_TRAIN)]
DsBatchSize = Annotated[Optional[int], _batch_size(P_DS_TRAIN)]
Augment = Annotated[Optional[bool], _augment(P_TRAIN)]
DsAugment = Annotated[Optional[bool], _augment(P_DS_TRAIN)]
ImageSize = Annotated[Optional[int], _image_size(P_TRAIN)]
DsImageSize = Annotated[Optional[int], _image_size(P_DS_TRAIN)]
Weights = Annotated[Optional[str], _weights(P_TRAIN)]
DsWeights = Annotated[Optional[str], _weights(P_DS_TRAIN)]
HeadModule = Annotated[Optional[str], _head_module(P_TRAIN)]
DsHeadModule = Annotated[Optional[str], _head_module(P_DS_TRAIN)]
TrainSeed = Annotated[int, _train_seed(P_TRAIN)]
DsTrainSeed = Annotated[int, _train_seed(P_DS_TRAIN)]
ChannelsLast = Annotated[
    Optional[bool],
    typer.Option(
        "--channels-last/--no-channels-last",
        rich_help_panel=P_SPEED,
        show_default=False,
        help="Conv models: NHWC memory format (tensor cores; 1.9x faster ResNet-18 training on an H200). "
        + default_note("on with CUDA, off on the CPU"),
    ),
]
Compile = Annotated[
    bool,
    typer.Option(
        "--compile",
        rich_help_panel=P_SPEED,
        help="torch.compile the model (the first epoch pays the compile time; where the compiler fails on "
        "the model, one warning and the run goes on without it).",
    ),
]
Fp32 = Annotated[
    bool,
    typer.Option(
        "--fp32",
        rich_help_panel=P_SPEED,
        help="CUDA: float32 throughout instead of bf16 autocast (slower; for comparisons).",
    ),
]
Deterministic = Annotated[
    bool,
    typer.Option(
        "--deterministic",
        rich_help_panel=P_SPEED,
        help="Bitwise-repeatable CUDA runs: deterministic kernels, slower (docs/gpu.md).",
    ),
]


@dataclasses.dataclass
class Training:
    """The model/optimizer options a user gave; None = the dataset's default from PROFILES."""

    arch: Optional[str]
    width: Optional[int]
    depth: Optional[int]
    epochs: Optional[int]
    lr: Optional[float]
    momentum: Optional[float]
    weight_decay: Optional[float]
    batch_size: Optional[int]
    augment: Optional[bool]
    image_size: Optional[int]
    weights: Optional[str]
    head_module: Optional[str]
    train_seed: Optional[int]  # None: retrain's "the full-data run's"
    channels_last: Optional[bool]
    compile: bool
    fp32: bool
    deterministic: bool

    def overrides(self) -> dict[str, Any]:
        """As ``pipeline.train_config`` takes them (the input size goes to the loader instead)."""
        given = {("seed" if k == "train_seed" else k): v for k, v in vars(self).items() if k != "image_size"}
        # an unset speed flag (False) keeps the default and stays out of the run key
        return {k: v for k, v in given.items() if v is not None and not (k in _OFF_FLAGS and v is False)}

    def input_spec(self, upstream: Any = None) -> Any:
        """The preprocessing the model expects (``pipeline.input_spec``), after the given values' own checks
        (``TrainConfig.validate``): every command calls this before loading data, so a bad --arch or --epochs
        fails in one line before an image cache is built."""
        from dpcli.stages import pipeline

        TrainConfig(dataset="", **self.overrides(), image_size=self.image_size).validate()
        return pipeline.input_spec(self.arch, self.weights, self.image_size, upstream)


_OFF_FLAGS = ("compile", "fp32", "deterministic")


def field_names(values: type) -> tuple[str, ...]:
    """The options a value object gathers (its fields are named as the command's parameters)."""
    return tuple(f.name for f in dataclasses.fields(values))


# ------------------------------------------------------------------ pruning
EPSILON_HELP = (
    "Prune as many samples as possible with ||sum_pruned S_i|| <= EPSILON, the predicted change of the last-layer "
    "parameters (Eq. 3, S_i = (1/n) H^-1 grad L(z_i); Theorem 1's eps_T/n)."
)
Epsilon = Annotated[Optional[float], typer.Option("--epsilon", rich_help_panel=P_TARGET, help=EPSILON_HELP)]
Ratio = Annotated[
    Optional[float],
    typer.Option(
        "--prune-ratio",
        rich_help_panel=P_TARGET,
        help="PRUNE this fraction (0 < r < 1) of the training set with the smallest ||sum S_i|| (Eq. 4).",
    ),
]
Count = Annotated[
    Optional[int],
    typer.Option(
        "--prune-count",
        rich_help_panel=P_TARGET,
        help="PRUNE exactly this many samples (fewer than n) with the smallest ||sum S_i|| (Eq. 4).",
    ),
]
Solver = Annotated[
    str,
    typer.Option(
        "--solver",
        metavar="NAME",
        rich_help_panel=P_SELECT,
        help="@SOLVERS@: swap = greedy + swap local search; anneal = the paper's annealing; "
        "brute = exhaustive (n <= 20).",
    ),
]
SolverSeed = Annotated[
    int,
    typer.Option(
        "--solver-seed", rich_help_panel=P_SELECT, help="Seed of the solver / selector (random, anneal, ties)."
    ),
]
TimeBudget = Annotated[
    Optional[float],
    typer.Option(
        "--time-budget",
        metavar="SECONDS",
        rich_help_panel=P_SELECT,
        help="Seconds the solver may spend (results then depend on machine speed). "
        + default_note("a fixed amount of work"),
    ),
]
Method = Annotated[
    str,
    typer.Option(
        "--method",
        metavar="NAME",
        rich_help_panel=P_SELECT,
        help="Selector: @SELECTORS@. auto: the paper's objective, or coverage or dual-beta if a held-out "
        "check prefers it; optimization: the paper's objective alone; the others are baselines. "
        "Every mask is certified from S.",
    ),
]

SOLVER_DEFAULT = _config_default(PruneConfig, "solver")
METHOD_DEFAULT = _config_default(PruneConfig, "method")
SOLVER_SEED_DEFAULT = _config_default(PruneConfig, "seed")

Balance = Annotated[
    bool,
    typer.Option(
        "--balance/--no-balance",
        rich_help_panel=P_TUNING,
        help="optimization / auto: prune the same share of every class.",
    ),
]
Strata = Annotated[
    int,
    typer.Option(
        "--strata",
        rich_help_panel=P_TUNING,
        help="optimization / auto: prune the same share of each of K difficulty quantile bins (mean training loss); "
        "1 = off.",
    ),
]
HardCutoff = Annotated[
    Optional[str],
    typer.Option(
        "--hard-cutoff",
        metavar="B|auto|Fx",
        rich_help_panel=P_TUNING,
        help="optimization / ccs / ccs-loss / d2: prune this share B of all samples (of each class with --balance), "
        "hardest first, before selecting; "
        "auto = CCS's schedule (B = ratio - 0.6 clipped to [0, 0.4]: CCS's published 0.2 at 80 % and 0.3 at 90 % "
        "pruned); Fx = F times the prune ratio. "
        + default_note("0 for optimization and --method auto, auto for ccs, ccs-loss, d2"),
    ),
]
MatchFeatures = Annotated[
    bool,
    typer.Option(
        "--match-features/--no-match-features",
        rich_help_panel=P_TUNING,
        help="optimization / auto: also keep each class / stratum's mean penultimate feature (herding's criterion).",
    ),
]
ScoreEpoch = Annotated[
    Optional[int],
    typer.Option(
        "--score-epoch",
        rich_help_panel=P_TUNING,
        help="el2n / grand: score the model after this many epochs. "
        + default_note("10 % of training for el2n, 0 (initialization) for grand"),
    ),
]
ScoreSeeds = Annotated[
    int,
    typer.Option(
        "--score-seeds",
        rich_help_panel=P_TUNING,
        help="el2n / grand: average over this many training seeds (the authors use 10; 3 is a cost-aware default).",
    ),
]
Buckets = Annotated[
    int,
    typer.Option(
        "--buckets",
        rich_help_panel=P_TUNING,
        help="optimization / auto: solve K buckets of rows in parallel, then refine on all of S; 1 = unbucketed.",
    ),
]
Workers = Annotated[
    Optional[int],
    typer.Option(
        "--workers",
        rich_help_panel=P_TUNING,
        help="Worker processes for --buckets; the result does not depend on it. " + default_note("min(K, CPU count)"),
    ),
]


def given() -> dict[str, str]:
    """The options this command line set explicitly (parameter name -> the flag), to refuse those that would
    have no effect on the input at hand instead of ignoring them."""
    ctx = get_current_context(silent=True)
    if ctx is None:
        return {}
    told = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {
        p.name: p.opts[0] for p in ctx.command.params if p.name and p.opts and ctx.get_parameter_source(p.name) in told
    }


PathT = TypeVar("PathT", str, Path)


def follow(path: PathT) -> PathT:
    """A given input (path or dataset name) with its links followed, as ``runs.followed`` does."""
    from dpcli.artifacts.runs import followed

    return followed(path) or path


def refuse(given: dict[str, str], names: Any, why: str) -> None:
    """One line naming the options in ``names`` that this command line set (:func:`given`), and why they cannot
    act."""
    bad = [given[n] for n in names if n in given]
    if bad:
        raise DpcliError(f"{', '.join(bad)} {'has' if len(bad) == 1 else 'have'} no effect here: {why}")


def epoch_list(text: Optional[str], epochs: int) -> tuple[int, ...] | None:
    """--snapshot-epochs E,E,...: sorted distinct epochs in [0, epochs]."""
    if text is None:
        return None
    try:
        values = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise DpcliError(f"--snapshot-epochs must be comma-separated integers, got {text!r}") from None
    bad = [e for e in values if not 0 <= e <= epochs]
    if bad:
        raise DpcliError(f"--snapshot-epochs must lie in [0, {epochs}], got {bad[0]}")
    return values


def _snapshot_epochs(panel: str) -> Any:
    return typer.Option(
        "--snapshot-epochs",
        metavar="E,E,...",
        rich_help_panel=panel,
        help="Epochs after which to keep a copy of the weights (0 = initialization), for prune --method el2n/grand "
        "--score-epoch. " + default_note("0 and 10 % of training"),
    )


def _freeze_backbone(panel: str) -> Any:
    return typer.Option(
        "--freeze-backbone",
        rich_help_panel=panel,
        help="Keep the backbone fixed: compute its features once (cached), fit only the last layer as "
        "L2-regularized softmax regression to convergence (deterministic), and write influence.h5 at once; "
        "S is then exact (Theorem 1 holds) and retrain is a head refit. L2 = --damping, else --weight-decay.",
    )


SnapshotEpochs = Annotated[Optional[str], _snapshot_epochs(P_TRAIN)]
DsSnapshotEpochs = Annotated[Optional[str], _snapshot_epochs(P_DS_TRAIN)]
FreezeBackbone = Annotated[bool, _freeze_backbone(P_MODEL)]
DsFreezeBackbone = Annotated[bool, _freeze_backbone(P_DS_TRAIN)]
