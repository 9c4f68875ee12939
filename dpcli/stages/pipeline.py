"""Dataset mode: the stages chained in a run directory, as ``prune DATASET``, ``retrain`` and
``verify-bound`` run them.

Every ``ensure_*`` step reuses the artifact cached in the run directory only when it matches the
configuration *and* descends from the upstream artifact in hand (fingerprints), so a stage that was
just recomputed never feeds a stale one downstream.  The ``check_*`` functions run before the first
expensive step: a bad option or an unwritable path costs seconds, not a training run.

Nothing heavy is imported at module level (the CLI imports this lazily, but tests and the API may not).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpcli import console
from dpcli.config import InfluenceConfig, PruneConfig, TrainConfig, default_train_config
from dpcli.errors import DpcliError

if TYPE_CHECKING:
    import torch

    from dpcli.data.base import InputSpec
    from dpcli.data.sources import Dataset
    from dpcli.stages.bound import BoundRow
    from dpcli.stages.core import InfluenceInfo
    from dpcli.stages.masks import MaskInfo
    from dpcli.stages.outputs import MaskOutputs
    from dpcli.train.checkpoint import Checkpoint

ARTIFACT_SUFFIXES = (".h5", ".hdf5")


# --------------------------------------------------------------------------- checks before work
def is_artifact_path(source: str) -> bool:
    """A SOURCE is a file when it ends in .h5/.hdf5 or contains a path separator; else a dataset name.

    Decided by syntax alone, never by what exists in the working directory: a file or folder named
    ``digits`` there does not shadow the dataset (write ``./digits`` to mean the file).
    """
    if source.lower().startswith("imagefolder:"):
        return False
    return Path(source).suffix.lower() in ARTIFACT_SUFFIXES or "/" in source or os.sep in source


def estimator_names() -> tuple[str, ...]:
    """The registered influence estimators (read from module names; nothing heavy is imported)."""
    from dpcli.influence.base import ESTIMATORS

    return ESTIMATORS.names()


def check_estimator(name: str) -> None:
    """One line naming the choices (and the closest) for an unknown ``--estimator``."""
    from dpcli.influence.base import ESTIMATORS

    if name not in ESTIMATORS.names():
        raise DpcliError(ESTIMATORS.unknown(name))


def check_writable(path: Path | None, option: str, *, directory: bool = False) -> None:
    """Refuse an output path that cannot be written now, before any work (exit 74, like a failed write).

    ``directory``: ``path`` is a directory to be created (``--run-root``); else a file whose parent is.
    The probe is :func:`dpcli.artifacts.h5.check_writable`: it also sees read-only mounts and /proc.
    """
    if path is None:
        return
    from dpcli.artifacts.h5 import check_writable as probe
    from dpcli.errors import ArtifactWriteError

    try:
        probe(Path(path) / ".dpcli-probe" if directory else Path(path))
    except ArtifactWriteError as exc:
        raise ArtifactWriteError(f"{option} {exc}".replace("/.dpcli-probe", "")) from None


def check_prune(cfg: PruneConfig, n: int | None = None) -> None:
    """Every prune option check, before any work: names and ranges, and the count against n when known."""
    cfg.validate()
    if n is not None:
        cfg.check_against(n)


# --------------------------------------------------------------------------- the stages, cached
def load(
    dataset: str, data_root: Path | None, image_size: int | None = None, spec: "InputSpec | None" = None
) -> "Dataset":
    """The dataset, read the way the model sees it (``--image-size``: crop side for mixed-size images;
    ``spec``: the pretrained weights' preprocessing, :func:`input_spec`)."""
    from dpcli.data.sources import load_dataset

    with console.progress_bar(f"load {dataset}", transient=True) as update:
        ds = load_dataset(
            dataset, data_root, progress=lambda done, total: update(done, total), image_size=image_size, input=spec
        )
    if spec is not None:
        _, h, w, _ = ds.train.images.shape
        size = (
            f"{ds.train.crop}x{ds.train.crop} crops" if ds.train.crop else f"{h}x{w} (only image folders are resized)"
        )
        console.info(f"preprocessing of {spec.source}: {size}, mean {_fmt(ds.mean)}, std {_fmt(ds.std)}")
    return ds


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def input_spec(
    arch: str | None, weights: str | None, image_size: int | None, upstream: "Checkpoint | None" = None
) -> "InputSpec | None":
    """The preprocessing a command's model expects: the upstream checkpoint's recorded one unless the
    model options change, else the weights' own (dpcli.models.preprocess)."""
    from dpcli.models import preprocess

    if upstream is not None and arch is None and weights is None and image_size is None:
        return preprocess.of_checkpoint(upstream)
    if upstream is None:
        return None if arch is None else preprocess.resolve(arch, weights or None, image_size or None)
    base = upstream.config
    return preprocess.resolve(arch or base.arch, weights or base.weights, image_size or base.image_size)


def train_config(ds: "Dataset", overrides: dict[str, Any]) -> TrainConfig:
    """The dataset's default training configuration with the user's overrides (None = default).

    The input pipeline is part of the model, so ``image_size`` is the one the dataset was loaded with
    (with the weights' preprocessing, only an explicit --image-size is recorded: the weights define the rest).
    """
    from dpcli.models import preprocess

    size = ds.train.crop if ds.input is None or preprocess.explicit_size(ds.input) else None
    return default_train_config(ds.name, ds.augment).replace(**overrides).replace(image_size=size).validate()


def run_root_of(run_root: Path | None) -> Path:
    from dpcli.artifacts.runs import default_run_root

    return Path(run_root) if run_root is not None else default_run_root()


def ensure_checkpoint(
    config: TrainConfig,
    ds: "Dataset",
    out: Path,
    *,
    device: "torch.device",
    force: bool,
    keep_indices=None,
    lineage: dict | None = None,
    label: str = "train",
    dist=None,
    snapshot_epochs: tuple[int, ...] | None = None,
) -> "Checkpoint":
    """Train (or resume, or reuse) ``config`` at ``out``, with a progress bar."""
    from dpcli.train.loop import train

    n_used = len(ds.train.labels) if keep_indices is None else len(keep_indices)
    with console.progress_bar(label, total=config.epochs * n_used) as update:
        last = {"text": ""}

        def on_batch(epoch: int, seen: int, per_epoch: int) -> None:
            update(epoch * per_epoch + seen, status=f"epoch {epoch + 1}/{config.epochs}{last['text']}")

        def on_epoch(rec) -> None:
            last["text"] = f" | last: loss {rec.train_loss:.3f} acc {rec.train_acc:.1f}% test {rec.test_acc:.1f}%"
            update(rec.epoch * n_used, status=f"epoch {rec.epoch}/{config.epochs}{last['text']}")

        return train(
            config,
            ds,
            out,
            device=device,
            keep_indices=keep_indices,
            force=force,
            lineage=lineage,
            on_batch=on_batch,
            on_epoch=on_epoch,
            dist=dist,
            snapshot_epochs=snapshot_epochs,
        )


def ensure_influence(
    checkpoint: Path,
    cfg: InfluenceConfig,
    *,
    device: "torch.device",
    ds: "Dataset | None",
    data_root: Path | None,
    force: bool,
    out: Path | None = None,
) -> "InfluenceInfo":
    """S of ``checkpoint``: reused when computed from this very checkpoint with this configuration."""
    from dpcli.artifacts.runs import influence_path
    from dpcli.stages import core
    from dpcli.train.checkpoint import load_checkpoint

    out = Path(out) if out is not None else influence_path(checkpoint, cfg)
    if out.exists() and not force:
        info = core.read_influence_info(out)
        ck = load_checkpoint(checkpoint, weights=False)
        if info.checkpoint_fingerprint == ck.fingerprint and core.influence_config_of(out) == cfg.to_dict():
            console.info(f"reusing {out}")
            return info
    with console.progress_bar(f"influence ({cfg.estimator})") as update:
        return core.compute_influence(
            checkpoint,
            out,
            cfg,
            device=device,
            data_root=data_root,
            ds=ds,
            progress=lambda done, total: update(done, total),
        )


def run_prune(
    influence: Path,
    cfg: PruneConfig,
    out: Path,
    outputs: "MaskOutputs | None" = None,
    *,
    device: "torch.device | None" = None,
    data_root: Path | None = None,
    ds: "Dataset | None" = None,
) -> "MaskInfo":
    """Select, certify from S and write the mask and ``outputs``, with a progress bar (always recomputes)."""
    from dpcli.stages import masks

    what = cfg.solver if cfg.method == "optimization" else cfg.method
    with console.progress_bar(f"prune ({what})", total=1.0) as update:
        return masks.prune(
            influence,
            out,
            cfg,
            outputs=outputs,
            progress=lambda f: update(f),
            device=device,
            data_root=data_root,
            ds=ds,
        )


def _descends(mask_file: Path, info: "InfluenceInfo") -> "MaskInfo | None":
    """The cached mask at ``mask_file`` if it was made from this very S (same fingerprint), else None."""
    from dpcli.stages import masks

    try:
        mask = masks.read_mask(mask_file)
    except DpcliError as exc:  # a cached mask that fails its checks is recomputed, as a stale one is
        console.info(f"{exc}; recomputing it")
        return None
    if mask.influence_fingerprint == info.fingerprint and mask.samples.same_as(info.samples):
        return mask
    console.info(f"{mask_file} was made from another influence.h5 than {info.path}; recomputing it")
    return None


def ensure_mask(
    info: "InfluenceInfo",
    cfg: PruneConfig,
    *,
    force: bool,
    out: Path | None = None,
    device: "torch.device | None" = None,
    data_root: Path | None = None,
    ds: "Dataset | None" = None,
) -> "MaskInfo":
    """The mask of ``cfg`` on S: reused only when it descends from ``info`` (fingerprints), else recomputed."""
    from dpcli.artifacts.runs import mask_path

    path = Path(out) if out is not None else mask_path(info.path, cfg)
    if path.exists() and not force:
        cached = _descends(path, info)
        if cached is not None:
            return cached
    return run_prune(info.path, cfg, path, device=device, data_root=data_root, ds=ds)


def ensure_random_mask(info: "InfluenceInfo", n_pruned: int, seed: int, *, force: bool) -> "MaskInfo":
    """Random pruning of ``n_pruned`` samples (verify-bound's reference), cached beside S."""
    from dpcli.artifacts.runs import random_mask_path
    from dpcli.stages import masks

    path = random_mask_path(info.path, n_pruned, seed)
    if path.exists() and not force:
        cached = _descends(path, info)
        if cached is not None:
            return cached
    return masks.random_mask(info, n_pruned, seed, path)


@dataclass(frozen=True)
class FullRun:
    """The full-data model and its S in a run directory."""

    checkpoint_path: Path
    checkpoint: "Checkpoint"
    influence: "InfluenceInfo"


def full_run(
    ds: "Dataset",
    tcfg: TrainConfig,
    icfg: InfluenceConfig,
    *,
    run_root: Path | None,
    device: "torch.device",
    data_root: Path | None,
    force: bool,
    sketch_large: bool = False,
    snapshot_epochs: tuple[int, ...] | None = None,
) -> FullRun:
    """Train (cached) then compute S (cached, and only from this checkpoint).

    ``sketch_large``: without ``--sketch``, store S's sketch when the dense S would pass
    ``$DPCLI_SOLVE_BUDGET`` (what prune holds; :func:`dpcli.influence.sketch.auto_sketch_k`), and say so.
    ``snapshot_epochs``: as ``train --snapshot-epochs``.
    """
    from dpcli.artifacts.runs import checkpoint_path
    from dpcli.data.batches import release_memory

    ck_path = checkpoint_path(run_root_of(run_root), tcfg)
    ck = ensure_checkpoint(tcfg, ds, ck_path, device=device, force=force, snapshot_epochs=snapshot_epochs)
    release_memory()
    if sketch_large and icfg.sketch_k is None:
        icfg = _sketched_if_large(icfg, ck, len(ds.train.labels))
    info = ensure_influence(ck_path, icfg, device=device, ds=ds, data_root=data_root, force=force)
    release_memory()
    return FullRun(checkpoint_path=ck_path, checkpoint=ck, influence=info)


def _sketched_if_large(icfg: InfluenceConfig, ck: "Checkpoint", n: int) -> InfluenceConfig:
    import dataclasses

    from dpcli.influence.sketch import auto_sketch_k

    # the model's own last layer (``head``), not a head nested inside a library backbone
    key = min((k for k in ck.state if k == "head.weight" or k.endswith(".head.weight")), key=len, default=None)
    if key is None or getattr(ck.state[key], "ndim", 0) != 2:
        return icfg
    c, dim = ck.state[key].shape
    d = int(c) * (int(dim) + 1)
    k = auto_sketch_k(n, d)
    if k is None:
        return icfg
    size = n * d * 4
    size_text = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
    console.info(
        f"S would be {size_text} ({n:,} x {d:,} float32), above DPCLI_SOLVE_BUDGET; "
        f"storing its Johnson-Lindenstrauss sketch S R ({n:,} x {k}) instead, so prune bounds the sketched "
        f"norm (--sketch K chooses K)"
    )
    return dataclasses.replace(icfg, sketch_k=k).validate()


# --------------------------------------------------------------------------- retrain
def retrain(
    ds: "Dataset",
    mask: "MaskInfo",
    *,
    overrides: dict[str, Any],
    reference: Path | None,
    out: Path | None,
    device: "torch.device",
    force: bool,
) -> dict[str, Any]:
    """Retrain on the mask's KEPT samples; returns the metrics (also written as metrics.json)."""
    from dpcli.artifacts.h5 import write_json
    from dpcli.artifacts.runs import retrain_path
    from dpcli.stages import masks
    from dpcli.train.checkpoint import load_checkpoint

    ref = load_checkpoint(reference, weights=False) if reference else masks.upstream_checkpoint(mask)
    base = ref.config if ref is not None else None
    if ref is not None and ref.config.dataset != ds.name:
        raise DpcliError(f"reference checkpoint was trained on {ref.config.dataset!r}, not {ds.name!r}")
    preview = (base or default_train_config(ds.name, ds.augment)).replace(**overrides).replace(subset=mask.fingerprint)
    path = Path(out) if out is not None else retrain_path(mask.path, preview)
    with console.progress_bar("retrain", total=preview.epochs * mask.n_kept) as update:
        result = masks.retrain(
            ds,
            mask,
            path,
            base=base,
            overrides=overrides,
            device=device,
            force=force,
            reference=ref,
            on_batch=lambda e, s, per: update(e * per + s),
            on_epoch=lambda r: update(r.epoch * mask.n_kept, status=f"epoch {r.epoch} test {r.test_acc:.1f}%"),
        )
    metrics = result.metrics
    metrics["metrics_file"] = str(path.with_name("metrics.json"))
    write_json(path.with_name("metrics.json"), {k: v for k, v in metrics.items() if k != "metrics_file"})
    return metrics


# --------------------------------------------------------------------------- verify-bound
def verify_bound(
    ds: "Dataset",
    ck_path: Path,
    ck: "Checkpoint",
    info: "InfluenceInfo",
    masks: list["MaskInfo"],
    *,
    random_seed: int,
    out_dir: Path | None,
    device: "torch.device",
    force: bool,
) -> tuple[dict[str, Any], list["BoundRow"]]:
    """Retrain every mask and a random mask of the same count; compare observed and predicted loss gaps."""
    from dpcli.artifacts.h5 import write_json
    from dpcli.artifacts.runs import retrain_path
    from dpcli.stages import masks as mask_stage
    from dpcli.stages.bound import BoundRow, plot, predict

    if ck.dataset_fingerprint != ds.fingerprint:
        raise DpcliError(f"{ck_path}: checkpoint was made for another dataset than {ds.name!r}")
    final = ck.final
    assert final is not None  # dpcli writes a checkpoint once an epoch is recorded
    full_loss = final.test_loss
    rows: list[BoundRow] = []
    for mi in masks:
        rnd = ensure_random_mask(info, mi.n_pruned, random_seed, force=force)
        for label, m in ((f"{mi.mode} {mi.target:g}", mi), (f"random {mi.n_pruned}", rnd)):
            if m.n_pruned == 0:
                console.info(f"skipping {label}: it prunes nothing")
                continue
            path = retrain_path(m.path, ck.config.replace(subset=m.fingerprint))
            res = mask_stage.retrain(
                ds, m, path, base=ck.config, overrides={}, device=device, force=force, reference=ck
            )
            norm, bound, first = predict(info.path, ~m.keep)
            rows.append(
                BoundRow(
                    label=label,
                    method=m.method,
                    mask=str(m.path),
                    n_pruned=m.n_pruned,
                    prune_ratio=m.n_pruned / m.n,
                    epsilon=m.target if m.mode == "epsilon" else None,
                    norm=norm,
                    predicted_bound=bound,
                    first_order=first,
                    observed_gap=res.metrics["test_loss"] - full_loss,
                    test_loss=res.metrics["test_loss"],
                    test_accuracy=res.metrics["test_accuracy"],
                )
            )
            console.info(f"{label}: observed gap {rows[-1].observed_gap:+.4g}, predicted bound {bound:.4g}")
    out_dir = Path(out_dir) if out_dir is not None else ck_path.parent / "verify-bound"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "verify-bound",
        "dataset": ds.name,
        "checkpoint": str(ck_path),
        "influence": str(info.path),
        "n": info.n,
        "full_test_loss": full_loss,
        "full_test_accuracy": final.test_acc,
        "epsilon_convention": (
            "epsilon = ||sum_{pruned} S_i||, S_i = (1/n) H^-1 grad L(z_i); Theorem 1's eps/n equals it"
        ),
        "rows": [r.to_dict() for r in rows],
    }
    write_json(out_dir / "bound.json", report)
    if rows:
        plot(rows, out_dir / "bound.png")
    report.update(report=str(out_dir / "bound.json"), plot=str(out_dir / "bound.png"))
    return report, rows
