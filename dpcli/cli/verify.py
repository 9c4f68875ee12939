"""`dpcli verify-bound`: Theorem 1's predicted test-loss gap beside the observed one (Figure 2)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from dpcli import console
from dpcli.cli import estimation as est
from dpcli.cli import options as o
from dpcli.errors import DpcliError


def _epsilons(text: Optional[str]) -> list[float]:
    if not text:
        return []
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DpcliError(f"--epsilons must be comma-separated numbers, got {text!r}") from None


def _table(report: dict, rows: list) -> None:
    from rich.table import Table

    table = Table(title=f"Theorem 1 on {report['dataset']} (full-data test loss {report['full_test_loss']:.4f})")
    for col in (
        "mask",
        "pruned",
        "eps (=eps_T/n)",
        "||sum S||",
        "bound eps*||gradL||",
        "1st-order",
        "observed gap",
        "test acc",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.label,
            f"{r.n_pruned} ({100 * r.prune_ratio:.0f}%)",
            "-" if r.epsilon is None else f"{r.epsilon:.4g}",
            f"{r.norm:.4g}",
            f"{r.predicted_bound:.4g}",
            f"{r.first_order:+.3g}",
            f"{r.observed_gap:+.4g}",
            f"{r.test_accuracy:.2f}%",
        )
    console.table(table)


def command(
    dataset: Annotated[
        str,
        typer.Argument(
            metavar="DATASET", show_default=False, help="Dataset name; its full-data model is trained if missing."
        ),
    ],
    masks: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--mask",
            metavar="FILE",
            show_default=False,
            rich_help_panel=o.P_SELECT,
            help="Mask to check; repeatable. All must descend from one full-data checkpoint.",
        ),
    ] = None,
    epsilons: Annotated[
        Optional[str],
        typer.Option(
            "--epsilons",
            metavar="E,E,...",
            rich_help_panel=o.P_SELECT,
            help="Epsilons to prune at and check, e.g. 0.01,0.05,0.1.",
        ),
    ] = None,
    solver: o.Solver = o.SOLVER_DEFAULT,
    solver_seed: o.SolverSeed = o.SOLVER_SEED_DEFAULT,
    time_budget: o.TimeBudget = None,
    random_seed: Annotated[
        int,
        typer.Option("--random-seed", rich_help_panel=o.P_SELECT, help="Seed of the random-pruning reference rows."),
    ] = 0,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            metavar="DIR",
            rich_help_panel=o.P_OUTPUT,
            help="Directory for bound.json and bound.png. " + o.default_note("verify-bound/ in the run directory"),
        ),
    ] = None,
    json: o.JsonOption = False,
    quiet: o.Quiet = False,
    device: o.Device = "auto",
    data_root: o.DataRoot = None,
    run_root: o.RunRoot = None,
    force: o.Force = False,
    no_wait: o.NoWait = False,
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
    damping: est.DsDamping = None,
) -> None:
    """Theorem 1 check (Figure 2): predicted test-loss gap beside the observed one after retraining.

    Predicted: epsilon (= Theorem 1's eps/n in dpcli's convention) and epsilon * ||grad L_test(theta)||.
    Observed: test loss of the model retrained on the kept set minus that of the full-data model.
    Each mask is paired with random pruning of the same count.
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
    masks = [o.follow(m) for m in masks or ()]
    if out is not None:
        from dpcli.stages.outputs import check_distinct

        check_distinct(
            {"--out bound.json": out / "bound.json", "--out bound.png": out / "bound.png"},
            {f"--mask {m}": m for m in masks},
        )
    if not epsilons:
        o.refuse(o.given(), ("solver", "solver_seed", "time_budget"), "they prune at --epsilons, which is not given")
    from dpcli.cli import embeddings

    if embeddings.verify_embeddings(
        dataset, masks, epsilons, out, random_seed, solver, time_budget, job.json, job.force
    ):
        return
    eps_list = _epsilons(epsilons)
    if not masks and not eps_list:
        raise DpcliError("give --mask (repeatable) or --epsilons")
    pcfgs = [
        PruneConfig(epsilon=eps, solver=solver, time_budget=time_budget, seed=solver_seed, method="optimization")
        for eps in eps_list
    ]
    for pcfg in pcfgs:
        pipeline.check_prune(pcfg)
    icfg = InfluenceConfig(damping=damping).validate()
    pipeline.check_writable(out / "bound.json" if out is not None else None, "--out")
    if not masks:
        pipeline.check_writable(pipeline.run_root_of(job.run_root), "--run-root", directory=True)
    from dpcli.stages import core
    from dpcli.stages import masks as mask_stage
    from dpcli.train.checkpoint import load_checkpoint
    from dpcli.train.loop import resolve_device

    given = [mask_stage.read_mask(p) for p in masks]
    dev = resolve_device(job.device)
    upstream = mask_stage.upstream_checkpoint(given[0]) if given else None
    ds = pipeline.load(
        dataset,
        job.data_root,
        training.image_size or (upstream.config.image_size if upstream else None),
        training.input_spec(upstream),
    )
    if given:
        ck_path = Path(given[0].checkpoint)
        if any(Path(m.checkpoint) != ck_path for m in given):
            raise DpcliError("all --mask files must descend from the same full-data checkpoint")
        ck = load_checkpoint(ck_path, weights=False)
        info = core.read_influence_info(Path(given[0].influence))
    else:
        tcfg = pipeline.train_config(ds, training.overrides())
        run = pipeline.full_run(
            ds, tcfg, icfg, run_root=job.run_root, device=dev, data_root=job.data_root, force=job.force
        )
        ck_path, ck, info = run.checkpoint_path, run.checkpoint, run.influence
    masks_all = given + [pipeline.ensure_mask(info, p, force=job.force) for p in pcfgs]
    report, rows = pipeline.verify_bound(
        ds, ck_path, ck, info, masks_all, random_seed=random_seed, out_dir=out, device=dev, force=job.force
    )
    _table(report, rows)
    from dpcli.artifacts.runs import link_latest

    link_latest(pipeline.run_root_of(job.run_root), {"verify-bound": report["report"]})
    console.info(f"report: {report['report']}  plot: {report['plot']}")
    if job.json:
        console.emit_json(report)
