"""`dpcli train`: the full-data model and its checkpoint.h5."""

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from dpcli import console
from dpcli.cli import options as o
from dpcli.cli.embeddings import head_fit_settings, max_iter_option, tol_option


def command(
    dataset: Annotated[
        str,
        typer.Argument(metavar="DATASET", show_default=False, help="digits, cifar10, cifar100 or imagefolder:PATH."),
    ],
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            metavar="FILE",
            rich_help_panel=o.P_OUTPUT,
            help="Checkpoint path. " + o.default_note("in the run directory"),
        ),
    ] = None,
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
    train_seed: o.TrainSeed = o.TRAIN_SEED_DEFAULT,
    channels_last: o.ChannelsLast = None,
    compile: o.Compile = False,
    fp32: o.Fp32 = False,
    deterministic: o.Deterministic = False,
    snapshot_epochs: o.SnapshotEpochs = None,
    freeze_backbone: o.FreezeBackbone = False,
    damping: Annotated[
        Optional[float],
        typer.Option(
            "--damping", rich_help_panel=o.P_MODEL, help="--freeze-backbone: the L2 strength of the head fit."
        ),
    ] = None,
    max_iter: Annotated[Optional[int], max_iter_option(o.P_MODEL, "--freeze-backbone")] = None,
    tol: Annotated[Optional[float], tol_option(o.P_MODEL, "--freeze-backbone")] = None,
    json: o.JsonOption = False,
    quiet: o.Quiet = False,
    device: o.Device = "auto",
    data_root: o.DataRoot = None,
    run_root: o.RunRoot = None,
    force: o.Force = False,
    no_wait: o.NoWait = False,
) -> None:
    """Train the full-data model (ERM) and write checkpoint.h5; an interrupted run resumes.

    Also records each sample's loss and correctness per epoch and weight snapshots, which the
    score-based `prune --method` selectors read.

    Under `torchrun --nproc_per_node K -m dpcli train ...` the global batch is split across K
    ranks (DDP); rank 0 alone prints and writes the checkpoint.
    """
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
    from dpcli.cli.prune import LOOP_ONLY

    if freeze_backbone:
        o.refuse(
            o.given(), LOOP_ONLY, "--freeze-backbone fits the last layer to convergence, without the training loop"
        )
        head_fit = head_fit_settings(tol, max_iter)
    else:
        o.refuse(o.given(), ("damping", "max_iter", "tol"), "they set the --freeze-backbone head fit")
    pipeline.check_writable(out, "--out")
    pipeline.check_writable(pipeline.run_root_of(job.run_root) if out is None else None, "--run-root", directory=True)
    from dpcli.artifacts.runs import checkpoint_path, link_latest
    from dpcli.train import distributed
    from dpcli.train.loop import resolve_device

    dist = distributed.from_env(job.device)  # None unless launched by torchrun
    if dist is not None and not dist.is_main:
        console.set_quiet(True)
        job.json = False
    dev = resolve_device(job.device) if dist is None else dist.device
    spec = training.input_spec()  # the weights' own preprocessing
    ds = (
        pipeline.load(dataset, job.data_root, training.image_size, spec)
        if dist is None
        else dist.main_first(lambda: pipeline.load(dataset, job.data_root, training.image_size, spec))
    )
    cfg = pipeline.train_config(ds, training.overrides())
    path = out or checkpoint_path(pipeline.run_root_of(job.run_root), cfg)
    if freeze_backbone:  # embeddings path: features once, exact head fit, influence.h5 beside them
        from dpcli.config import InfluenceConfig
        from dpcli.stages import embeddings

        info = embeddings.freeze_backbone(
            cfg,
            ds,
            path.parent,
            device=dev,
            icfg=InfluenceConfig().validate(),
            damping=damping,
            info=console.info,
            head_fit=head_fit,
        )
        console.info(f"frozen backbone: influence {info.path}  S is {info.n} x {info.d}; next: dpcli prune {info.path}")
        link_latest(pipeline.run_root_of(job.run_root), {"influence": info.path})
        if job.json:
            console.emit_json(
                {
                    "command": "train",
                    "freeze_backbone": True,
                    "influence": str(info.path),
                    "n": info.n,
                    "d": info.d,
                    "damping": info.damping,
                    "seconds": info.seconds,
                }
            )
        return
    t0 = time.perf_counter()
    ck = pipeline.ensure_checkpoint(
        cfg, ds, path, device=dev, force=job.force, dist=dist, snapshot_epochs=o.epoch_list(snapshot_epochs, cfg.epochs)
    )
    final = ck.final
    assert final is not None  # dpcli writes a checkpoint once an epoch is recorded
    if dist is None or dist.is_main:
        link_latest(pipeline.run_root_of(job.run_root), {"train": path})
    console.info(f"checkpoint: {path}  test accuracy {final.test_acc:.2f}%  test loss {final.test_loss:.4f}")
    if job.json:
        console.emit_json(
            {
                "command": "train",
                "checkpoint": str(path),
                "config": cfg.to_dict(),
                "epochs": ck.epoch,
                "test_accuracy": final.test_acc,
                "test_loss": final.test_loss,
                "train_accuracy": final.train_acc,
                "train_seconds": ck.seconds,
                "wall_seconds": time.perf_counter() - t0,
                "world_size": ck.world_size,
            }
        )
    if dist is not None:
        dist.close()
