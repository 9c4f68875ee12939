"""Keep masks: the prune stage that certifies and publishes them, and the retrain stage that trains on one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dpcli import console
from dpcli.artifacts.h5 import (
    Publication,
    array_fingerprint,
    atomic_h5,
    check_writable,
    get_attr,
    open_artifact,
)
from dpcli.artifacts.lock import artifact_lock
from dpcli.config import PruneConfig, TrainConfig, default_train_config
from dpcli.data.samples import SampleSpace
from dpcli.data.sources import Dataset
from dpcli.errors import DpcliError
from dpcli.select.base import Context, warn_class_shares, warn_emptied_classes
from dpcli.select.certificate import Certificate, KeepMask, certify
from dpcli.stages.core import InfluenceInfo, Progress, load_S, read_influence_info
from dpcli.stages.outputs import MaskOutputs, check_distinct
from dpcli.train.checkpoint import Checkpoint, load_checkpoint, time_to_accuracy
from dpcli.train.loop import train


# --------------------------------------------------------------------------- prune
@dataclass(frozen=True)
class MaskInfo(KeepMask):
    """A mask as read from mask.h5.

    ``keep`` and ``n`` are over S's rows, the samples that decoded: what retrain, verify-bound and the selectors
    work on.  The file, and every index dpcli writes, is over the user's samples (``space``, :mod:`dpcli.data.samples`):
    ``user_keep`` and ``n_samples``, where an unreadable file keeps its index and is never kept.
    """

    path: Path
    keep: np.ndarray
    mode: str
    target: float
    norm: float
    solver: str
    n: int
    influence: str
    influence_fingerprint: str
    checkpoint: str
    dataset: str
    dataset_fingerprint: str
    fingerprint: str
    seconds: float
    method: str = "optimization"
    auto: dict | None = None  # --method auto: what it measured and chose (the mask's ``auto`` attribute)
    classes_without_kept_samples: dict | None = None  # class -> its training samples, where none was kept
    class_shares: dict | None = None  # classes whose kept share strays from their training share (select.base)
    space: SampleSpace | None = None

    @property
    def samples(self) -> SampleSpace:
        return self.space if self.space is not None else SampleSpace.identity(self.n)

    @property
    def user_keep(self) -> np.ndarray:
        return self.samples.to_user(self.keep)

    @property
    def n_samples(self) -> int:
        return self.samples.total

    @property
    def n_unreadable(self) -> int:
        return self.samples.total - self.samples.n


def prune(
    influence_path: Path,
    out: Path,
    cfg: PruneConfig,
    *,
    outputs: MaskOutputs | None = None,
    progress: Progress | None = None,
    device: torch.device | None = None,
    data_root: Path | None = None,
    ds: Dataset | None = None,
) -> MaskInfo:
    """Apply ``cfg.method`` (``auto`` by default) to S, certify, write the keep mask and ``outputs``.

    Outputs are checked before the solve (writable, none an input, names only for an image folder that has
    not changed); the mask's lock is held throughout, and a mask that another job published meanwhile with the
    same configuration is reused.  The mask and its outputs are published together or not at all.
    """
    info = read_influence_info(influence_path)
    cfg.validate().check_against(info.n)
    outputs = check_outputs(
        out, outputs, info.samples, str(influence_path), {"the influence file S": Path(influence_path)}
    )
    with artifact_lock(out) as lock:
        if lock.reusable():
            done = _reusable_mask(out, info, cfg, lock.holder)
            if done is not None:
                with Publication() as pub:
                    outputs.stage(pub, done.user_keep, done.samples, done.path)
                return done
        return _prune(
            influence_path,
            out,
            cfg,
            info,
            outputs=outputs,
            progress=progress,
            device=device,
            data_root=data_root,
            ds=ds,
        )


def check_outputs(
    out: Path, outputs: MaskOutputs | None, space: SampleSpace, source: str, inputs: dict[str, Path | None]
) -> MaskOutputs:
    """Refuse, before any work, outputs that cannot be written, that name an input or each other, and file
    names for samples that have none."""
    outputs = (outputs or MaskOutputs()).check_options()
    check_writable(out)
    check_distinct(
        {"--out": out, "--indices-out": outputs.indices, "--paths-out": outputs.paths, "--link-dir": outputs.link_dir},
        inputs,
    )
    outputs.check_source(space, source)
    return outputs


def _reusable_mask(out: Path, info: InfluenceInfo, cfg: PruneConfig, holder: int | None) -> MaskInfo | None:
    """The mask another job published while this one waited, if it is the one asked for."""
    try:
        mask = read_mask(out)
        with open_artifact(out, "mask") as f:
            same = get_attr(f, "config") == cfg.to_dict() and mask.influence_fingerprint == info.fingerprint
    except DpcliError:
        return None
    if same:
        console.info(f"reusing {out}, computed by pid {holder or '?'} while this job waited")
    return mask if same else None


class _CheckpointContext(Context):
    """A selector's context whose dataset is loaded as the checkpoint's model saw it (its preprocessing)."""

    def dataset(self) -> Dataset:
        if self.ds is None:
            from dpcli.train.checkpoint import dataset_of

            self.ds = dataset_of(
                load_checkpoint(self._require_checkpoint("the dataset"), weights=False), self.data_root
            )
        return self.ds


def _prune(
    influence_path: Path,
    out: Path,
    cfg: PruneConfig,
    info: InfluenceInfo,
    *,
    outputs: MaskOutputs,
    progress: Progress | None,
    device: torch.device | None,
    data_root: Path | None,
    ds: Dataset | None,
) -> MaskInfo:
    from dpcli.select.base import prune_target, select

    S = load_S(influence_path, mapped=True)

    def on_progress(fraction: float) -> None:
        if progress:
            progress(fraction)

    t0 = time.perf_counter()
    ctx = _CheckpointContext(
        S=S,
        labels=_influence_labels(influence_path),
        checkpoint=Path(info.checkpoint) if info.checkpoint else None,
        device=device or torch.device("cpu"),
        data_root=data_root,
        ds=ds,
        progress=on_progress,
        influence=Path(influence_path),
    )
    pruned, solver = select(cfg, ctx)
    cert = certify_selection(S, pruned, cfg, ctx, sketch_k=info.sketch_k)
    target = prune_target(cfg, info.n)
    return write_mask(
        out,
        cert,
        mode=cfg.mode,
        target=target,
        solver=solver,
        info=info,
        config=cfg.to_dict(),
        seconds=time.perf_counter() - t0,
        method=cfg.method,
        outputs=outputs,
        extra_attrs=ctx.record,
    )


def certify_selection(
    S: np.ndarray, pruned: np.ndarray, cfg: PruneConfig, ctx: Context, *, sketch_k: int | None = None
) -> Certificate:
    """The certificate of a selection, after saying what its kept set lacks (classes, class shares)."""
    keep = ~np.asarray(pruned, dtype=bool)
    warn_emptied_classes(ctx.labels, keep, ctx.record)
    if "classes_without_kept_samples" not in ctx.record:  # else the shares left are skewed by that alone
        warn_class_shares(ctx.labels, keep, ctx.record)
    cert = certify(S, pruned, cfg.epsilon, sketch_k=sketch_k)
    if cert.sketch_k:
        console.info(f"note: {cert.meaning}")
    return cert


def _influence_labels(path: Path) -> np.ndarray:
    with open_artifact(path, "influence") as f:
        return np.asarray(f["labels"][()])


def write_mask(
    out: Path,
    cert: Certificate,
    *,
    mode: str,
    target: float,
    solver: str,
    info: InfluenceInfo,
    config: dict,
    seconds: float,
    method: str = "optimization",
    outputs: MaskOutputs | None = None,
    extra_attrs: dict | None = None,
) -> MaskInfo:
    """Write the keep mask of a certified selection, over the user's samples, with ``outputs``, all or none;
    the norm stored is the certificate's, from S."""
    if not isinstance(cert, Certificate):
        raise TypeError("write_mask needs a Certificate from dpcli.select.certificate.certify")
    if cert.n != info.n:
        raise DpcliError(f"the certified mask has {cert.n} samples but S has {info.n}")
    space = info.samples
    keep = space.to_user(np.array(cert.keep, dtype=bool))
    fingerprint = array_fingerprint(keep.astype(np.uint8))
    attrs = {
        "mode": mode,
        "target": target,
        "achieved_norm": cert.norm,
        "solver": solver,
        "method": method,
        "certificate": cert.meaning,
        "sketch_k": cert.sketch_k or 0,
        "n": int(len(keep)),
        "n_kept": int(keep.sum()),
        "n_pruned": int((~keep).sum()),
        "n_rows": space.n,
        "config": config,
        "influence": str(Path(info.path).resolve()),
        "influence_fingerprint": info.fingerprint,
        "checkpoint": info.checkpoint,
        "dataset": info.dataset,
        "dataset_fingerprint": info.dataset_fingerprint,
        "fingerprint": fingerprint,
        "seconds": seconds,
        "convention": (
            "keep[i] is True for samples to TRAIN ON; pruned_indices are the dropped samples; i is the "
            "i-th sample as the dataset lists it (unreadable files included, never kept)"
        ),
        **(extra_attrs or {}),
    }
    with artifact_lock(out), Publication() as pub:
        with atomic_h5(out, "mask", attrs, publication=pub) as f:
            f.create_dataset("keep", data=keep)
            f.create_dataset("keep_indices", data=np.flatnonzero(keep).astype(np.int64))
            f.create_dataset("pruned_indices", data=np.flatnonzero(~keep).astype(np.int64))
            f.create_dataset("unreadable", data=space.unreadable)
            space.write(f)
        if outputs is not None:
            outputs.stage(pub, keep, space, out)
    return read_mask(out)


