"""Checkpoint artifacts: written atomically each epoch, read back with the checks that tie a model to its data."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

from dpcli.artifacts.h5 import array_fingerprint, atomic_h5, get_attr, open_artifact, set_attr
from dpcli.config import TrainConfig
from dpcli.data.sources import Dataset, load_dataset
from dpcli.errors import ArtifactBusy, DpcliError
from dpcli.models import preprocess
from dpcli.models.zoo import Classifier
from dpcli.train import epochlog
from dpcli.train.dynamics import DynamicsRecorder
from dpcli.train.trajectory import TrajectoryRecorder


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    seconds: float
    steps: int
    lr: float


@dataclass
class Checkpoint:
    """A checkpoint artifact read back into memory."""

    path: Path
    config: TrainConfig
    dataset_fingerprint: str
    n_train: int
    num_classes: int
    epoch: int
    complete: bool
    fingerprint: str
    history: list[EpochRecord] = field(default_factory=list)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict | None = None
    scheduler: dict | None = None
    keep_indices: np.ndarray | None = None
    lineage: dict = field(default_factory=dict)
    world_size: int = 1

    @property
    def seconds(self) -> float:
        return float(sum(r.seconds for r in self.history))

    @property
    def steps(self) -> int:
        return int(sum(r.steps for r in self.history))

    @property
    def final(self) -> EpochRecord | None:
        return self.history[-1] if self.history else None


def _no_regression(epoch: int) -> Callable[[Path], None]:
    """A publish guard: never replace a checkpoint holding a later epoch with an earlier one."""

    def guard(path: Path) -> None:
        held = -1
        with contextlib.suppress(DpcliError, OSError):  # no readable checkpoint there: nothing to protect
            held = load_checkpoint(path, weights=False).epoch if path.exists() else -1
        if held > epoch:
            raise ArtifactBusy(
                f"{path}: holds epoch {held}, newer than this job's epoch {epoch}; "
                f"not replacing it (another job trained it; rerun to resume from it)"
            )

    return guard


def save_checkpoint(
    path: Path,
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    ds: Dataset,
    history: list[EpochRecord],
    *,
    complete: bool,
    keep_indices: np.ndarray | None,
    lineage: dict | None,
    world_size: int = 1,
    trajectory: TrajectoryRecorder | None = None,
    dynamics: DynamicsRecorder | None = None,
    consolidate: bool = True,
    replace_newer: bool = False,
) -> Checkpoint:
    """Atomically replace ``path`` with this epoch's checkpoint (never with an older epoch unless ``replace_newer``).

    Without ``consolidate`` the epoch's trajectory and dynamics rows are first appended to
    ``path.epochs/`` (:mod:`dpcli.train.epochlog`) and ``path`` keeps only constant-size
    parts, so the write costs the same at every epoch; with it (the last epoch of a
    ``train`` call) the full groups go into ``path`` and, once complete, the side log is removed.
    """
    epoch = len(history)
    if not consolidate:
        rows = {f"trajectory/{k}": v for k, v in (trajectory.last_epoch() if trajectory else {}).items()}
        rows.update({f"dynamics/{k}": v for k, v in (dynamics.last_epoch() if dynamics else {}).items()})
        epochlog.append(path, epoch - 1, rows)  # before the checkpoint: its epoch attribute commits the row
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    fingerprint = array_fingerprint(*[v.numpy() for v in state.values()])
    attrs = {
        "config": config.to_dict(),
        "dataset": ds.name,
        "dataset_fingerprint": ds.fingerprint,
        "n_train": len(ds.train.labels),
        # input files left out as unreadable images (the full list is in the image cache)
        "skipped_files": {"count": len(ds.skipped), "first": [list(s) for s in ds.skipped[:200]]},
        "num_classes": ds.num_classes,
        "epoch": len(history),
        "complete": bool(complete),
        "fingerprint": fingerprint,
        "lineage": _with_input(lineage, ds),
        "world_size": int(world_size),  # processes that trained it (torchrun); 1 = single process
    }
    guard = None if replace_newer else _no_regression(len(history))
    with atomic_h5(path, "checkpoint", attrs, before_publish=guard) as f:
        g = f.create_group("model")
        for name, tensor in state.items():
            g.create_dataset(name, data=tensor.numpy())
        _write_optimizer(f.create_group("optimizer"), optimizer)
        set_attr(f, "scheduler", {k: v for k, v in scheduler.state_dict().items()})
        h = f.create_group("history")
        for key in EpochRecord.__dataclass_fields__:
            h.create_dataset(key, data=np.array([getattr(r, key) for r in history], dtype=np.float64))
        if keep_indices is not None:
            f.create_dataset("keep_indices", data=keep_indices)
        if trajectory is not None:
            trajectory.write(f, rows=consolidate)  # trajectory/: what --estimator sgd replays (dpcli/influence/sgd.py)
        if dynamics is not None:
            dynamics.write(f, rows=consolidate)  # dynamics/, snapshots/: what the score selectors read
    if consolidate and complete:
        epochlog.clear(path)  # everything is inside the checkpoint now
    return Checkpoint(
        path=path,
        config=config,
        dataset_fingerprint=ds.fingerprint,
        n_train=len(ds.train.labels),
        num_classes=ds.num_classes,
        epoch=len(history),
        complete=complete,
        fingerprint=fingerprint,
        history=list(history),
        state=state,
        keep_indices=keep_indices,
        lineage=_with_input(lineage, ds),
        world_size=int(world_size),
    )


def _with_input(lineage: dict | None, ds: Dataset) -> dict:
    """The lineage, plus the model's preprocessing when the data were loaded with one (later stages reuse it)."""
    out = dict(lineage or {})
    if ds.input is not None:
        out[preprocess.LINEAGE_KEY] = preprocess.to_dict(ds.input)
    return out


