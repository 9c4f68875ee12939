"""Options shared by several commands, each with one meaning everywhere, grouped into help panels.

Defaults shown in ``--help`` are read from the objects that apply them (``dpcli.config``'s
dataclasses and ``PROFILES``, the selector and solver registries), so help never drifts from
behaviour.  Nothing here imports torch, h5py or matplotlib: ``--help`` and argument errors must
answer fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Callable, Optional

import typer

from dpcli.config import PROFILES, InfluenceConfig, PruneConfig, TrainConfig
from dpcli.errors import DpcliError

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


# ------------------------------------------------------------------ option groups
class Group:
    """Options that several commands share, declared once.

    A command parameter whose default is a Group stands for all its options (:func:`expands` puts
    them into the signature Typer reads, in that place) and receives their values as one object of
    ``values`` type, attribute per option."""

    def __init__(self, values: type, **options: tuple[Any, Any]) -> None:
        self.values, self.options = values, options  # name -> (Annotated type, default)

    def but(self, **options: tuple[Any, Any]) -> "Group":
        """The same group with some options declared differently (same names, same order)."""
        return Group(self.values, **{k: options.get(k, v) for k, v in self.options.items()})

    def without(self, *names: str) -> "Group":
        """The same group less some options (a command they mean nothing to)."""
        return Group(self.values, **{k: v for k, v in self.options.items() if k not in names})


def expands(func: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose Group parameters are spelled out for Typer and gathered again for the call."""
    groups: dict[str, Group] = {}
    params = []
    for p in inspect.signature(func).parameters.values():
        if isinstance(p.default, Group):
            groups[p.name] = p.default
            params += [inspect.Parameter(k, p.kind, annotation=a, default=d) for k, (a, d) in p.default.options.items()]
        else:
            params.append(p)

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        for name, group in groups.items():
            kwargs[name] = group.values(**{k: kwargs.pop(k) for k in group.options})
        return func(**kwargs)

    command.__signature__ = inspect.signature(func).replace(parameters=params)  # type: ignore[attr-defined]
    return command


# ------------------------------------------------------------------ run control and output
class Job(SimpleNamespace):
    """Where and how a command runs and reports (every command has these options)."""


def job_options() -> Group:
    return Group(
        Job,
        json=(Annotated[bool, typer.Option(
            "--json", rich_help_panel=P_OUTPUT, help="One JSON summary on stdout (human output stays on stderr).")],
            False),
        quiet=(Annotated[bool, typer.Option(
            "--quiet", "-q", rich_help_panel=P_OUTPUT, help="No progress bars or human output.")], False),
        device=(Annotated[str, typer.Option("--device", rich_help_panel=P_RUN, help="auto, cpu or cuda[:N].")], "auto"),
        data_root=(Annotated[Optional[Path], typer.Option(
            "--data-root", metavar="DIR", rich_help_panel=P_RUN,
            help="Dataset cache. " + default_note("$DPCLI_DATA or ~/.cache/dpcli/data"))], None),
        run_root=(Annotated[Optional[Path], typer.Option(
            "--run-root", metavar="DIR", rich_help_panel=P_RUN,
            help="Root of the run directories. " + default_note("$DPCLI_RUNS or ./dpcli-runs"))], None),
        force=(Annotated[bool, typer.Option(
            "--force", rich_help_panel=P_RUN, help="Recompute every stage of this command; reuse nothing cached.")],
            False),
        no_wait=(Annotated[bool, typer.Option(
            "--no-wait", rich_help_panel=P_RUN,
            help="Exit (code 75) instead of waiting for another job's artifact.")],
            False),
    )


# ------------------------------------------------------------------ training settings
class Training(SimpleNamespace):
    """The model/optimizer options a user gave; None = the dataset's default from PROFILES."""

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


