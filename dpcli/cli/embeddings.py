"""The CLI's embeddings branches: `influence --features`, an external S in `prune`, and `retrain` /
`verify-bound` on a run whose last layer was fitted on features (dpcli.stages.embeddings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from dpcli import console
from dpcli.errors import DpcliError


def max_iter_option(panel: str, where: str) -> Any:
    """``--max-iter`` of the head fit (``influence --features``, ``--freeze-backbone``), for an ``Optional[int]``."""
    from dpcli.cli.options import default_note

    return typer.Option(
        "--max-iter",
        metavar="N",
        rich_help_panel=panel,
        help=f"{where}: at most N Newton steps for the head fit (a fit stopped short of --tol says so, with what "
        "to do). " + default_note(100),
    )


def tol_option(panel: str, where: str) -> Any:
    """``--tol`` of the head fit, for an ``Optional[float]``."""
    from dpcli.cli.options import default_note

    return typer.Option(
        "--tol",
        rich_help_panel=panel,
        help=f"{where}: the head fit stops at ||gradient|| <= TOL of its objective (mean CE + damping/2 "
        "||theta||^2). " + default_note("1e-7"),
    )


def head_fit_settings(tol: Optional[float], max_iter: Optional[int]) -> tuple[float, int]:
    """The head fit's (tol, max_iter), the defaults filled in, refused in one line when out of range."""
    from dpcli.influence import head

    return head.check_options(
        head.DEFAULT_TOL if tol is None else tol, head.DEFAULT_MAX_ITER if max_iter is None else max_iter
    )


def influence_from_features(
    features,
    labels,
    test_features,
    test_labels,
    icfg,
    checkpoint,
    out: Optional[Path],
    json: bool,
    dev: Any = None,
    *,
    tol: Optional[float] = None,
    max_iter: Optional[int] = None,
) -> None:
    """influence --features: fit the head on the embeddings, then S with the registered estimator."""
    from dpcli.data.embeddings import load_embeddings
    from dpcli.stages import embeddings

    if checkpoint:
        raise DpcliError("give either a checkpoint or --features, not both")
    if features is None or labels is None:
        raise DpcliError("--features and --labels go together")
    tol, max_iter = head_fit_settings(tol, max_iter)
    emb = load_embeddings(features, labels, test_features, test_labels)
    path = out or Path(features).with_name("influence.h5")
    from dpcli.stages.outputs import check_distinct

    check_distinct(
        {"--out": path},
        {
            "--features": Path(features),
            "--labels": Path(labels),
            "--test-features": test_features,
            "--test-labels": test_labels,
        },
    )
    with console.progress_bar(f"influence ({icfg.estimator}, features)") as update:
        info = embeddings.embeddings_influence(
            emb,
            path,
            icfg,
            damping=icfg.damping,
            tol=tol,
            max_iter=max_iter,
            device=dev,
            progress=lambda done, total: update(done, total),
            info=console.info,
        )
    console.info(
        f"influence: {info.path}  S is {info.n} x {info.d} ({info.method}, head fitted with L2 "
        f"{info.damping:g}, {info.seconds:.1f}s)"
    )
    if json:
        console.emit_json(
            {
                "command": "influence",
                "influence": str(info.path),
                "n": info.n,
                "d": info.d,
                "method": info.method,
                "damping": info.damping,
                "seconds": info.seconds,
                "source": "embeddings",
                "fingerprint": info.fingerprint,
            }
        )


def is_external_S(source: str) -> bool:
    """A .npy, or an HDF5 file that is not a dpcli influence artifact: an S computed elsewhere."""
    p = Path(source)
    if p.suffix.lower() == ".npy":
        return True
    if p.suffix.lower() in (".h5", ".hdf5") and p.is_file():
        import h5py

        try:
            with h5py.File(p, "r") as f:
                return f.attrs.get("dpcli_kind") is None and "S" in f
        except OSError:
            return False
    return False


def retrain_embeddings(dataset: str, mask_path: Path, out: Optional[Path], json: bool, force: bool = False) -> bool:
    """retrain on an embeddings run: refit the head on the kept features (seconds), written as a checkpoint
    artifact like every retrain. False if the mask is not from an embeddings run."""
    from dpcli.data.embeddings import is_embeddings_run, load_array
    from dpcli.stages import heads, masks
    from dpcli.stages.pipeline import check_writable

    m = masks.read_mask(mask_path)
    if not is_embeddings_run(m.influence):
        return False
    if out is not None and Path(out).suffix.lower() not in (".h5", ".hdf5"):
        raise DpcliError(f"--out {out}: the refitted head is a checkpoint artifact; give a path ending in .h5")
    check_writable(out, "--out")
    named = load_array(dataset, "features", ("features", "x", "X", "embeddings")) if Path(dataset).suffix else None
    if named is not None and named.shape[0] != m.n:
        raise DpcliError(f"{mask_path}: mask has n={m.n} but {dataset} has {named.shape[0]} rows")
    metrics = heads.retrain_head(m, out, force=force, info=console.info)
    test = (
        ""
        if metrics["test_loss"] is None
        else (f": test accuracy {metrics['test_accuracy']:.2f}%, loss {metrics['test_loss']:.4f}")
    )
    console.info(
        f"refitted the head on {m.n_kept} kept samples ({100 * m.n_pruned / m.n:.1f}% pruned){test}, "
        f"gradient norm {metrics['head_grad_norm']:.2g}, {metrics['train_seconds']:.2f}s"
    )
    console.info(f"checkpoint: {metrics['checkpoint']}  metrics: {metrics['metrics_file']}")
    if json:
        console.emit_json({"command": "retrain", **metrics})
    return True


def verify_embeddings(
    source: str, masks, epsilons, out, random_seed: int, solver: str, time_budget, json: bool, force: bool = False
) -> bool:
    """verify-bound on an embeddings run (SOURCE = its influence.h5, or --mask files from it)."""
    from dpcli.artifacts.runs import mask_path
    from dpcli.config import PruneConfig
    from dpcli.data.embeddings import is_embeddings_run
    from dpcli.stages import embeddings
    from dpcli.stages import masks as mask_stage

    influence = Path(source) if Path(source).suffix.lower() in (".h5", ".hdf5") else None
    if influence is None and masks:
        influence = Path(mask_stage.read_mask(masks[0]).influence)
    if influence is None or not influence.is_file() or not is_embeddings_run(influence):
        return False
    infos = [mask_stage.read_mask(p) for p in (masks or [])]
    for eps in [float(x) for x in (epsilons or "").split(",") if x.strip()]:
        pcfg = PruneConfig(epsilon=eps, solver=solver, time_budget=time_budget, method="optimization").validate()
        infos.append(mask_stage.prune(influence, mask_path(influence, pcfg), pcfg))
    if not infos:
        raise DpcliError("give --mask (repeatable) or --epsilons")
    out_dir = out or influence.parent / "verify-bound"
    report = embeddings.verify_bound(
        influence, infos, out_dir, random_seed=random_seed, force=force, info_line=console.info
    )
    for r in report["rows"]:
        second = (
            ""
            if r["first_order_residual"] is None
            else f"; parameters moved {r['parameter_change']:.4g}, predicted {r['norm']:.4g}, "
            f"missed {r['first_order_residual']:.2g}"
        )
        console.info(
            f"{r['label']}: observed gap {r['observed_gap']:+.4g}, predicted bound {r['predicted_bound']:.4g}{second}"
        )
    console.info(f"report: {out_dir / 'bound.json'}")
    if json:
        console.emit_json(report)
    return True
