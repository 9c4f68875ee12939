"""`dpcli prune`: choose the samples to PRUNE and write mask.h5 (keep = train on it)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from dpcli import console
from dpcli.cli import options as o
from dpcli.errors import DpcliError

EPILOG = ("SOURCE is a file when it ends in .h5/.hdf5 or contains a '/', else a dataset name. "
          "All options (selector tuning, dataset-mode training and influence): dpcli prune --help-all")


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
        raise DpcliError(f"--hard-cutoff must be a share in [0, 1), 'auto' or F followed by x (F times the prune "
                         f"ratio), got {value!r}") from None


def _summary(mask) -> dict:
    return {
        "mask": str(mask.path), "mode": mask.mode, "target": mask.target, "achieved_norm": mask.norm,
        "solver": mask.solver, "method": mask.method, "n": mask.n, "n_kept": mask.n_kept, "n_pruned": mask.n_pruned,
        "prune_ratio": mask.n_pruned / mask.n, "influence": mask.influence, "checkpoint": mask.checkpoint,
        "dataset": mask.dataset, "seconds": mask.seconds,
        **({"auto": mask.auto} if mask.auto is not None else {}),
        **({"classes_without_kept_samples": mask.classes_without_kept_samples}
           if mask.classes_without_kept_samples else {}),
    }


def print_mask(mask) -> None:
    if mask.auto is not None:  # --method auto: what it chose and why, one line
        console.info(mask.auto["line"])
    what = f"epsilon {mask.target:g}" if mask.mode == "epsilon" else f"prune count {int(mask.target)}"
    console.info(
        f"[bold]pruned {mask.n_pruned} of {mask.n}[/bold] ({100 * mask.n_pruned / mask.n:.1f}%), "
        f"kept {mask.n_kept}; ||sum S_pruned|| = {mask.norm:.4g} ({what}, solver {mask.solver}, {mask.seconds:.1f}s)"
    )
    console.info(f"mask: {mask.path}  (keep_indices = samples to train on)")


@o.expands
def command(
    source: Annotated[str, typer.Argument(
        metavar="SOURCE", show_default=False,
        help="influence.h5, or a dataset name to run train -> influence -> prune (cached stages reused).")],
    epsilon: o.Epsilon = None, prune_ratio: o.Ratio = None, prune_count: o.Count = None,
    method: o.Method = o.METHOD_DEFAULT, solver: o.Solver = o.SOLVER_DEFAULT,
    solver_seed: o.SolverSeed = o.SOLVER_SEED_DEFAULT, time_budget: o.TimeBudget = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", metavar="FILE", rich_help_panel=o.P_OUTPUT,
        help="Mask path. " + o.default_note("beside S in the run directory"))] = None,
    indices_out: Annotated[Optional[Path], typer.Option(
        "--indices-out", metavar="FILE", rich_help_panel=o.P_OUTPUT,
        help="Also write the KEPT indices as .txt (one per line) or .npy.")] = None,
    job: o.Job = o.job_options(),
    balance: o.Balance = False, strata: o.Strata = 1, hard_cutoff: o.HardCutoff = None,
    match_features: o.MatchFeatures = False, score_epoch: o.ScoreEpoch = None, score_seeds: o.ScoreSeeds = 3,
    buckets: o.Buckets = 1, workers: o.Workers = None,
    training: o.Training = o.training(o.P_DS_TRAIN),
    estimation: o.Estimation = o.estimation(o.P_DS_INFLUENCE),
    sketch: Annotated[Optional[int], typer.Option(
        "--sketch", metavar="K", rich_help_panel=o.P_DS_INFLUENCE,
        help="Dataset mode: store S's Johnson-Lindenstrauss sketch S @ R (n x K) and bound the sketched norm. "
             + o.default_note("the sketch only when the dense S would pass $DPCLI_SOLVE_BUDGET (4G)"))] = None,
    proxy: Annotated[Optional[str], typer.Option(
        "--proxy", metavar="ARCH[:EPOCHS]", rich_help_panel=o.P_DS_TRAIN,
        help="Dataset mode: compute S with this small, fast network and schedule instead of the target's "
             "(Selection via Proxy); retrain the target on the mask.")] = None,
) -> None:
    """Select the samples to PRUNE and write mask.h5 (keep = train on it); ||sum S_pruned|| is certified from S."""
    from dpcli.config import PruneConfig
    from dpcli.stages import pipeline

    console.set_quiet(job.quiet)
    from dpcli.artifacts.runs import followed

    source = followed(source)
    cutoff, cutoff_ratio = _cutoff(hard_cutoff, method)
    pcfg = PruneConfig(epsilon=epsilon, ratio=prune_ratio, count=prune_count, solver=solver,
                       time_budget=time_budget, seed=solver_seed, buckets=buckets, workers=workers, method=method,
                       balance=balance, strata=strata, cutoff=cutoff, cutoff_ratio=cutoff_ratio,
                       match_features=match_features, score_epoch=score_epoch, score_seeds=score_seeds)
    pipeline.check_prune(pcfg)
    icfg = estimation.config(sketch_k=sketch)
    pipeline.check_indices_suffix(indices_out)
    pipeline.check_writable(out, "--out")
    pipeline.check_writable(indices_out, "--indices-out")
    from dpcli.artifacts.runs import mask_path
    from dpcli.cli import embeddings

    if proxy is not None:
        if pipeline.is_artifact_path(source):
            raise DpcliError("--proxy needs a dataset name as SOURCE (it trains the proxy itself), not a file")
        from dpcli.stages.proxy import ProxySpec, select_via_proxy
        from dpcli.train.loop import resolve_device

        spec = ProxySpec.parse(proxy)
        ds = pipeline.load(source, job.data_root, training.image_size,
                           training.input_spec())
        pipeline.check_prune(pcfg, len(ds.train.labels))
        target = pipeline.train_config(ds, training.overrides())
        sel = select_via_proxy(ds, target, spec, pcfg, device=resolve_device(job.device),
                               run_root=pipeline.run_root_of(job.run_root), influence_cfg=icfg, force=job.force,
                               out=out, indices_out=indices_out)
        mask = sel.mask
        chain = {"proxy": sel.proxy.to_dict(), "proxy_checkpoint": str(sel.checkpoint),
                 "selection_seconds": sel.seconds, "target": target.to_dict()}
    elif embeddings.is_external_S(source):  # an S computed elsewhere: no lineage, still certified from S
        mask = embeddings.prune_external(source, pcfg, out, indices_out)
        chain = {"lineage": "none known"}
    elif pipeline.is_artifact_path(source):
        from dpcli.stages.core import read_influence_info

        info = read_influence_info(Path(source))  # kind and shape checks before any work
        pipeline.check_prune(pcfg, info.n)
        mask_file = out or mask_path(info.path, pcfg)
        pipeline.check_writable(mask_file, "--out")
        from dpcli.train.loop import resolve_device

        mask = pipeline.run_prune(info.path, pcfg, mask_file, indices_out, device=resolve_device(job.device),
                                  data_root=job.data_root)
        chain: dict = {}
    else:
        pipeline.check_writable(pipeline.run_root_of(job.run_root), "--run-root", directory=True)
        from dpcli.train.loop import resolve_device

        dev = resolve_device(job.device)
        ds = pipeline.load(source, job.data_root, training.image_size,
                           training.input_spec())
        pipeline.check_prune(pcfg, len(ds.train.labels))
        tcfg = pipeline.train_config(ds, training.overrides())
        run = pipeline.full_run(ds, tcfg, icfg, run_root=job.run_root, device=dev, data_root=job.data_root,
                                force=job.force, sketch_large=True)
        mask = pipeline.run_prune(run.influence.path, pcfg, out or mask_path(run.influence.path, pcfg), indices_out,
                                  device=dev, data_root=job.data_root, ds=ds)
        chain = {"checkpoint": str(run.checkpoint_path), "influence": str(run.influence.path),
                 "test_accuracy": run.checkpoint.final.test_acc}
    print_mask(mask)
    from dpcli.artifacts.runs import link_latest

    link_latest(pipeline.run_root_of(job.run_root),
                {"train": chain.get("checkpoint"), "influence": chain.get("influence"), "prune": mask.path})
    if job.json:
        summary = {"command": "prune", **_summary(mask), **chain}
        if indices_out:
            summary["indices_out"] = str(indices_out)
        console.emit_json(summary)