def training(panel: str) -> Group:
    """The model/optimizer options, in ``panel``."""
    return Group(
        Training,
        arch=(Annotated[Optional[str], typer.Option(
            "--arch", metavar="NAME", rich_help_panel=panel,
            help="convnet, resnet18 or resnet50, or a library model: torchvision:NAME (any torchvision.models "
                 "classifier) or timm:NAME (pip install \"dpcli[timm]\"). " + per_dataset("arch"))], None),
        width=(Annotated[Optional[int], typer.Option(
            "--width", rich_help_panel=panel, help="ConvNet channels (convnet only). " + per_dataset("width"))], None),
        depth=(Annotated[Optional[int], typer.Option(
            "--depth", rich_help_panel=panel, help="ConvNet blocks (convnet only). " + per_dataset("depth"))], None),
        epochs=(Annotated[Optional[int], typer.Option(
            "--epochs", rich_help_panel=panel, help="Training epochs. " + per_dataset("epochs"))], None),
        lr=(Annotated[Optional[float], typer.Option(
            "--lr", rich_help_panel=panel, help="SGD learning rate, cosine-decayed. " + per_dataset("lr"))], None),
        momentum=(Annotated[Optional[float], typer.Option(
            "--momentum", rich_help_panel=panel,
            help="SGD momentum. " + default_note(_config_default(TrainConfig, "momentum")))], None),
        weight_decay=(Annotated[Optional[float], typer.Option(
            "--weight-decay", rich_help_panel=panel,
            help="L2 weight decay. " + default_note(_config_default(TrainConfig, "weight_decay")))], None),
        batch_size=(Annotated[Optional[int], typer.Option(
            "--batch-size", rich_help_panel=panel, help="Training batch size. " + per_dataset("batch_size"))], None),
        augment=(Annotated[Optional[bool], typer.Option(
            "--augment/--no-augment", rich_help_panel=panel, show_default=False,
            help="Random crop + horizontal flip. " + default_note("on for cifar, imagefolder; off for digits"))], None),
        image_size=(Annotated[Optional[int], typer.Option(
            "--image-size", metavar="N", rich_help_panel=panel,
            help="Model input side for images of any size: train on random resized crops of N plus flips; "
                 "evaluate, score and compute influence on a resize to N/0.875 and a center crop of N. Needed for "
                 "folders of mixed sizes. " + default_note("the images' own size"))], None),
        weights=(Annotated[Optional[str], typer.Option(
            "--weights", metavar="W", rich_help_panel=panel,
            help="torchvision:/timm: models: DEFAULT (the library's pretrained weights, downloaded by the library), "
                 "a weights name (e.g. IMAGENET1K_V1), or a local state-dict file. " + default_note("random init"))],
            None),
        head_module=(Annotated[Optional[str], typer.Option(
            "--head-module", metavar="NAME", rich_help_panel=panel,
            help="Dotted name of the last linear layer when dpcli cannot find it (it looks for fc, classifier, head "
                 "and timm's get_classifier()).")], None),
        train_seed=(Annotated[int, typer.Option(
            "--train-seed", rich_help_panel=panel,
            help="Seed of the training run (initialization and batch order).")], _config_default(TrainConfig, "seed")),
        channels_last=(Annotated[Optional[bool], typer.Option(
            "--channels-last/--no-channels-last", rich_help_panel=P_SPEED, show_default=False,
            help="Conv models: NHWC memory format (tensor cores; 1.9x faster ResNet-18 training on an H200). "
                 + default_note("on with CUDA, off on the CPU"))], None),
        compile=(Annotated[bool, typer.Option(
            "--compile", rich_help_panel=P_SPEED,
            help="torch.compile the model (the first epoch pays the compile time; where the compiler fails on "
                 "the model, one warning and the run goes on without it).")], False),
        fp32=(Annotated[bool, typer.Option(
            "--fp32", rich_help_panel=P_SPEED,
            help="CUDA: float32 throughout instead of bf16 autocast (slower; for comparisons).")], False),
        deterministic=(Annotated[bool, typer.Option(
            "--deterministic", rich_help_panel=P_SPEED,
            help="Bitwise-repeatable CUDA runs: deterministic kernels, slower (docs/gpu.md).")], False),
    )


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
    help="Selector: @SELECTORS@. auto: the paper's objective, or coverage or dual-beta if a held-out "
         "check prefers it; optimization: the paper's objective alone; the others are baselines. "
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
    help="optimization / ccs / ccs-loss / d2: prune this share B of all samples (of each class with --balance), hardest first, before selecting; "
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

# ------------------------------------------------------------------ what a prune writes besides the mask
IndicesOut = Annotated[Optional[Path], typer.Option(
    "--indices-out", metavar="FILE", rich_help_panel=P_OUTPUT,
    help="Also write the KEPT indices (.txt or .npy), in the dataset's order.")]
PathsOut = Annotated[Optional[Path], typer.Option(
    "--paths-out", metavar="FILE", rich_help_panel=P_OUTPUT,
    help="imagefolder: also write the KEPT files' paths, one per line.")]
LinkDir = Annotated[Optional[Path], typer.Option(
    "--link-dir", metavar="DIR", rich_help_panel=P_OUTPUT,
    help="imagefolder: lay out the kept subset as a folder of links.")]
LinkKind = Annotated[str, typer.Option(
    "--link-kind", metavar="KIND", rich_help_panel=P_BOUNDARY,
    help="--link-dir: symbolic links, or hard links (the dataset's file system; they outlive a moved source).")]
LINK_KIND_DEFAULT = "symbolic"
Labels = Annotated[Optional[Path], typer.Option(
    "--labels", metavar="FILE", rich_help_panel=P_BOUNDARY,
    help="External S (an .npy or a non-dpcli .h5): one class per row (.npy, .npz, .h5 or .txt; integers or names), "
         "for --balance and auto's class quotas.")]


def given() -> dict[str, str]:
    """The options this command line set explicitly (parameter name -> the flag), to refuse those that would
    have no effect on the input at hand instead of ignoring them."""
    try:  # Typer >= 0.29 vendors Click (see dpcli.cli.application)
        from typer._click.core import ParameterSource
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older Typer on Click
        from click import get_current_context
        from click.core import ParameterSource

    ctx = get_current_context(silent=True)
    if ctx is None:
        return {}
    told = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {p.name: p.opts[0] for p in ctx.command.params
            if p.name and p.opts and ctx.get_parameter_source(p.name) in told}


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