def _write_optimizer(g: h5py.Group, optimizer: torch.optim.Optimizer) -> None:
    sd = optimizer.state_dict()
    set_attr(g, "param_groups", sd["param_groups"])
    for idx, st in sd["state"].items():
        sg = g.create_group(f"state/{idx}")
        for key, value in st.items():
            if torch.is_tensor(value):
                sg.create_dataset(key, data=value.detach().cpu().numpy())
            else:
                sg.attrs[key] = value


def _read_optimizer(g: h5py.Group) -> dict:
    state = {}
    if "state" in g:
        for idx, sg in g["state"].items():
            entry = {key: torch.from_numpy(ds[()]) for key, ds in sg.items()}
            entry.update({key: sg.attrs[key] for key in sg.attrs})
            state[int(idx)] = entry
    return {"state": state, "param_groups": get_attr(g, "param_groups")}


def load_checkpoint(path: Path | str, *, weights: bool = True) -> Checkpoint:
    path = Path(path)
    with open_artifact(path, "checkpoint") as f:
        try:
            config = TrainConfig.from_dict(get_attr(f, "config"))
            h = f["history"]
            n_epochs = len(h["epoch"])

            def record(i: int) -> EpochRecord:
                row: dict[str, Any] = {
                    k: (int(h[k][i]) if k in ("epoch", "steps") else float(h[k][i]))
                    for k in EpochRecord.__dataclass_fields__
                }  # ints and floats, by field
                return EpochRecord(**row)

            history = [record(i) for i in range(n_epochs)]
            ck = Checkpoint(
                path=path,
                config=config,
                dataset_fingerprint=get_attr(f, "dataset_fingerprint"),
                n_train=int(get_attr(f, "n_train")),
                num_classes=int(get_attr(f, "num_classes")),
                epoch=int(get_attr(f, "epoch")),
                complete=bool(get_attr(f, "complete")),
                fingerprint=get_attr(f, "fingerprint"),
                history=history,
                lineage=get_attr(f, "lineage", {}) or {},
                world_size=int(get_attr(f, "world_size", 1)),
            )
            if "keep_indices" in f:
                ck.keep_indices = f["keep_indices"][()]
            if weights:
                ck.state = {k: torch.from_numpy(np.asarray(v[()])) for k, v in f["model"].items()}
                ck.optimizer = _read_optimizer(f["optimizer"])
                ck.scheduler = get_attr(f, "scheduler")
        except (KeyError, TypeError, ValueError) as exc:
            raise DpcliError(f"{path}: damaged checkpoint artifact ({exc})") from None
    return ck


def _check_weights(path: Path | str, state: dict[str, torch.Tensor]) -> None:
    """Finite weights: NaN in a model is damage or a diverged run, which no later option (--damping) can mend."""
    bad = next((name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise DpcliError(
            f"{path}: the model's weights hold NaN or inf (in {bad}); the checkpoint is damaged or its "
            "training diverged: retrain it (--force, a lower --lr)"
        )


def dataset_of(ck: Checkpoint, data_root: Path | None = None) -> Dataset:
    """The checkpoint's dataset, loaded as its model saw it (--image-size, the preprocessing in its lineage)."""
    return load_dataset(
        ck.config.dataset, data_root, image_size=ck.config.image_size, input=preprocess.of_checkpoint(ck)
    )


def check_dataset(ck: Checkpoint, ds: Dataset) -> None:
    preprocess.check(preprocess.of_checkpoint(ck), ck.config.image_size, ds, str(ck.path))
    if ck.dataset_fingerprint != ds.fingerprint:
        raise DpcliError(
            f"{ck.path}: checkpoint was made for dataset {ck.config.dataset!r} with fingerprint "
            f"{ck.dataset_fingerprint}, but {ds.name!r} has fingerprint {ds.fingerprint}"
        )


def time_to_accuracy(history: list[EpochRecord], target: float) -> tuple[float, int] | None:
    """Wall seconds and epochs until test accuracy first reaches ``target`` (Figure 4), or None."""
    elapsed = 0.0
    for rec in history:
        elapsed += rec.seconds
        if rec.test_acc >= target and math.isfinite(rec.test_acc):
            return elapsed, rec.epoch
    return None