def read_mask(path: Path) -> MaskInfo:
    """A mask, refused unless its arrays agree (keep, keep_indices, pruned_indices, n, the sample index) and it
    keeps no unreadable sample."""
    with open_artifact(path, "mask") as f:
        try:
            keep = _user_keep(f, path)
            space = SampleSpace.read(f, int(get_attr(f, "n_rows", len(keep))), str(path))
            if space.total != len(keep) or (
                "unreadable" in f and not np.array_equal(f["unreadable"][()], space.unreadable)
            ):
                raise DpcliError(f"{path}: damaged mask artifact (its sample index does not match keep); recompute it")
            kept_bad = space.unreadable[keep[space.unreadable]]
            if kept_bad.size:
                raise DpcliError(
                    f"{path}: keeps sample {int(kept_bad[0])}, an unreadable file; a mask never keeps "
                    "those (recompute it)"
                )
            return MaskInfo(
                path=Path(path),
                keep=space.to_rows(keep),
                mode=get_attr(f, "mode"),
                target=float(get_attr(f, "target")),
                norm=float(get_attr(f, "achieved_norm")),
                solver=get_attr(f, "solver"),
                n=space.n,
                influence=get_attr(f, "influence"),
                influence_fingerprint=get_attr(f, "influence_fingerprint"),
                checkpoint=get_attr(f, "checkpoint"),
                dataset=get_attr(f, "dataset"),
                dataset_fingerprint=get_attr(f, "dataset_fingerprint"),
                fingerprint=get_attr(f, "fingerprint"),
                seconds=float(get_attr(f, "seconds", 0.0)),
                method=get_attr(f, "method", "optimization"),
                auto=get_attr(f, "auto"),
                classes_without_kept_samples=get_attr(f, "classes_without_kept_samples"),
                class_shares=get_attr(f, "class_shares"),
                space=space,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DpcliError(f"{path}: damaged mask artifact ({exc})") from None


def _user_keep(f, path: Path) -> np.ndarray:
    """``keep`` after the checks that it is one boolean per sample and that the index lists are derived from it."""
    missing = [name for name in ("keep", "keep_indices", "pruned_indices") if name not in f]
    if missing:
        raise DpcliError(f"{path}: damaged mask artifact (no '{missing[0]}' dataset); recompute it")
    keep = f["keep"][()]
    if keep.ndim != 1 or keep.dtype != np.bool_:
        raise DpcliError(
            f"{path}: damaged mask artifact ('keep' must be one boolean per sample, got "
            f"{keep.dtype} {keep.shape}); recompute it"
        )
    n = get_attr(f, "n")
    if n != len(keep):
        raise DpcliError(f"{path}: damaged mask artifact ('keep' has {len(keep)} entries but n = {n}); recompute it")
    for name, want in (("keep_indices", np.flatnonzero(keep)), ("pruned_indices", np.flatnonzero(~keep))):
        got = f[name][()]
        if got.shape != want.shape or not np.array_equal(got, want):
            raise DpcliError(f"{path}: damaged mask artifact ('{name}' disagrees with 'keep'); recompute it")
    return keep


def random_mask(info: InfluenceInfo, n_pruned: int, seed: int, out: Path) -> MaskInfo:
    """Random pruning at a given count: the reference every method must beat."""
    from dpcli.select.scoring import random_prune

    pruned = random_prune(info.n, n_pruned, np.random.default_rng(seed))
    cert = certify(load_S(info.path, mapped=True), pruned, None, sketch_k=info.sketch_k)
    return write_mask(
        out,
        cert,
        mode="cardinality",
        target=float(n_pruned),
        solver="random",
        info=info,
        config={"method": "random", "count": n_pruned, "seed": seed},
        seconds=0.0,
        method="random",
    )


# --------------------------------------------------------------------------- retrain
@dataclass
class RetrainResult:
    checkpoint: Checkpoint
    metrics: dict = field(default_factory=dict)


def upstream_checkpoint(mask: MaskInfo) -> Checkpoint | None:
    """The full-data checkpoint a mask descends from, if it is still where the mask says."""
    try:
        return load_checkpoint(mask.checkpoint, weights=False) if mask.checkpoint else None
    except DpcliError:
        return None


def retrain(
    ds: Dataset,
    mask: MaskInfo,
    out: Path,
    *,
    base: TrainConfig | None,
    overrides: dict,
    device: torch.device,
    force: bool = False,
    reference: Checkpoint | None = None,
    on_batch=None,
    on_epoch=None,
    eval_every: int = 1,
    snapshot_epochs: tuple[int, ...] | None = None,
) -> RetrainResult:
    """Train a fresh model on the KEPT samples with the full run's settings (or overrides)."""
    if not mask.samples.same_as(ds.samples):
        i = mask.samples.first_difference(ds.samples)
        now = (
            ""
            if i is None
            else (
                f"; sample {i} was unreadable then and is not now"
                if i in mask.samples.unreadable
                else f"; sample {i} is unreadable now and was not then"
            )
        )
        raise DpcliError(
            f"{mask.path}: mask was made for {mask.samples.describe()} but dataset {ds.name!r} has "
            f"{ds.samples.describe()}{now}"
        )
    if mask.dataset_fingerprint and mask.dataset_fingerprint != ds.fingerprint:
        raise DpcliError(
            f"{mask.path}: mask was made for dataset {mask.dataset!r} with another fingerprint than {ds.name!r}"
        )
    if base is None:
        base = default_train_config(ds.name, ds.augment)
    config = base.replace(**overrides).replace(subset=mask.fingerprint)
    ck = train(
        config,
        ds,
        out,
        device=device,
        keep_indices=mask.keep_indices,
        force=force,
        lineage={"mask": str(Path(mask.path).resolve()), "mask_fingerprint": mask.fingerprint},
        on_batch=on_batch,
        on_epoch=on_epoch,
        eval_every=eval_every,
        snapshot_epochs=snapshot_epochs,
    )
    final = ck.final
    assert final is not None  # TrainConfig refuses epochs < 1: a finished training has a last epoch
    metrics: dict = {
        "checkpoint": str(out),
        "mask": str(mask.path),
        "n_kept": mask.n_kept,
        "n_pruned": mask.n_pruned,
        "prune_ratio": mask.n_pruned / mask.n,
        "arch": config.arch,
        "epochs": config.epochs,
        "test_accuracy": final.test_acc,
        "test_loss": final.test_loss,
        "train_seconds": ck.seconds,
        "optimizer_steps": ck.steps,
    }
    if reference is not None and reference.final is not None:
        target = reference.final.test_acc - 1.0
        mine = time_to_accuracy(ck.history, target)
        theirs = time_to_accuracy(reference.history, target)
        metrics.update(
            {
                "full_data_test_accuracy": reference.final.test_acc,
                "full_data_test_loss": reference.final.test_loss,
                "full_data_train_seconds": reference.seconds,
                "full_data_optimizer_steps": reference.steps,
                "target_accuracy": target,
                "seconds_to_target": None if mine is None else mine[0],
                "epochs_to_target": None if mine is None else mine[1],
                "full_data_seconds_to_target": None if theirs is None else theirs[0],
                "full_data_epochs_to_target": None if theirs is None else theirs[1],
            }
        )
    return RetrainResult(checkpoint=ck, metrics=metrics)
