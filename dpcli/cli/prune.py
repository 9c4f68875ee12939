"""`dpcli prune`: choose the samples to PRUNE and write mask.h5 (keep = train on it)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from dpcli import console
from dpcli.cli import estimation as est
from dpcli.cli import options as o
from dpcli.cli import outputs as opt_out
from dpcli.cli.embeddings import max_iter_option, tol_option
from dpcli.errors import DpcliError

EPILOG = (
    "SOURCE is a file when it ends in .h5/.hdf5 or contains a '/', else a dataset name. "
    "All options (selector tuning, dataset-mode training and influence): dpcli prune --help-all"
)


def _cutoff(value: Optional[str], method: str) -> tuple[Optional[float], Optional[float]]:
    """--hard-cutoff B | auto | Fx  ->  (cutoff, cutoff_ratio) of PruneConfig."""
    if value is None:
        from dpcli.select.base import SELECTORS

        return (None if SELECTORS.get(method).auto_cutoff else 0.0), None
    text = value.strip().lower()
    if text == "auto":
        return None, None
    try:
        if text.endswith("x"):
            return 0.0, float(text[:-1])
        return float(text), None
    except ValueError:
        raise DpcliError(
            f"--hard-cutoff must be a share in [0, 1), 'auto' or F followed by x (F times the prune "
            f"ratio), got {value!r}"
        ) from None


def _summary(mask) -> dict:
    samples = mask.samples
    return {
        "mask": str(mask.path),
        "mode": mask.mode,
        "target": mask.target,
        "achieved_norm": mask.norm,
        "solver": mask.solver,
        "method": mask.method,
        "selector": selector_text(mask),
        "n": samples.total,
        "n_kept": mask.n_kept,
        "n_pruned": samples.total - mask.n_kept,
        "prune_ratio": (samples.total - mask.n_kept) / samples.total,
        "n_readable": samples.n,
        "n_unreadable": samples.total - samples.n,
        "unreadable": samples.unreadable.tolist(),
        "influence": mask.influence,
        "checkpoint": mask.checkpoint,
        "dataset": mask.dataset,
        "seconds": mask.seconds,
        **({"auto": mask.auto} if mask.auto is not None else {}),
        **(
            {"classes_without_kept_samples": mask.classes_without_kept_samples}
            if mask.classes_without_kept_samples
            else {}
        ),
        **({"class_shares": mask.class_shares} if mask.class_shares else {}),
    }


def selector_text(mask) -> str:
    """The rule that chose the pruned set, in plain words: the selector, and for auto what it chose."""
    if mask.method == "auto" and mask.auto is not None:
        chosen = mask.auto.get("chosen", "?")
        return f"method auto -> chose {chosen}" + ("" if chosen == mask.solver else f", solver {mask.solver}")
    if mask.method == "optimization":
        return f"method optimization, solver {mask.solver}"
    return f"method {mask.method}"


def print_mask(mask) -> None:
    if mask.auto is not None:  # --method auto: what it chose and why, one line
        console.info(mask.auto["line"])
    what = f"epsilon {mask.target:g}" if mask.mode == "epsilon" else f"prune count {int(mask.target)}"
    total, pruned = mask.n_samples, mask.n_samples - mask.n_kept
    console.info(
        f"[bold]pruned {pruned} of {total}[/bold] ({100 * pruned / total:.1f}%), kept {mask.n_kept}; "
        f"||sum S_pruned|| = {mask.norm:.4g} ({what}; {selector_text(mask)}; {mask.seconds:.1f}s)"
    )
    if mask.n_unreadable:
        console.info(
            f"unreadable: {mask.n_unreadable} file(s) that did not decode are pruned on top of the "
            f"selection (--prune-ratio and --prune-count count the {mask.n} readable samples)"
        )
    console.info(f"mask: {mask.path}  (keep_indices = samples to train on)")


# options that act only when SOURCE is a dataset name (they train the model and compute S)
DATASET_ONLY = ("sketch", "proxy", "freeze_backbone", "snapshot_epochs", "run_root", "max_iter", "tol")
# training options that only the training loop reads (not a frozen backbone's head fit)
LOOP_ONLY = (
    "epochs",
    "lr",
    "momentum",
    "batch_size",
    "augment",
    "snapshot_epochs",
    "channels_last",
    "compile",
    "fp32",
    "deterministic",
)


def check_given(given: dict[str, str], kind: str, pcfg) -> None:
    """Refuse, before any work, an option the input at hand or the chosen selector would leave unused.

    ``kind``: "dataset", "influence" (a dpcli influence.h5) or "external" (an S from another tool).
    """
    from dpcli.select.registry import SELECTORS

    if kind != "dataset":
        names = [*DATASET_ONLY, *o.field_names(o.Training), *o.field_names(est.Estimation), *o.field_names(est.Solve)]
        o.refuse(
            given,
            names,
            "they train the model and compute S when SOURCE is a dataset name, and SOURCE is "
            f"{'an influence file' if kind == 'influence' else 'an external S'}",
        )
    if kind == "external":
        o.refuse(given, ("data_root",), "an external S comes with no dataset to read")
    else:
        o.refuse(given, ("labels",), "--labels gives the classes of an external S's rows; this SOURCE has its own")
    o.refuse(given, ("link_kind",) if "link_dir" not in given else (), "it says how --link-dir links the kept files")
    if "proxy" in given:
        o.refuse(given, ("freeze_backbone",), "--proxy trains its own network to compute S")
    if "freeze_backbone" in given:
        o.refuse(given, LOOP_ONLY, "--freeze-backbone fits the last layer to convergence, without the training loop")
    else:
        o.refuse(given, ("max_iter", "tol"), "they set the --freeze-backbone head fit")
    selector = SELECTORS.get(pcfg.method)
    if not selector.solves:
        o.refuse(given, ("solver", "time_budget"), f"--method {pcfg.method} does not run a solver")
    if pcfg.buckets == 1:
        o.refuse(given, ("workers",), "--workers sets the processes of --buckets K (K > 1)")
    if pcfg.method not in ("el2n", "grand"):
        o.refuse(given, ("score_epoch", "score_seeds"), f"they tune el2n and grand, not --method {pcfg.method}")


def command(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            show_default=False,
            help="influence.h5, an S.npy, or a dataset name (train -> influence -> prune).",
        ),
    ],
    epsilon: o.Epsilon = None,
    prune_ratio: o.Ratio = None,
    prune_count: o.Count = None,
    method: o.Method = o.METHOD_DEFAULT,
    solver: o.Solver = o.SOLVER_DEFAULT,
    solver_seed: o.SolverSeed = o.SOLVER_SEED_DEFAULT,
    time_budget: o.TimeBudget = None,
    labels: opt_out.Labels = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            metavar="FILE",
            rich_help_panel=o.P_OUTPUT,
            help="Mask path. " + o.default_note("beside S in the run directory"),
        ),
    ] = None,
    indices_out: opt_out.IndicesOut = None,
    paths_out: opt_out.PathsOut = None,
    link_dir: opt_out.LinkDir = None,
    link_kind: opt_out.LinkKind = opt_out.LINK_KIND_DEFAULT,
    json: o.JsonOption = False,
    quiet: o.Quiet = False,
    device: o.Device = "auto",
    data_root: o.DataRoot = None,
    run_root: o.RunRoot = None,
    force: o.Force = False,
    no_wait: o.NoWait = False,
    balance: o.Balance = False,
    strata: o.Strata = 1,
    hard_cutoff: o.HardCutoff = None,
    match_features: o.MatchFeatures = False,
    score_epoch: o.ScoreEpoch = None,
    score_seeds: o.ScoreSeeds = 3,
    buckets: o.Buckets = 1,
    workers: o.Workers = None,
    arch: o.DsArch = None,
    width: o.DsWidth = None,
    depth: o.DsDepth = None,
    epochs: o.DsEpochs = None,
    lr: o.DsLr = None,
    momentum: o.DsMomentum = None,
    weight_decay: o.DsWeightDecay = None,
    batch_size: o.DsBatchSize = None,
    augment: o.DsAugment = None,
    image_size: o.DsImageSize = None,
    weights: o.DsWeights = None,
    head_module: o.DsHeadModule = None,
    train_seed: o.DsTrainSeed = o.TRAIN_SEED_DEFAULT,
    channels_last: o.ChannelsLast = None,
    compile: o.Compile = False,
    fp32: o.Fp32 = False,
    deterministic: o.Deterministic = False,
    snapshot_epochs: o.DsSnapshotEpochs = None,
    freeze_backbone: o.DsFreezeBackbone = False,
    max_iter: Annotated[Optional[int], max_iter_option(o.P_DS_TRAIN, "Dataset mode, --freeze-backbone")] = None,
    tol: Annotated[Optional[float], tol_option(o.P_DS_TRAIN, "Dataset mode, --freeze-backbone")] = None,
    estimator: est.DsEstimator = est.INFLUENCE_DEFAULTS.estimator,
    damping: est.DsDamping = None,
    lissa_depth: est.DsLissaDepth = est.INFLUENCE_DEFAULTS.lissa_depth,
    lissa_scale: est.DsLissaScale = est.INFLUENCE_DEFAULTS.lissa_scale,
    lissa_batch_size: est.DsLissaBatchSize = est.INFLUENCE_DEFAULTS.lissa_batch_size,
    lissa_repeats: est.DsLissaRepeats = est.INFLUENCE_DEFAULTS.lissa_repeats,
    lissa_seed: est.DsLissaSeed = est.INFLUENCE_DEFAULTS.seed,
    precision: est.DsPrecision = est.INFLUENCE_DEFAULTS.precision,
    cg_tol: est.DsCgTol = est.INFLUENCE_DEFAULTS.cg_tol,
    cg_max_iter: est.DsCgMaxIter = est.INFLUENCE_DEFAULTS.cg_max_iter,
    sgd_epochs: est.DsSgdEpochs = None,
    sketch_seed: est.DsSketchSeed = est.INFLUENCE_DEFAULTS.sketch_seed,
    sketch: Annotated[
        Optional[int],
        typer.Option(
            "--sketch",
            metavar="K",
            rich_help_panel=o.P_DS_INFLUENCE,
            help="Dataset mode: store S's Johnson-Lindenstrauss sketch S @ R (n x K) and bound the sketched norm. "
            + o.default_note("the sketch only when the dense S would pass $DPCLI_SOLVE_BUDGET (4G)"),
        ),
    ] = None,
    proxy: Annotated[
        Optional[str],
        typer.Option(
            "--proxy",
            metavar="ARCH[:EPOCHS]",
            rich_help_panel=o.P_DS_TRAIN,
            help="Dataset mode: compute S with this small, fast network and schedule instead of the target's "
            "(Selection via Proxy); retrain the target on the mask.",
        ),
    ] = None,
) -> None:
    """Select the samples to PRUNE and write mask.h5 (keep = train on it); ||sum S_pruned|| is certified from S."""
    from dpcli.config import PruneConfig
    from dpcli.stages import pipeline
    from dpcli.stages.outputs import MaskOutputs

    training = o.Training(
        arch=arch,
        width=width,
        depth=depth,
        epochs=epochs,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        batch_size=batch_size,
        augment=augment,
        image_size=image_size,
        weights=weights,
        head_module=head_module,
        train_seed=train_seed,
        channels_last=channels_last,
        compile=compile,
        fp32=fp32,
        deterministic=deterministic,
    )
    estimation = est.Estimation(
        estimator=estimator,
        damping=damping,
        lissa_depth=lissa_depth,
        lissa_scale=lissa_scale,
        lissa_batch_size=lissa_batch_size,
        lissa_repeats=lissa_repeats,
        lissa_seed=lissa_seed,
    )
    solve = est.Solve(
        precision=precision, cg_tol=cg_tol, cg_max_iter=cg_max_iter, sgd_epochs=sgd_epochs, sketch_seed=sketch_seed
    )
    job = o.Job(
        json=json, quiet=quiet, device=device, data_root=data_root, run_root=run_root, force=force, no_wait=no_wait
    )
    console.set_quiet(job.quiet)
    source = o.follow(source)
    cutoff, cutoff_ratio = _cutoff(hard_cutoff, method)
    pcfg = PruneConfig(
        epsilon=epsilon,
        ratio=prune_ratio,
        count=prune_count,
        solver=solver,
        time_budget=time_budget,
        seed=solver_seed,
        buckets=buckets,
        workers=workers,
        method=method,
        balance=balance,
        strata=strata,
        cutoff=cutoff,
        cutoff_ratio=cutoff_ratio,
        match_features=match_features,
        score_epoch=score_epoch,
        score_seeds=score_seeds,
    )
    pipeline.check_prune(pcfg)
    icfg = estimation.config(sketch_k=sketch, **solve.settings())
    outputs = MaskOutputs(indices=indices_out, paths=paths_out, link_dir=link_dir, link_kind=link_kind).check_options()
    pipeline.check_writable(out, "--out")
    from dpcli.cli import embeddings

    given = o.given()
    kind = (
        "external"
        if embeddings.is_external_S(source)
        else "influence"
        if pipeline.is_artifact_path(source)
        else "dataset"
    )
    check_given(given, kind, pcfg)
    head_fit = embeddings.head_fit_settings(tol, max_iter)
    o.epoch_list(snapshot_epochs, 1 << 30)  # its syntax now; its range once the dataset's epochs are known
    if kind == "external":  # an S computed elsewhere: no lineage, still certified from S
        from dpcli.stages.external import prune_external

        mask = prune_external(
            source,
            out or Path(source).with_name(f"mask-{Path(source).stem}.h5"),
            pcfg,
            labels=labels,
            outputs=outputs,
            info=console.info,
        )
        chain: dict = {"lineage": "none known"}
    elif kind == "influence":
        from dpcli.artifacts.runs import mask_path
        from dpcli.stages.core import read_influence_info
        from dpcli.train.loop import resolve_device

        info = read_influence_info(Path(source))  # kind and shape checks before any work
        pipeline.check_prune(pcfg, info.n)
        mask = pipeline.run_prune(
            info.path,
            pcfg,
            out or mask_path(info.path, pcfg),
            outputs,
            device=resolve_device(job.device),
            data_root=job.data_root,
        )
        chain = {}
    else:
        mask, chain = _dataset_mode(
            source,
            pcfg,
            icfg,
            job,
            training,
            outputs,
            out,
            proxy=proxy,
            freeze_backbone=freeze_backbone,
            snapshot_epochs=snapshot_epochs,
            head_fit=head_fit,
        )
    print_mask(mask)
    from dpcli.artifacts.runs import link_latest

    link_latest(
        pipeline.run_root_of(job.run_root),
        {"train": chain.get("checkpoint"), "influence": chain.get("influence"), "prune": mask.path},
    )
    if job.json:
        console.emit_json({"command": "prune", **_summary(mask), **chain, **outputs.summary()})


def _dataset_mode(
    source: str,
    pcfg,
    icfg,
    job,
    training,
    outputs,
    out: Optional[Path],
    *,
    proxy: Optional[str],
    freeze_backbone: bool,
    snapshot_epochs: Optional[str],
    head_fit: tuple[float, int],
):
    """train -> influence -> prune on a dataset name (or Selection via Proxy); the mask and what led to it."""
    from dpcli.artifacts.runs import checkpoint_path, influence_path, mask_path
    from dpcli.stages import pipeline
    from dpcli.train.loop import resolve_device

    pipeline.check_writable(pipeline.run_root_of(job.run_root), "--run-root", directory=True)
    dev = resolve_device(job.device)
    ds = pipeline.load(source, job.data_root, training.image_size, training.input_spec())
    pipeline.check_prune(pcfg, len(ds.train.labels))
    outputs.check_source(ds.samples, source)  # file names exist for this dataset, before training
    tcfg = pipeline.train_config(ds, training.overrides())
    if proxy is not None:
        from dpcli.stages.proxy import ProxySpec, select_via_proxy

        spec = ProxySpec.parse(proxy)
        sel = select_via_proxy(
            ds,
            tcfg,
            spec,
            pcfg,
            device=dev,
            run_root=pipeline.run_root_of(job.run_root),
            influence_cfg=icfg,
            force=job.force,
            out=out,
            outputs=outputs,
        )
        return sel.mask, {
            "proxy": sel.proxy.to_dict(),
            "proxy_checkpoint": str(sel.checkpoint),
            "selection_seconds": sel.seconds,
            "target": tcfg.to_dict(),
        }
    ck_path = checkpoint_path(pipeline.run_root_of(job.run_root), tcfg)
    outputs_vs_run(out, outputs, {"the run's checkpoint": ck_path, "the run's S": influence_path(ck_path, icfg)})
    if freeze_backbone:  # features once, exact head fit, influence.h5 beside them (as `train --freeze-backbone`)
        from dpcli.stages import embeddings

        info = embeddings.freeze_backbone(
            tcfg, ds, ck_path.parent, device=dev, icfg=icfg, damping=icfg.damping, info=console.info, head_fit=head_fit
        )
        mask = pipeline.run_prune(
            info.path, pcfg, out or mask_path(info.path, pcfg), outputs, device=dev, data_root=job.data_root, ds=ds
        )
        return mask, {"influence": str(info.path), "freeze_backbone": True}
    run = pipeline.full_run(
        ds,
        tcfg,
        icfg,
        run_root=job.run_root,
        device=dev,
        data_root=job.data_root,
        force=job.force,
        sketch_large=True,
        snapshot_epochs=o.epoch_list(snapshot_epochs, tcfg.epochs),
    )
    mask = pipeline.run_prune(
        run.influence.path,
        pcfg,
        out or mask_path(run.influence.path, pcfg),
        outputs,
        device=dev,
        data_root=job.data_root,
        ds=ds,
    )
    final = run.checkpoint.final
    assert final is not None  # dpcli writes a checkpoint once an epoch is recorded
    return mask, {
        "checkpoint": str(run.checkpoint_path),
        "influence": str(run.influence.path),
        "test_accuracy": final.test_acc,
    }


def outputs_vs_run(out: Optional[Path], outputs, run: dict) -> None:
    """The run directory's own artifacts are inputs too: an output naming one is refused before training."""
    from dpcli.stages.outputs import check_distinct

    check_distinct(
        {"--out": out, "--indices-out": outputs.indices, "--paths-out": outputs.paths, "--link-dir": outputs.link_dir},
        run,
    )
