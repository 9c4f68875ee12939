"""Options shared by several commands, each with one meaning everywhere, grouped into help panels.

Defaults shown in ``--help`` are read from the objects that apply them (``dpcli.config``'s
dataclasses and ``PROFILES``, the selector and solver registries), so help never drifts from
behaviour.  Nothing here imports torch, h5py or matplotlib: ``--help`` and argument errors must
answer fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Optional

import typer

from dpcli.config import PROFILES, InfluenceConfig, PruneConfig, TrainConfig

# ------------------------------------------------------------------ panels
P_TARGET = "Pruning target (give exactly one)"
P_SELECT = "Selection"
P_OUTPUT = "Output"
P_RUN = "Run control"
P_TUNING = "Selector tuning (--method optimization / auto, ccs, el2n, grand)"
P_TRAIN = "Training"
P_DS_TRAIN = "Dataset mode: training (when SOURCE is a dataset name)"
P_DS_INFLUENCE = "Dataset mode: influence (when SOURCE is a dataset name)"
P_ESTIMATOR = "Estimator"
P_SCALE = "Large runs"
P_EMBED = "Embeddings (instead of a checkpoint)"
P_MODEL = "Library models"
P_SPEED = "Speed (GPU)"

# Panels folded out of `prune --help` (shown by --help-all) so the common case reads in one screen.
FOLDED = {"prune": (P_TUNING, P_DS_TRAIN, P_DS_INFLUENCE)}


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
    for token, names in (("@SELECTORS@", selector_names), ("@SOLVERS@", solver_names),
                         ("@ESTIMATORS@", estimator_names)):
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


# ------------------------------------------------------------------ run control and output
DataRoot = Annotated[Optional[Path], typer.Option(
    "--data-root", metavar="DIR", rich_help_panel=P_RUN,
    help="Dataset cache. " + default_note("$DPCLI_DATA or ~/.cache/dpcli/data"))]
RunRoot = Annotated[Optional[Path], typer.Option(
    "--run-root", metavar="DIR", rich_help_panel=P_RUN,
    help="Root of the run directories. " + default_note("$DPCLI_RUNS or ./dpcli-runs"))]
Device = Annotated[str, typer.Option("--device", rich_help_panel=P_RUN, help="auto, cpu or cuda[:N].")]
Force = Annotated[bool, typer.Option(
    "--force", rich_help_panel=P_RUN, help="Recompute every stage of this command; reuse nothing cached.")]
NoWait = Annotated[bool, typer.Option(
    "--no-wait", rich_help_panel=P_RUN,
    help="Exit at once if another job is writing an artifact this command needs, instead of waiting.")]
Json = Annotated[bool, typer.Option(
    "--json", rich_help_panel=P_OUTPUT, help="One JSON summary on stdout (human output stays on stderr).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel=P_OUTPUT, help="No progress bars or human output.")]


# ------------------------------------------------------------------ training settings
def training(panel: str) -> SimpleNamespace:
    """The model/optimizer options, in ``panel``; None means the dataset's default from PROFILES."""
    seed_default = _config_default(TrainConfig, "seed")
    return SimpleNamespace(
        arch=Annotated[Optional[str], typer.Option(
            "--arch", metavar="NAME", rich_help_panel=panel,
            help="convnet, resnet18 or resnet50, or a library model: torchvision:NAME (any torchvision.models "
                 "classifier) or timm:NAME (pip install \"dpcli[timm]\"). " + per_dataset("arch"))],
        weights=Annotated[Optional[str], typer.Option(
            "--weights", metavar="W", rich_help_panel=panel,
            help="torchvision:/timm: models: DEFAULT (the library's pretrained weights, downloaded by the library), "
                 "a weights name (e.g. IMAGENET1K_V1), or a local state-dict file. " + default_note("random init"))],
        head_module=Annotated[Optional[str], typer.Option(
            "--head-module", metavar="NAME", rich_help_panel=panel,
            help="Dotted name of the last linear layer when dpcli cannot find it (it looks for fc, classifier, head "
                 "and timm's get_classifier()).")],
        width=Annotated[Optional[int], typer.Option(
            "--width", rich_help_panel=panel, help="ConvNet channels (convnet only). " + per_dataset("width"))],
        depth=Annotated[Optional[int], typer.Option(
            "--depth", rich_help_panel=panel, help="ConvNet blocks (convnet only). " + per_dataset("depth"))],
        epochs=Annotated[Optional[int], typer.Option(
            "--epochs", rich_help_panel=panel, help="Training epochs. " + per_dataset("epochs"))],
        lr=Annotated[Optional[float], typer.Option(
            "--lr", rich_help_panel=panel, help="SGD learning rate, cosine-decayed. " + per_dataset("lr"))],
        momentum=Annotated[Optional[float], typer.Option(
            "--momentum", rich_help_panel=panel,
            help="SGD momentum. " + default_note(_config_default(TrainConfig, "momentum")))],
        weight_decay=Annotated[Optional[float], typer.Option(
            "--weight-decay", rich_help_panel=panel,
            help="L2 weight decay. " + default_note(_config_default(TrainConfig, "weight_decay")))],
        batch_size=Annotated[Optional[int], typer.Option(
            "--batch-size", rich_help_panel=panel, help="Training batch size. " + per_dataset("batch_size"))],
        augment=Annotated[Optional[bool], typer.Option(
            "--augment/--no-augment", rich_help_panel=panel, show_default=False,
            help="Random crop + horizontal flip. " + default_note("on for cifar, imagefolder; off for digits"))],
        image_size=Annotated[Optional[int], typer.Option(
            "--image-size", metavar="N", rich_help_panel=panel,
            help="Model input side for images of any size: train on random resized crops of N plus flips; "
                 "evaluate, score and compute influence on a resize to N/0.875 and a center crop of N. Needed for "
                 "folders of mixed sizes. " + default_note("the images' own size"))],
        train_seed=Annotated[int, typer.Option(
            "--train-seed", rich_help_panel=panel,
            help="Seed of the training run (initialization and batch order).")],
        seed_default=seed_default,
    )


