"""The `dpcli` command line: a thin Typer shell over :mod:`dpcli.stages`.

Conventions every command follows: human output and progress on stderr, one JSON
document on stdout with ``--json``; a user error is one line on stderr and exit 2;
artifacts are written atomically.  KEEP = samples to train on, PRUNED = dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.table import Table

from dpcli import __version__, console
from dpcli.train import distributed
from dpcli.stages import shards as influence_parts
from dpcli.artifacts import runs as pipeline
from dpcli.stages import core as stages
from dpcli.influence import sgd as sgd_influence
from dpcli.stages.bound import BoundRow, plot, predict
from dpcli.config import InfluenceConfig, PruneConfig, TrainConfig, default_train_config
from dpcli.data.sources import Dataset, load_dataset
from dpcli.errors import DpcliError
from dpcli.train.loop import Checkpoint, EpochRecord, load_checkpoint, resolve_device, train as train_model

EPSILON_HELP = (
    "Generalization-guaranteed mode (Eq. 3): prune as many samples as possible while "
    "||sum_{pruned} S_i||_2 <= EPSILON, where S_i = (1/n) H^-1 grad L(z_i) on the last layer. "
    "EPSILON is thus the predicted change of the last-layer parameters (Eq. 3's convention, 1/n inside S); "
    "Theorem 1's epsilon is n times larger, and its bound eps_T/n equals this EPSILON."
)

app = typer.Typer(
    name="dpcli", add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
    help=(
        "Prune training sets with a proven, small effect on the trained model "
        "(Yang et al., ICLR 2023). Stages: train -> influence -> prune -> retrain / verify-bound; "
        "each reads and writes HDF5 artifacts. Masks mark KEPT samples (keep=True trains); "
        "pruned_indices are the dropped ones."
    ),
)

# ------------------------------------------------------------------ shared options
DataRoot = Annotated[Optional[Path], typer.Option("--data-root", help="Where datasets are downloaded/cached [default: $DPCLI_DATA or ~/.cache/dpcli/data].")]
RunRoot = Annotated[Optional[Path], typer.Option("--run-root", help="Root of the configuration-keyed run directories [default: $DPCLI_RUNS or ./dpcli-runs].")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
Force = Annotated[bool, typer.Option("--force", help="Recompute every stage of this command instead of reusing cached artifacts.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout (human output stays on stderr).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or human output.")]
Arch = Annotated[Optional[str], typer.Option("--arch", help="convnet, resnet18 or resnet50 [default: per dataset; resnet18 for CIFAR, convnet for digits].")]
Width = Annotated[Optional[int], typer.Option("--width", help="ConvNet channels.")]
Depth = Annotated[Optional[int], typer.Option("--depth", help="ConvNet blocks.")]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="Training epochs [default: 200 for CIFAR (paper), 30 for digits].")]
Lr = Annotated[Optional[float], typer.Option("--lr", help="SGD learning rate, cosine-decayed [default: 0.01 (paper)].")]
Momentum = Annotated[Optional[float], typer.Option("--momentum", help="SGD momentum [default: 0.9].")]
WeightDecay = Annotated[Optional[float], typer.Option("--weight-decay", help="L2 weight decay [default: 5e-4].")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Training batch size [default: 128].")]
Augment = Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Random crop + horizontal flip [default: on where it suits the data, off for digits].")]
Method = Annotated[str, typer.Option("--method", help="Influence estimator: exact (dense Hessian, Cholesky, float64; switches to cg above the dense limit, d > 16384), cg (preconditioned conjugate gradients to --cg-tol, no d x d matrix), lissa (the paper's) or sgd (SGD-Influence: replays the last-layer SGD trajectory recorded by train, on frozen final features; see --sgd-epochs).")]
Damping = Annotated[Optional[float], typer.Option("--damping", help="lambda added to the last-layer Hessian (required: the softmax Hessian is singular) [default: the checkpoint's weight decay, which makes H the Hessian of the regularized training objective; 1e-3 if that is 0].")]
LissaDepth = Annotated[int, typer.Option("--lissa-depth", help="LiSSA recursion depth.")]
LissaScale = Annotated[float, typer.Option("--lissa-scale", help="LiSSA scale (must exceed the largest Hessian eigenvalue; divided out of the result).")]
LissaBatch = Annotated[int, typer.Option("--lissa-batch-size", help="LiSSA minibatch for the stochastic Hessian.")]
LissaRepeats = Annotated[int, typer.Option("--lissa-repeats", help="Independent LiSSA runs averaged.")]
InfluenceMethod = Annotated[str, typer.Option("--influence-method", help="Influence estimator for the dataset mode: exact, cg, lissa or sgd (see `dpcli influence --help`).")]
Selector = Annotated[str, typer.Option("--method", help="Selector: optimization (the paper's: Eq. 3/4 on S; default), random, herding (class-wise, final features), forgetting (events counted during train), grand / el2n (early-training gradient / error norm averaged over --score-seeds), influence-score (||S_i|| alone), ccs (stratified over difficulty with a hard cutoff), tdds (training-dynamics variability). Score rules keep the highest scores; all write the same mask.h5 and report ||sum S_pruned||.")]
Balance = Annotated[bool, typer.Option("--balance/--no-balance", help="optimization: prune the same share of every class (a constraint of the solve).")]
Strata = Annotated[int, typer.Option("--strata", help="optimization: split each group into K difficulty quantile bins (mean training loss over epochs) and prune the same share of each, so the kept set covers the difficulty distribution [default: 1 = off].")]
HardCutoff = Annotated[Optional[str], typer.Option("--hard-cutoff", help="optimization / ccs: prune this share B of all samples, the hardest first, before selecting; 'auto' = CCS's schedule (0 up to 50 % pruned, 0.1 at 70 %, 0.3 at 90 %); 'Fx' = F times the prune ratio (0.5x: half of the pruned samples are the hardest) [default: 0 for optimization, auto for ccs].")]
MatchFeatures = Annotated[bool, typer.Option("--match-features/--no-match-features", help="optimization: also make the pruned samples of every class / stratum average to its mean penultimate feature, so the kept set keeps each group's feature mean (herding's criterion) while the influence still cancels.")]
ScoreEpoch = Annotated[Optional[int], typer.Option("--score-epoch", help="el2n / grand: score the model after this many epochs [default: 10 % of training for el2n, 0 (initialization) for grand].")]
ScoreSeeds = Annotated[int, typer.Option("--score-seeds", help="el2n / grand: average over this many training seeds (seed 0 is the full run; the others train only up to --score-epoch, cached).")]
Epsilon = Annotated[Optional[float], typer.Option("--epsilon", help=EPSILON_HELP)]
Ratio = Annotated[Optional[float], typer.Option("--prune-ratio", help="Cardinality mode (Eq. 4): PRUNE this fraction of the training set, minimizing ||sum S_i||.")]
Count = Annotated[Optional[int], typer.Option("--prune-count", help="Cardinality mode (Eq. 4): PRUNE exactly this many samples.")]
Solver = Annotated[str, typer.Option("--solver", help="swap (greedy + swap local search, default, stronger) or anneal (the paper's simulated annealing) or brute (n <= 20).")]
TimeBudget = Annotated[Optional[float], typer.Option("--time-budget", help="Seconds the solver may spend; results then depend on machine speed [default: a fixed, deterministic amount of work].")]


def _overrides(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _load(dataset: str, data_root: Optional[Path]) -> Dataset:
    with console.progress_bar(f"load {dataset}", transient=True) as update:
        return load_dataset(dataset, data_root, progress=lambda done, total: update(done, total))


def _train_with_bar(config: TrainConfig, ds: Dataset, out: Path, *, device, force: bool, keep_indices=None,
                    lineage: dict | None = None, label: str = "train", dist=None,
                    snapshot_epochs: tuple[int, ...] | None = None) -> Checkpoint:
    n_used = len(ds.train.labels) if keep_indices is None else len(keep_indices)
    with console.progress_bar(label, total=config.epochs * n_used) as update:
        last = {"text": ""}

        def on_batch(epoch: int, seen: int, per_epoch: int) -> None:
            update(epoch * per_epoch + seen, status=f"epoch {epoch + 1}/{config.epochs}{last['text']}")

        def on_epoch(rec: EpochRecord) -> None:
            last["text"] = (f" | last: loss {rec.train_loss:.3f} acc {rec.train_acc:.1f}% "
                            f"test {rec.test_acc:.1f}%")
            update(rec.epoch * n_used, status=f"epoch {rec.epoch}/{config.epochs}{last['text']}")

        return train_model(config, ds, out, device=device, keep_indices=keep_indices, force=force,
                           lineage=lineage, on_batch=on_batch, on_epoch=on_epoch, dist=dist,
                           snapshot_epochs=snapshot_epochs)


def _epoch_list(text: Optional[str], epochs: int) -> tuple[int, ...] | None:
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


def _train_config(dataset: str, ds: Dataset, **kw: Any) -> TrainConfig:
    return default_train_config(ds.name, ds.augment).replace(**_overrides(**kw)).validate()


def _influence_config(method: str, damping, depth, scale, batch, repeats, seed: int = 0) -> InfluenceConfig:
    return InfluenceConfig(method=method, damping=damping, lissa_depth=depth, lissa_scale=scale,
                           lissa_batch_size=batch, lissa_repeats=repeats, seed=seed).validate()


def _ensure_influence(ck_path: Path, icfg: InfluenceConfig, *, device, ds: Dataset | None, data_root, force: bool,
                      out: Path | None = None) -> stages.InfluenceInfo:
    out = out or pipeline.influence_path(ck_path, icfg)
    if out.exists() and not force:
        info = stages.read_influence_info(out)
        ck = load_checkpoint(ck_path, weights=False)
        if info.checkpoint_fingerprint == ck.fingerprint and stages.influence_config_of(out) == icfg.to_dict():
            console.info(f"reusing {out}")
            return info
    with console.progress_bar(f"influence ({icfg.method})") as update:
        return stages.compute_influence(ck_path, out, icfg, device=device, data_root=data_root, ds=ds,
                                        progress=lambda done, total: update(done, total))


def _prune(influence: Path, pcfg: PruneConfig, out: Path, indices_out: Optional[Path],
           device: Any = None, data_root: Optional[Path] = None, ds: Any = None) -> stages.MaskInfo:
    what = pcfg.solver if pcfg.method == "optimization" else pcfg.method
    with console.progress_bar(f"prune ({what})", total=1.0) as update:
        return stages.prune(influence, out, pcfg, indices_out=indices_out, progress=lambda f: update(f),
                            device=device, data_root=data_root, ds=ds)


def _cutoff(value: Optional[str], method: str) -> tuple[Optional[float], Optional[float]]:
    """--hard-cutoff B | auto | Fx  ->  (cutoff, cutoff_ratio) of PruneConfig."""
    if value is None:
        return (None if method == "ccs" else 0.0), None
    text = value.strip().lower()
    if text == "auto":
        return None, None
    try:
        if text.endswith("x"):
            return 0.0, float(text[:-1])
        return float(text), None
    except ValueError:
        raise DpcliError(f"--hard-cutoff must be a share in [0, 1), 'auto' or F followed by x (F times the prune ratio), got {value!r}") from None


def _mask_summary(mask: stages.MaskInfo) -> dict[str, Any]:
    return {
        "mask": str(mask.path), "mode": mask.mode, "target": mask.target, "achieved_norm": mask.norm,
        "solver": mask.solver, "method": mask.method, "n": mask.n, "n_kept": mask.n_kept, "n_pruned": mask.n_pruned,
        "prune_ratio": mask.n_pruned / mask.n, "influence": mask.influence, "checkpoint": mask.checkpoint,
        "dataset": mask.dataset, "seconds": mask.seconds,
    }


def _print_mask(mask: stages.MaskInfo) -> None:
    what = f"epsilon {mask.target:g}" if mask.mode == "epsilon" else f"prune count {int(mask.target)}"
    console.info(
        f"[bold]pruned {mask.n_pruned} of {mask.n}[/bold] ({100 * mask.n_pruned / mask.n:.1f}%), "
        f"kept {mask.n_kept}; ||sum S_pruned|| = {mask.norm:.4g} ({what}, solver {mask.solver}, {mask.seconds:.1f}s)"
    )
    console.info(f"mask: {mask.path}  (keep_indices = samples to train on)")


def _is_artifact_path(source: str) -> bool:
    p = Path(source)
    return p.suffix.lower() in (".h5", ".hdf5") or p.exists() or "/" in source and not source.startswith("imagefolder:")


# ------------------------------------------------------------------ commands
@app.command()
def train(
    dataset: Annotated[str, typer.Argument(help="digits, cifar10, cifar100 or imagefolder:PATH.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Checkpoint path [default: the run directory].")] = None,
    arch: Arch = None, width: Width = None, depth: Depth = None, epochs: Epochs = None, lr: Lr = None,
    momentum: Momentum = None, weight_decay: WeightDecay = None, batch_size: BatchSize = None,
    augment: Augment = None, seed: Annotated[int, typer.Option("--seed")] = 0, device: Device = "auto",
    snapshot_epochs: Annotated[Optional[str], typer.Option("--snapshot-epochs", help="Comma-separated epochs after which to keep a copy of the weights (0 = initialization), for prune --method el2n/grand --score-epoch [default: 0 and 10 % of training].")] = None,
    data_root: DataRoot = None, run_root: RunRoot = None, force: Force = False, json: Json = False, quiet: Quiet = False,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Conv models: NHWC memory format (faster with CUDA tensor cores).")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model (first epoch pays the compile time).")] = False,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="Bitwise-repeatable CUDA runs: deterministic kernels, slower (docs/gpu.md).")] = False,
) -> None:
    """Train the full-data model (ERM) and write checkpoint.h5; an interrupted run resumes.

    Also records each sample's loss and correctness per epoch and weight snapshots, which the
    score-based `prune --method` selectors read.

    Under `torchrun --nproc_per_node K -m dpcli train ...` the global batch is split across K
    ranks (DDP); rank 0 alone prints and writes the checkpoint.
    """
    console.set_quiet(quiet)
    dist = distributed.from_env(device)  # None unless launched by torchrun
    if dist is not None and not dist.is_main:
        console.set_quiet(True)
        json = False
    dev = resolve_device(device) if dist is None else dist.device
    ds = _load(dataset, data_root) if dist is None else dist.main_first(lambda: _load(dataset, data_root))
    cfg = _train_config(dataset, ds, arch=arch, width=width, depth=depth, epochs=epochs, lr=lr, momentum=momentum,
                        weight_decay=weight_decay, batch_size=batch_size, augment=augment, seed=seed)
    cfg = cfg.replace(channels_last=channels_last or None, compile=compile_model or None,
                      deterministic=deterministic or None)
    path = out or pipeline.checkpoint_path(run_root or pipeline.default_run_root(), cfg)
    t0 = time.perf_counter()
    ck = _train_with_bar(cfg, ds, path, device=dev, force=force, dist=dist,
                         snapshot_epochs=_epoch_list(snapshot_epochs, cfg.epochs))
    final = ck.final
    console.info(f"checkpoint: {path}  test accuracy {final.test_acc:.2f}%  test loss {final.test_loss:.4f}")
    if json:
        console.emit_json({"command": "train", "checkpoint": str(path), "config": cfg.to_dict(), "epochs": ck.epoch,
                           "test_accuracy": final.test_acc, "test_loss": final.test_loss,
                           "train_accuracy": final.train_acc, "train_seconds": ck.seconds,
                           "wall_seconds": time.perf_counter() - t0, "world_size": ck.world_size})
    if dist is not None:
        dist.close()


@app.command()
def influence(
    checkpoint: Annotated[list[Path], typer.Argument(help="checkpoint.h5 written by `dpcli train`; with --merge, followed by the shard files.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", help="Influence path [default: beside the checkpoint].")] = None,
    method: Method = "exact", damping: Damping = None, lissa_depth: LissaDepth = 1000, lissa_scale: LissaScale = 10.0,
    lissa_batch_size: LissaBatch = 512, lissa_repeats: LissaRepeats = 1,
    seed: Annotated[int, typer.Option("--seed", help="LiSSA sampling seed.")] = 0,
    cg_tol: Annotated[float, typer.Option("--cg-tol", help="cg (and exact above the dense limit): stop each column at relative residual ||r|| <= TOL ||g_i||.")] = 1e-6,
    cg_max_iter: Annotated[int, typer.Option("--cg-max-iter", help="cg: iteration cap per chunk (an error if reached).")] = 1000,
    sketch: Annotated[Optional[int], typer.Option("--sketch", help="Store S @ R (n x K) with R a seeded d x K Gaussian, N(0, 1/K) entries (Johnson-Lindenstrauss). For a fixed subset, ||(sum S_i) R|| lies within (1 +- t) of ||sum S_i|| with probability >= 1 - 2 exp(-K t^2 / 8); e.g. K=2048, t=0.15: >= 99.3% (Gaussian concentration, t >= 1/K). prune then bounds the sketched norm.")] = None,
    sketch_seed: Annotated[int, typer.Option("--sketch-seed", help="Seed of the sketch matrix R (deterministic).")] = 0,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Compute only part I/K of S: rows [floor(I n/K), floor((I+1) n/K)). Each shard repeats the shared cost (features, Hessian/Cholesky or preconditioner from all data) and solves ~1/K of the rows; needs --out. Join with --merge.")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Merge shard files (given after CKPT, any order) into one influence.h5 at --out, identical to an unsharded run.")] = False,
    sgd_epochs: Annotated[Optional[int], typer.Option("--sgd-epochs", help="sgd: replay only the last E recorded epochs (cost O(E n^2 C D)) [default: all recorded epochs].")] = None,
    device: Device = "auto", data_root: DataRoot = None, force: Force = False, json: Json = False, quiet: Quiet = False,
) -> None:
    """Compute S (n x d): each sample's influence on the last linear layer, written to influence.h5.

    Large runs: --shard I/K --out part-I.h5 on K machines, then --merge part-*.h5 --out influence.h5.
    """
    console.set_quiet(quiet)
    icfg = _influence_config(method, damping, lissa_depth, lissa_scale, lissa_batch_size, lissa_repeats, seed)
    icfg = dataclasses.replace(icfg, cg_tol=cg_tol, cg_max_iter=cg_max_iter, sketch_k=sketch,
                               sketch_seed=sketch_seed, sgd_epochs=sgd_epochs).validate()
    checkpoint, parts = checkpoint[0], checkpoint[1:]
    if merge or shard is not None or parts:
        summary = influence_parts.run(checkpoint, parts, merge=merge, shard=shard, icfg=icfg, out=out,
                                      device_fn=lambda: resolve_device(device), data_root=data_root)
        if json:
            console.emit_json(summary)
        return
    load_checkpoint(checkpoint, weights=False)  # fail early on a wrong file
    if icfg.method == "sgd":  # ... or on one without a recorded SGD trajectory
        sgd_influence.load_trajectory(checkpoint)
    info = _ensure_influence(checkpoint, icfg, device=resolve_device(device), ds=None, data_root=data_root,
                             force=force, out=out)
    console.info(f"influence: {info.path}  S is {info.n} x {info.d} ({info.method}, damping {info.damping:g}, {info.seconds:.1f}s)")
    if json:
        console.emit_json({"command": "influence", "influence": str(info.path), "n": info.n, "d": info.d,
                           "method": info.method, "damping": info.damping, "seconds": info.seconds,
                           "checkpoint": info.checkpoint, "fingerprint": info.fingerprint})


@app.command()
def prune(
    source: Annotated[str, typer.Argument(help="influence.h5, or a dataset name to run train -> influence -> prune (cached).")],
    epsilon: Epsilon = None, prune_ratio: Ratio = None, prune_count: Count = None, solver: Solver = "swap",
    time_budget: TimeBudget = None, seed: Annotated[int, typer.Option("--seed", help="Solver seed.")] = 0,
    buckets: Annotated[int, typer.Option("--buckets", help="Solve in K buckets of rows in parallel, then refine on all of S (the constraint holds globally) [default: 1 = unbucketed].")] = 1,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Worker processes for --buckets [default: min(K, CPU count)]; the result does not depend on it.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Mask path [default: beside S in the run directory].")] = None,
    indices_out: Annotated[Optional[Path], typer.Option("--indices-out", help="Also write the KEPT indices as .txt (one per line) or .npy.")] = None,
    arch: Arch = None, width: Width = None, depth: Depth = None, epochs: Epochs = None, lr: Lr = None,
    momentum: Momentum = None, weight_decay: WeightDecay = None, batch_size: BatchSize = None, augment: Augment = None,
    train_seed: Annotated[int, typer.Option("--train-seed", help="Training seed (dataset mode).")] = 0,
    method: Selector = "optimization", balance: Balance = False, strata: Strata = 1, hard_cutoff: HardCutoff = None,
    match_features: MatchFeatures = False, score_epoch: ScoreEpoch = None, score_seeds: ScoreSeeds = 3,
    influence_method: InfluenceMethod = "exact", damping: Damping = None, lissa_depth: LissaDepth = 1000,
    lissa_scale: LissaScale = 10.0, lissa_batch_size: LissaBatch = 512, lissa_repeats: LissaRepeats = 1,
    device: Device = "auto", data_root: DataRoot = None, run_root: RunRoot = None, force: Force = False,
    json: Json = False, quiet: Quiet = False,
    proxy: Annotated[Optional[str], typer.Option("--proxy", help="ARCH[:EPOCHS]: compute S with this small, fast network and schedule instead of the target's (dataset mode); retrain the target on the mask.")] = None,
) -> None:
    """Select the samples to PRUNE and write mask.h5 (keep = train on it).

    With --epsilon: the largest prunable set whose summed influence norm stays <= epsilon
    (re-checked from S; refused if violated). With --prune-ratio/--prune-count: that many,
    with the smallest summed influence norm. --method picks a baseline selector instead.
    """
    console.set_quiet(quiet)
    cutoff, cutoff_ratio = _cutoff(hard_cutoff, method)
    pcfg = PruneConfig(epsilon=epsilon, ratio=prune_ratio, count=prune_count, solver=solver,
                       time_budget=time_budget, seed=seed, buckets=buckets, workers=workers, method=method,
                       balance=balance, strata=strata, cutoff=cutoff, cutoff_ratio=cutoff_ratio,
                       match_features=match_features,
                       score_epoch=score_epoch, score_seeds=score_seeds).validate()
    chain: dict[str, Any] = {}
    ds = None
    if proxy is not None:
        _prune_via_proxy(source, proxy, pcfg, out=out, indices_out=indices_out, device=device, data_root=data_root,
                         run_root=run_root, force=force, json=json,
                         train_kw=dict(arch=arch, width=width, depth=depth, epochs=epochs, lr=lr, momentum=momentum,
                                       weight_decay=weight_decay, batch_size=batch_size, augment=augment,
                                       seed=train_seed),
                         icfg=_influence_config(influence_method, damping, lissa_depth, lissa_scale,
                                                lissa_batch_size, lissa_repeats))
        return
    if _is_artifact_path(source):
        influence_file = Path(source)
        stages.read_influence_info(influence_file)  # kind check before any work, then the device
        dev = resolve_device(device)
    else:
        dev = resolve_device(device)
        ds = _load(source, data_root)
        tcfg = _train_config(source, ds, arch=arch, width=width, depth=depth, epochs=epochs, lr=lr, momentum=momentum,
                             weight_decay=weight_decay, batch_size=batch_size, augment=augment, seed=train_seed)
        ck_path = pipeline.checkpoint_path(run_root or pipeline.default_run_root(), tcfg)
        ck = _train_with_bar(tcfg, ds, ck_path, device=dev, force=force)
        icfg = _influence_config(influence_method, damping, lissa_depth, lissa_scale, lissa_batch_size, lissa_repeats)
        info = _ensure_influence(ck_path, icfg, device=dev, ds=ds, data_root=data_root, force=force)
        influence_file = info.path
        chain = {"checkpoint": str(ck_path), "influence": str(info.path), "test_accuracy": ck.final.test_acc}
    mask_file = out or pipeline.mask_path(influence_file, pcfg)
    mask = _prune(influence_file, pcfg, mask_file, indices_out, device=dev, data_root=data_root, ds=ds)
    _print_mask(mask)
    if json:
        summary = {"command": "prune", **_mask_summary(mask), **chain}
        if indices_out:
            summary["indices_out"] = str(indices_out)
        console.emit_json(summary)


def _prune_via_proxy(source: str, proxy: str, pcfg: PruneConfig, *, out, indices_out, device, data_root, run_root,
                     force: bool, json: bool, train_kw: dict, icfg: InfluenceConfig) -> None:
    """`prune DATASET --proxy ARCH[:EPOCHS]`: S from the proxy run, a mask for the target (dpcli.stages.proxy)."""
    from dpcli.stages.proxy import ProxySpec, select_via_proxy

    if _is_artifact_path(source):
        raise DpcliError("--proxy needs a dataset name as SOURCE (it trains the proxy itself), not an influence file")
    spec = ProxySpec.parse(proxy)
    dev = resolve_device(device)
    ds = _load(source, data_root)
    target = _train_config(source, ds, **train_kw)
    sel = select_via_proxy(ds, target, spec, pcfg, device=dev, run_root=run_root or pipeline.default_run_root(),
                           influence_cfg=icfg, force=force, out=out, indices_out=indices_out)
    _print_mask(sel.mask)
    if json:
        console.emit_json({"command": "prune", **_mask_summary(sel.mask), "proxy": sel.proxy.to_dict(),
                           "proxy_checkpoint": str(sel.checkpoint), "selection_seconds": sel.seconds,
                           "target": target.to_dict()})


@app.command()
def retrain(
    dataset: Annotated[str, typer.Argument(help="The dataset the mask was made for.")],
    mask: Annotated[Optional[Path], typer.Option("--mask", help="mask.h5 from `dpcli prune` (else prune options build one).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Checkpoint of the retrained model [default: beside the mask].")] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="Full-data checkpoint to compare against [default: the one the mask descends from].")] = None,
    epsilon: Epsilon = None, prune_ratio: Ratio = None, prune_count: Count = None, solver: Solver = "swap",
    time_budget: TimeBudget = None, solver_seed: Annotated[int, typer.Option("--solver-seed")] = 0,
    arch: Arch = None, width: Width = None, depth: Depth = None, epochs: Epochs = None, lr: Lr = None,
    momentum: Momentum = None, weight_decay: WeightDecay = None, batch_size: BatchSize = None, augment: Augment = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Retraining seed [default: the full run's].")] = None,
    device: Device = "auto", data_root: DataRoot = None, run_root: RunRoot = None, force: Force = False,
    json: Json = False, quiet: Quiet = False,
) -> None:
    """Train a fresh model on the KEPT samples and report accuracy, loss, time and steps.

    --arch etc. override the full run's settings (e.g. prune with a small net, retrain a larger one).
    """
    console.set_quiet(quiet)
    dev = resolve_device(device)
    ds = _load(dataset, data_root)
    overrides = _overrides(arch=arch, width=width, depth=depth, epochs=epochs, lr=lr, momentum=momentum,
                           weight_decay=weight_decay, batch_size=batch_size, augment=augment, seed=seed)
    if mask is None:
        if epsilon is None and prune_ratio is None and prune_count is None:
            raise DpcliError("give --mask, or one of --epsilon / --prune-ratio / --prune-count to compute it")
        pcfg = PruneConfig(epsilon=epsilon, ratio=prune_ratio, count=prune_count, solver=solver,
                           time_budget=time_budget, seed=solver_seed).validate()
        base = _train_config(dataset, ds, **{k: v for k, v in overrides.items() if k != "arch"})
        ck_path = pipeline.checkpoint_path(run_root or pipeline.default_run_root(), base)
        _train_with_bar(base, ds, ck_path, device=dev, force=force)
        info = _ensure_influence(ck_path, InfluenceConfig().validate(), device=dev, ds=ds, data_root=data_root, force=force)
        mask_file = pipeline.mask_path(info.path, pcfg)
        m = stages.read_mask(mask_file) if mask_file.exists() and not force else _prune(info.path, pcfg, mask_file, None)
    else:
        m = stages.read_mask(mask)
    ref = load_checkpoint(reference, weights=False) if reference else stages.upstream_checkpoint(m)
    base_cfg = ref.config if ref is not None else None
    if ref is not None and ref.config.dataset != ds.name:
        raise DpcliError(f"reference checkpoint was trained on {ref.config.dataset!r}, not {ds.name!r}")
    cfg_preview = (base_cfg or default_train_config(ds.name, ds.augment)).replace(**overrides).replace(subset=m.fingerprint)
    path = out or pipeline.retrain_path(m.path, cfg_preview)
    with console.progress_bar("retrain", total=cfg_preview.epochs * m.n_kept) as update:
        result = stages.retrain(ds, m, path, base=base_cfg, overrides=overrides, device=dev, force=force, reference=ref,
                                on_batch=lambda e, s, per: update(e * per + s),
                                on_epoch=lambda r: update(r.epoch * m.n_kept, status=f"epoch {r.epoch} test {r.test_acc:.1f}%"))
    stages_metrics = result.metrics
    from dpcli.artifacts.h5 import write_json

    write_json(path.with_name("metrics.json"), stages_metrics)
    console.info(
        f"retrained on {m.n_kept} kept samples ({100 * m.n_pruned / m.n:.1f}% pruned): test accuracy "
        f"{stages_metrics['test_accuracy']:.2f}%, loss {stages_metrics['test_loss']:.4f}, "
        f"{stages_metrics['optimizer_steps']} steps, {stages_metrics['train_seconds']:.1f}s"
    )
    if "full_data_test_accuracy" in stages_metrics:
        console.info(f"full data: test accuracy {stages_metrics['full_data_test_accuracy']:.2f}%, "
                     f"{stages_metrics['full_data_optimizer_steps']} steps, {stages_metrics['full_data_train_seconds']:.1f}s")
    console.info(f"checkpoint: {path}  metrics: {path.with_name('metrics.json')}")
    if json:
        console.emit_json({"command": "retrain", **stages_metrics, "metrics_file": str(path.with_name("metrics.json"))})


@app.command("verify-bound")
def verify_bound(
    dataset: Annotated[str, typer.Argument(help="Dataset name; its full-data model is trained if missing.")],
    masks: Annotated[Optional[list[Path]], typer.Option("--mask", help="Mask(s) to check; repeatable.")] = None,
    epsilons: Annotated[Optional[str], typer.Option("--epsilons", help="Comma-separated epsilons to prune and check, e.g. 0.01,0.05,0.1.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Directory for bound.json and bound.png [default: the run directory].")] = None,
    random_seed: Annotated[int, typer.Option("--random-seed", help="Seed of the random-pruning reference rows.")] = 0,
    solver: Solver = "swap", time_budget: TimeBudget = None,
    arch: Arch = None, width: Width = None, depth: Depth = None, epochs: Epochs = None, lr: Lr = None,
    momentum: Momentum = None, weight_decay: WeightDecay = None, batch_size: BatchSize = None, augment: Augment = None,
    train_seed: Annotated[int, typer.Option("--train-seed")] = 0, damping: Damping = None,
    device: Device = "auto", data_root: DataRoot = None, run_root: RunRoot = None, force: Force = False,
    json: Json = False, quiet: Quiet = False,
) -> None:
    """Theorem 1 check (Figure 2): predicted test-loss gap beside the observed one after retraining.

    Predicted: epsilon (= Theorem 1's eps/n in dpcli's convention) and epsilon * ||grad L_test(theta)||.
    Observed: test loss of the model retrained on the kept set minus that of the full-data model.
    Each mask is paired with random pruning of the same count.
    """
    console.set_quiet(quiet)
    dev = resolve_device(device)
    ds = _load(dataset, data_root)
    eps_list: list[float] = []
    if epsilons:
        try:
            eps_list = [float(x) for x in epsilons.split(",") if x.strip()]
        except ValueError:
            raise DpcliError(f"--epsilons must be comma-separated numbers, got {epsilons!r}") from None
    if not masks and not eps_list:
        raise DpcliError("give --mask (repeatable) or --epsilons")
    mask_infos: list[stages.MaskInfo] = [stages.read_mask(p) for p in (masks or [])]
    if mask_infos:
        ck_path = Path(mask_infos[0].checkpoint)
        if any(Path(mi.checkpoint) != ck_path for mi in mask_infos):
            raise DpcliError("all --mask files must descend from the same full-data checkpoint")
        ck = load_checkpoint(ck_path, weights=False)
        influence_file = Path(mask_infos[0].influence)
        if eps_list:
            info = stages.read_influence_info(influence_file)
    else:
        tcfg = _train_config(dataset, ds, arch=arch, width=width, depth=depth, epochs=epochs, lr=lr, momentum=momentum,
                             weight_decay=weight_decay, batch_size=batch_size, augment=augment, seed=train_seed)
        ck_path = pipeline.checkpoint_path(run_root or pipeline.default_run_root(), tcfg)
        ck = _train_with_bar(tcfg, ds, ck_path, device=dev, force=force)
        info = _ensure_influence(ck_path, InfluenceConfig(damping=damping).validate(), device=dev, ds=ds,
                                 data_root=data_root, force=force)
        influence_file = info.path
    for eps in eps_list:
        pcfg = PruneConfig(epsilon=eps, solver=solver, time_budget=time_budget).validate()
        mfile = pipeline.mask_path(influence_file, pcfg)
        mask_infos.append(stages.read_mask(mfile) if mfile.exists() and not force else _prune(influence_file, pcfg, mfile, None))
    if ck.dataset_fingerprint != ds.fingerprint:
        raise DpcliError(f"{ck_path}: checkpoint was made for another dataset than {ds.name!r}")
    full_loss = ck.final.test_loss
    rows: list[BoundRow] = []
    info = stages.read_influence_info(influence_file)
    for mi in mask_infos:
        rnd_file = pipeline.random_mask_path(influence_file, mi.n_pruned, random_seed)
        rnd = stages.read_mask(rnd_file) if rnd_file.exists() and not force else stages.random_mask(info, mi.n_pruned, random_seed, rnd_file)
        for label, m in ((f"{mi.mode} {mi.target:g}", mi), (f"random {mi.n_pruned}", rnd)):
            if m.n_pruned == 0:
                console.info(f"skipping {label}: it prunes nothing")
                continue
            cfg = ck.config.replace(subset=m.fingerprint)
            path = pipeline.retrain_path(m.path, cfg)
            res = stages.retrain(ds, m, path, base=ck.config, overrides={}, device=dev, force=force, reference=ck)
            norm, bound, first = predict(influence_file, ~m.keep)
            rows.append(BoundRow(
                label=label, method=m.method, mask=str(m.path), n_pruned=m.n_pruned, prune_ratio=m.n_pruned / m.n,
                epsilon=m.target if m.mode == "epsilon" else None, norm=norm, predicted_bound=bound, first_order=first,
                observed_gap=res.metrics["test_loss"] - full_loss, test_loss=res.metrics["test_loss"],
                test_accuracy=res.metrics["test_accuracy"]))
            console.info(f"{label}: observed gap {rows[-1].observed_gap:+.4g}, predicted bound {bound:.4g}")
    out_dir = out or ck_path.parent / "verify-bound"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "verify-bound", "dataset": ds.name, "checkpoint": str(ck_path), "influence": str(influence_file),
        "n": info.n, "full_test_loss": full_loss, "full_test_accuracy": ck.final.test_acc,
        "epsilon_convention": "epsilon = ||sum_{pruned} S_i||, S_i = (1/n) H^-1 grad L(z_i); Theorem 1's eps/n equals it",
        "rows": [r.to_dict() for r in rows],
    }
    from dpcli.artifacts.h5 import write_json

    write_json(out_dir / "bound.json", report)
    if rows:
        plot(rows, out_dir / "bound.png")
    table = Table(title=f"Theorem 1 on {ds.name} (full-data test loss {full_loss:.4f})")
    for col in ("mask", "pruned", "eps (=eps_T/n)", "||sum S||", "bound eps*||gradL||", "1st-order", "observed gap", "test acc"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.label, f"{r.n_pruned} ({100 * r.prune_ratio:.0f}%)",
                      "-" if r.epsilon is None else f"{r.epsilon:.4g}", f"{r.norm:.4g}", f"{r.predicted_bound:.4g}",
                      f"{r.first_order:+.3g}", f"{r.observed_gap:+.4g}", f"{r.test_accuracy:.2f}%")
    console.table(table)
    console.info(f"report: {out_dir / 'bound.json'}  plot: {out_dir / 'bound.png'}")
    if json:
        console.emit_json({**report, "report": str(out_dir / "bound.json"), "plot": str(out_dir / "bound.png")})


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"dpcli {__version__}")
        raise typer.Exit()


def _report_user_errors(func: Callable[..., None]) -> Callable[..., None]:
    """Turn what a user can cause into one stderr line and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except DpcliError as exc:
            console.err.print(f"dpcli: error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.err.print("dpcli: interrupted; completed artifacts are kept, rerun to resume", markup=False)
            raise typer.Exit(130) from None
        except MemoryError:
            console.err.print("dpcli: error: out of memory; use a smaller --batch-size or a larger machine", markup=False)
            raise typer.Exit(1) from None

    return wrapper


for _command in app.registered_commands:
    _command.callback = _report_user_errors(_command.callback)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code instead of exiting (so tests can call it)."""
    try:
        app(args=argv, prog_name="dpcli")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
