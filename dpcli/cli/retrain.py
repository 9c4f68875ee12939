"""`dpcli retrain`: train a fresh model on the KEPT samples of a mask and report what it costs and gives."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from dpcli import console
from dpcli.cli import options as o
from dpcli.errors import DpcliError


def command(
    dataset: Annotated[
        str, typer.Argument(metavar="DATASET", show_default=False, help="The dataset the mask was made for.")
    ],
    mask: Annotated[
        Optional[Path],
        typer.Option(
            "--mask",
            metavar="FILE",
            rich_help_panel=o.P_SELECT,
            help="mask.h5 from `dpcli prune`; without it, the pruning target below builds one in the run directory.",
        ),
    ] = None,
    reference: Annotated[
        Optional[Path],
        typer.Option(
            "--reference",
            metavar="FILE",
            rich_help_panel=o.P_SELECT,
            help="Full-data checkpoint to compare against. " + o.default_note("the one the mask descends from"),
        ),
    ] = None,
    epsilon: o.Epsilon = None,
    prune_ratio: o.Ratio = None,
    prune_count: o.Count = None,
    solver: o.Solver = o.SOLVER_DEFAULT,
    solver_seed: o.SolverSeed = o.SOLVER_SEED_DEFAULT,
    time_budget: o.TimeBudget = None,
    arch: o.Arch = None,
    width: o.Width = None,
    depth: o.Depth = None,
    epochs: o.Epochs = None,
    lr: o.Lr = None,
    momentum: o.Momentum = None,
    weight_decay: o.WeightDecay = None,
    batch_size: o.BatchSize = None,
    augment: o.Augment = None,
    image_size: o.ImageSize = None,
    weights: o.Weights = None,
    head_module: o.HeadModule = None,
    train_seed: Annotated[
        Optional[int],
        typer.Option(
            "--train-seed",
            rich_help_panel=o.P_TRAIN,
            help=o.TRAIN_SEED_HELP
            + " "
            + o.default_note("the full-data run's; 0 for the full-data run in dataset mode"),
        ),
    ] = None,
    channels_last: o.ChannelsLast = None,
    compile: o.Compile = False,
    fp32: o.Fp32 = False,
    deterministic: o.Deterministic = False,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            metavar="FILE",
            rich_help_panel=o.P_OUTPUT,
            help="Checkpoint of the retrained model. " + o.default_note("beside the mask"),
        ),
    ] = None,
    json: o.JsonOption = False,
    quiet: o.Quiet = False,
    device: o.Device = "auto",
    data_root: o.DataRoot = None,
    run_root: o.RunRoot = None,
    force: o.Force = False,
    no_wait: o.NoWait = False,
) -> None:
    """Train a fresh model on the KEPT samples and report accuracy, loss, time and steps.

    The training options override the full run's settings (prune with a small net, retrain a
    larger one). Without --mask, the full-data run (with the same options, except --arch), its
    influence and the mask are computed or reused in the run directory.
    """
    from dpcli.config import InfluenceConfig, PruneConfig
    from dpcli.stages import pipeline

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
    job = o.Job(
        json=json, quiet=quiet, device=device, data_root=data_root, run_root=run_root, force=force, no_wait=no_wait
    )
    console.set_quiet(job.quiet)
    mask = o.follow(mask) if mask is not None else None
    from dpcli.stages.outputs import check_distinct

    check_distinct(
        {"--out": out},
        {"--mask": mask, "--reference": reference, "DATASET": Path(dataset) if Path(dataset).suffix else None},
    )
    if mask is not None:
        o.refuse(
            o.given(),
            ("epsilon", "prune_ratio", "prune_count", "solver", "solver_seed", "time_budget"),
            "they make a mask when there is no --mask",
        )
    if mask is not None:
        from dpcli.cli import embeddings

        if embeddings.retrain_embeddings(dataset, mask, out, job.json, job.force):  # a head refit on kept features
            return
    overrides = training.overrides()
    pcfg = None
    if mask is None:
        if epsilon is None and prune_ratio is None and prune_count is None:
            raise DpcliError("give --mask, or one of --epsilon / --prune-ratio / --prune-count to compute it")
        pcfg = PruneConfig(
            epsilon=epsilon,
            ratio=prune_ratio,
            count=prune_count,
            solver=solver,
            time_budget=time_budget,
            seed=solver_seed,
        )
        pipeline.check_prune(pcfg)
        pipeline.check_writable(pipeline.run_root_of(job.run_root), "--run-root", directory=True)
    pipeline.check_writable(out, "--out")
    from dpcli.stages import masks
    from dpcli.train.loop import resolve_device

    given = masks.read_mask(mask) if mask is not None else None
    dev = resolve_device(job.device)
    upstream = masks.upstream_checkpoint(given) if given is not None else None
    ds = pipeline.load(
        dataset,
        job.data_root,
        training.image_size or (upstream.config.image_size if upstream else None),
        training.input_spec(upstream),
    )
    if pcfg is not None:
        pipeline.check_prune(pcfg, len(ds.train.labels))
        tcfg = pipeline.train_config(ds, {k: v for k, v in overrides.items() if k != "arch"})
        run = pipeline.full_run(
            ds,
            tcfg,
            InfluenceConfig().validate(),
            run_root=job.run_root,
            device=dev,
            data_root=job.data_root,
            force=job.force,
            sketch_large=True,
        )
        given = pipeline.ensure_mask(run.influence, pcfg, force=job.force, device=dev, data_root=job.data_root, ds=ds)
    assert given is not None  # read from --mask, or made for the pruning target
    metrics = pipeline.retrain(
        ds, given, overrides=overrides, reference=reference, out=out, device=dev, force=job.force
    )
    from dpcli.artifacts.runs import link_latest

    chain = (
        {"train": run.checkpoint_path, "influence": run.influence.path, "prune": given.path} if pcfg is not None else {}
    )
    link_latest(pipeline.run_root_of(job.run_root), {**chain, "retrain": metrics["checkpoint"]})
    console.info(
        f"retrained on {given.n_kept} kept samples ({100 * given.n_pruned / given.n:.1f}% pruned): test accuracy "
        f"{metrics['test_accuracy']:.2f}%, loss {metrics['test_loss']:.4f}, "
        f"{metrics['optimizer_steps']} steps, {metrics['train_seconds']:.1f}s"
    )
    if "full_data_test_accuracy" in metrics:
        console.info(
            f"full data: test accuracy {metrics['full_data_test_accuracy']:.2f}%, "
            f"{metrics['full_data_optimizer_steps']} steps, {metrics['full_data_train_seconds']:.1f}s"
        )
    console.info(f"checkpoint: {metrics['checkpoint']}  metrics: {metrics['metrics_file']}")
    if job.json:
        console.emit_json({"command": "retrain", **metrics})