def training_overrides(**kw: Any) -> dict[str, Any]:
    """The training options the user gave (None = the dataset's default)."""
    return {k: v for k, v in kw.items() if v is not None}


# ------------------------------------------------------------------ pruning
EPSILON_HELP = (
    "Prune as many samples as possible with ||sum_pruned S_i|| <= EPSILON, the predicted change of the last-layer "
    "parameters (Eq. 3, S_i = (1/n) H^-1 grad L(z_i); Theorem 1's eps_T/n)."
)
Epsilon = Annotated[Optional[float], typer.Option("--epsilon", rich_help_panel=P_TARGET, help=EPSILON_HELP)]
Ratio = Annotated[Optional[float], typer.Option(
    "--prune-ratio", rich_help_panel=P_TARGET,
    help="PRUNE this fraction (0 < r < 1) of the training set with the smallest ||sum S_i|| (Eq. 4).")]
Count = Annotated[Optional[int], typer.Option(
    "--prune-count", rich_help_panel=P_TARGET,
    help="PRUNE exactly this many samples (fewer than n) with the smallest ||sum S_i|| (Eq. 4).")]
Solver = Annotated[str, typer.Option(
    "--solver", metavar="NAME", rich_help_panel=P_SELECT,
    help="@SOLVERS@: swap = greedy + swap local search; anneal = the paper's annealing; "
         "brute = exhaustive (n <= 20).")]
SolverSeed = Annotated[int, typer.Option(
    "--solver-seed", rich_help_panel=P_SELECT, help="Seed of the solver / selector (random, anneal, ties).")]
TimeBudget = Annotated[Optional[float], typer.Option(
    "--time-budget", metavar="SECONDS", rich_help_panel=P_SELECT,
    help="Seconds the solver may spend (results then depend on machine speed). "
         + default_note("a fixed amount of work"))]
Method = Annotated[str, typer.Option(
    "--method", metavar="NAME", rich_help_panel=P_SELECT,
    help="Selector: @SELECTORS@. auto: the paper's objective, with coverage if a held-out check says the "
         "data is scarce; optimization: the paper's objective alone; the others are baselines. "
         "Every mask is certified from S.")]