def snapshot_epochs(panel: str) -> Any:
    return Annotated[Optional[str], typer.Option(
        "--snapshot-epochs", metavar="E,E,...", rich_help_panel=panel,
        help="Epochs after which to keep a copy of the weights (0 = initialization), for prune --method el2n/grand "
             "--score-epoch. " + default_note("0 and 10 % of training"))]


def freeze_backbone(panel: str) -> Any:
    return Annotated[bool, typer.Option(
        "--freeze-backbone", rich_help_panel=panel,
        help="Keep the backbone fixed: compute its features once (cached), fit only the last layer as "
             "L2-regularized softmax regression to convergence (deterministic), and write influence.h5 at once; "
             "S is then exact (Theorem 1 holds) and retrain is a head refit. L2 = --damping, else --weight-decay.")]


# ------------------------------------------------------------------ influence
def damping(panel: str) -> Any:
    return Annotated[Optional[float], typer.Option(
        "--damping", rich_help_panel=panel,
        help="lambda added to the last-layer Hessian. " + default_note("the checkpoint's weight decay; 1e-3 if 0"))]


class Estimation(SimpleNamespace):
    """The estimator options a user gave."""

    def config(self, **more: Any) -> InfluenceConfig:
        """The validated InfluenceConfig (``more``: the command's own estimator settings)."""
        from dpcli.stages import pipeline

        pipeline.check_estimator(self.estimator)
        return InfluenceConfig(estimator=self.estimator, damping=self.damping, lissa_depth=self.lissa_depth,
                               lissa_scale=self.lissa_scale, lissa_batch_size=self.lissa_batch_size,
                               lissa_repeats=self.lissa_repeats, seed=self.lissa_seed, **more).validate()


class Solve(SimpleNamespace):
    """The estimator's solve settings (``influence``, and ``prune`` in dataset mode), as InfluenceConfig fields."""

    def settings(self) -> dict[str, Any]:
        return dict(vars(self))


def solve_options(panel: str, sketch_panel: str | None = None) -> Group:
    """How the estimators solve: precision, CG's tolerance and cap, SGD-Influence's epochs, the sketch's seed."""
    return Group(
        Solve,
        precision=(Annotated[str, typer.Option(
            "--precision", metavar="P", rich_help_panel=panel,
            help="exact: float64 = Cholesky in float64; float32-refined = float32 Cholesky refined in float64 to "
                 "--cg-tol (GPUs with slow float64); auto = float64 on CPUs and data-centre GPUs (A100/H100/H200), "
                 "float32-refined elsewhere (docs/gpu.md).")], "float64"),
        cg_tol=(Annotated[float, typer.Option(
            "--cg-tol", rich_help_panel=panel,
            help="cg (and exact above the dense limit): stop each column at relative residual ||r|| <= TOL ||g_i||.")],
            1e-6),
        cg_max_iter=(Annotated[int, typer.Option(
            "--cg-max-iter", rich_help_panel=panel, help="cg: iteration cap per chunk (an error if reached).")], 1000),
        sgd_epochs=(Annotated[Optional[int], typer.Option(
            "--sgd-epochs", rich_help_panel=panel,
            help="sgd: replay only the last E recorded epochs. " + default_note("all recorded epochs"))], None),
        sketch_seed=(Annotated[int, typer.Option(
            "--sketch-seed", rich_help_panel=sketch_panel or panel, help="Seed of the sketch matrix R.")], 0),
    )


def estimation(panel: str) -> Group:
    """The estimator, its damping and LiSSA's settings, in ``panel``."""
    def default(field: str) -> Any:
        return _config_default(InfluenceConfig, field)

    return Group(
        Estimation,
        estimator=(Annotated[str, typer.Option(
            "--estimator", metavar="NAME", rich_help_panel=panel,
            help="Influence estimator: @ESTIMATORS@. exact = dense Hessian, Cholesky (cg above "
                 "d = 16384); cg = conjugate gradients; lissa = the paper's; sgd = SGD-Influence (replays training).")],
            default("estimator")),
        damping=(damping(panel), None),
        lissa_depth=(Annotated[int, typer.Option(
            "--lissa-depth", rich_help_panel=panel, help="LiSSA recursion depth.")], default("lissa_depth")),
        lissa_scale=(Annotated[float, typer.Option(
            "--lissa-scale", rich_help_panel=panel, help="LiSSA scale (above the largest Hessian eigenvalue).")],
            default("lissa_scale")),
        lissa_batch_size=(Annotated[int, typer.Option(
            "--lissa-batch-size", rich_help_panel=panel, help="LiSSA minibatch for the stochastic Hessian.")],
            default("lissa_batch_size")),
        lissa_repeats=(Annotated[int, typer.Option(
            "--lissa-repeats", rich_help_panel=panel, help="Independent LiSSA runs averaged.")],
            default("lissa_repeats")),
        lissa_seed=(Annotated[int, typer.Option(
            "--lissa-seed", rich_help_panel=panel, help="LiSSA sampling seed.")], default("seed")),
    )
