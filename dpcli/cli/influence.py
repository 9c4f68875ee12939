"""`dpcli influence`: S, each sample's influence on the last layer, written to influence.h5."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from dpcli import console
from dpcli.cli import estimation as est
from dpcli.cli import options as o
from dpcli.cli.embeddings import max_iter_option, tol_option
from dpcli.errors import DpcliError


def command(
    checkpoint: Annotated[
        Optional[list[Path]],
        typer.Argument(
            metavar="[CHECKPOINT [PART]...]",
            show_default=False,
            help="checkpoint.h5 written by `dpcli train`; with --merge, followed by the shard files. Omit with "
            "--features.",
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            metavar="FILE",
            rich_help_panel=o.P_OUTPUT,
            help="Influence path. " + o.default_note("beside the checkpoint"),
        ),
    ] = None,
    estimator: est.Estimator = est.INFLUENCE_DEFAULTS.estimator,
    damping: est.Damping = None,
    lissa_depth: est.LissaDepth = est.INFLUENCE_DEFAULTS.lissa_depth,
    lissa_scale: est.LissaScale = est.INFLUENCE_DEFAULTS.lissa_scale,
    lissa_batch_size: est.LissaBatchSize = est.INFLUENCE_DEFAULTS.lissa_batch_size,
    lissa_repeats: est.LissaRepeats = est.INFLUENCE_DEFAULTS.lissa_repeats,
    lissa_seed: est.LissaSeed = est.INFLUENCE_DEFAULTS.seed,
    precision: est.Precision = est.INFLUENCE_DEFAULTS.precision,
    cg_tol: est.CgTol = est.INFLUENCE_DEFAULTS.cg_tol,
    cg_max_iter: est.CgMaxIter = est.INFLUENCE_DEFAULTS.cg_max_iter,
    sgd_epochs: est.SgdEpochs = None,
    sketch_seed: est.SketchSeed = est.INFLUENCE_DEFAULTS.sketch_seed,
    sketch: Annotated[
        Optional[int],
        typer.Option(
            "--sketch",
            metavar="K",
            rich_help_panel=o.P_SCALE,
            help="Store S @ R (n x K), R a seeded d x K Gaussian with N(0, 1/K) entries (Johnson-Lindenstrauss): for a "
            "FIXED subset ||(sum S_i) R|| is within (1 +- t) of ||sum S_i|| with probability >= 1 - 2 exp(-K t^2/8). "
            "prune then bounds the sketched norm.",
        ),
    ] = None,
    shard: Annotated[
        Optional[str],
        typer.Option(
            "--shard",
            metavar="I/K",
            rich_help_panel=o.P_SCALE,
            help="Compute only part I of K of the rows of S (needs --out); the shared cost is repeated per shard. "
            "Join the parts with --merge.",
        ),
    ] = None,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge",
            rich_help_panel=o.P_SCALE,
            help="Merge the shard files given after CHECKPOINT (any order) into one influence.h5 at --out, "
            "identical to an unsharded run.",
        ),
    ] = False,
    features: Annotated[
        Optional[Path],
        typer.Option(
            "--features",
            metavar="FILE",
            rich_help_panel=o.P_EMBED,
            help="Embeddings instead of a checkpoint: float features n x D (.npy, .npz or .h5) from any encoder; the "
            "last layer is fitted here as L2-regularized softmax regression (L2 = --damping, default 1e-3) to "
            "convergence, so S is exact.",
        ),
    ] = None,
    labels: Annotated[
        Optional[Path],
        typer.Option(
            "--labels",
            metavar="FILE",
            rich_help_panel=o.P_EMBED,
            help="With --features: one label per row, integers 0..C-1 or class names (strings).",
        ),
    ] = None,
    test_features: Annotated[
        Optional[Path],
        typer.Option(
            "--test-features",
            metavar="FILE",
            rich_help_panel=o.P_EMBED,
            help="With --features: held-out features, for the test gradient and verify-bound.",
        ),
    ] = None,
    test_labels: Annotated[
        Optional[Path],
        typer.Option(
            "--test-labels", metavar="FILE", rich_help_panel=o.P_EMBED, help="With --test-features: their labels."
        ),
    ] = None,
    max_iter: Annotated[Optional[int], max_iter_option(o.P_EMBED, "With --features")] = None,
    tol: Annotated[Optional[float], tol_option(o.P_EMBED, "With --features")] = None,
    json: o.JsonOption = False,
    quiet: o.Quiet = False,
    device: o.Device = "auto",
    data_root: o.DataRoot = None,
    force: o.Force = False,
    no_wait: o.NoWait = False,
) -> None:
    """Compute S (n x d): each sample's influence on the last linear layer, written to influence.h5.

    Large runs: --shard I/K --out part-I.h5 on K machines, then --merge part-*.h5 --out influence.h5.
    """
    from dpcli.stages import pipeline

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
    job = o.Job(json=json, quiet=quiet, device=device, data_root=data_root, force=force, no_wait=no_wait)
    console.set_quiet(job.quiet)
    inputs = [o.follow(p) for p in checkpoint or ()]
    icfg = estimation.config(sketch_k=sketch, **solve.settings())
    pipeline.check_writable(out, "--out")
    from dpcli.train.checkpoint import load_checkpoint
    from dpcli.train.loop import resolve_device

    if features is not None or labels is not None:
        from dpcli.cli import embeddings

        embeddings.influence_from_features(
            features,
            labels,
            test_features,
            test_labels,
            icfg,
            inputs,
            out,
            job.json,
            resolve_device(job.device),
            tol=tol,
            max_iter=max_iter,
        )
        return
    if max_iter is not None or tol is not None:
        raise DpcliError("--max-iter and --tol set the head fit of --features; a checkpoint's head is trained already")
    if not inputs:
        raise DpcliError("give a checkpoint.h5, or --features and --labels")
    ck_path, parts = inputs[0], inputs[1:]
    from dpcli.stages.outputs import check_distinct

    check_distinct({"--out": out}, {"the checkpoint": ck_path})  # before a reuse check reads --out
    if merge or shard is not None or parts:
        from dpcli.stages import shards

        summary = shards.run(
            ck_path,
            parts,
            merge=merge,
            shard=shard,
            icfg=icfg,
            out=out,
            device_fn=lambda: resolve_device(job.device),
            data_root=job.data_root,
        )
        if job.json:
            console.emit_json(summary)
        return
    load_checkpoint(ck_path, weights=False)  # fail early on a wrong file
    if icfg.estimator == "sgd":  # ... or on one without a recorded SGD trajectory
        from dpcli.influence import sgd

        sgd.load_trajectory(ck_path)
    info = pipeline.ensure_influence(
        ck_path, icfg, device=resolve_device(job.device), ds=None, data_root=job.data_root, force=job.force, out=out
    )
    from dpcli.artifacts.runs import default_run_root, link_latest

    link_latest(default_run_root(), {"influence": info.path})
    console.info(
        f"influence: {info.path}  S is {info.n} x {info.d} ({info.method}, damping {info.damping:g}, "
        f"{info.seconds:.1f}s)"
    )
    if job.json:
        console.emit_json(
            {
                "command": "influence",
                "influence": str(info.path),
                "n": info.n,
                "d": info.d,
                "method": info.method,
                "damping": info.damping,
                "seconds": info.seconds,
                "checkpoint": info.checkpoint,
                "fingerprint": info.fingerprint,
            }
        )