SOLVER_DEFAULT = _config_default(PruneConfig, "solver")
METHOD_DEFAULT = _config_default(PruneConfig, "method")
SOLVER_SEED_DEFAULT = _config_default(PruneConfig, "seed")

Balance = Annotated[bool, typer.Option(
    "--balance/--no-balance", rich_help_panel=P_TUNING, help="optimization / auto: prune the same share of every class.")]
Strata = Annotated[int, typer.Option(
    "--strata", rich_help_panel=P_TUNING,
    help="optimization / auto: prune the same share of each of K difficulty quantile bins (mean training loss); 1 = off.")]
HardCutoff = Annotated[Optional[str], typer.Option(
    "--hard-cutoff", metavar="B|auto|Fx", rich_help_panel=P_TUNING,
    help="optimization / ccs / ccs-loss / d2: prune this share B of all samples, hardest first, before selecting; "
         "auto = CCS's schedule (B = ratio - 0.6 clipped to [0, 0.4]: CCS's published 0.2 at 80 % and 0.3 at 90 % "
         "pruned); Fx = F times the prune ratio. " + default_note("0 for optimization and --method auto, auto for ccs, ccs-loss, d2"))]
MatchFeatures = Annotated[bool, typer.Option(
    "--match-features/--no-match-features", rich_help_panel=P_TUNING,
    help="optimization / auto: also keep each class / stratum's mean penultimate feature (herding's criterion).")]
ScoreEpoch = Annotated[Optional[int], typer.Option(
    "--score-epoch", rich_help_panel=P_TUNING,
    help="el2n / grand: score the model after this many epochs. "
         + default_note("10 % of training for el2n, 0 (initialization) for grand"))]
ScoreSeeds = Annotated[int, typer.Option(
    "--score-seeds", rich_help_panel=P_TUNING, help="el2n / grand: average over this many training seeds (the authors use 10; 3 is a cost-aware default).")]
Buckets = Annotated[int, typer.Option(
    "--buckets", rich_help_panel=P_TUNING,
    help="optimization / auto: solve K buckets of rows in parallel, then refine on all of S; 1 = unbucketed.")]
Workers = Annotated[Optional[int], typer.Option(
    "--workers", rich_help_panel=P_TUNING,
    help="Worker processes for --buckets; the result does not depend on it. " + default_note("min(K, CPU count)"))]

# ------------------------------------------------------------------ influence
ESTIMATOR_DEFAULT = _config_default(InfluenceConfig, "method")


def estimator(panel: str) -> Any:
    return Annotated[str, typer.Option(
        "--estimator", metavar="NAME", rich_help_panel=panel,
        help="Influence estimator: @ESTIMATORS@. exact = dense Hessian, Cholesky (cg above "
             "d = 16384); cg = conjugate gradients; lissa = the paper's; sgd = SGD-Influence (replays training).")]


def damping(panel: str) -> Any:
    return Annotated[Optional[float], typer.Option(
        "--damping", rich_help_panel=panel,
        help="lambda added to the last-layer Hessian. " + default_note("the checkpoint's weight decay; 1e-3 if 0"))]


def lissa(panel: str) -> SimpleNamespace:
    return SimpleNamespace(
        depth=Annotated[int, typer.Option("--lissa-depth", rich_help_panel=panel, help="LiSSA recursion depth.")],
        scale=Annotated[float, typer.Option(
            "--lissa-scale", rich_help_panel=panel, help="LiSSA scale (above the largest Hessian eigenvalue).")],
        batch=Annotated[int, typer.Option(
            "--lissa-batch-size", rich_help_panel=panel, help="LiSSA minibatch for the stochastic Hessian.")],
        repeats=Annotated[int, typer.Option(
            "--lissa-repeats", rich_help_panel=panel, help="Independent LiSSA runs averaged.")],
        seed=Annotated[int, typer.Option("--lissa-seed", rich_help_panel=panel, help="LiSSA sampling seed.")],
    )


LISSA_DEFAULTS = {k: _config_default(InfluenceConfig, f) for k, f in (
    ("depth", "lissa_depth"), ("scale", "lissa_scale"), ("batch", "lissa_batch_size"), ("repeats", "lissa_repeats"),
    ("seed", "seed"))}
