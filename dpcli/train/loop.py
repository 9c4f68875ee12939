"""Empirical risk minimization with resumable, atomic HDF5 checkpoints.

The data order and augmentation of epoch ``e`` come from a generator seeded with
``(seed, e)``, so a run resumed from its last completed epoch is the same run as an
uninterrupted one (bit-for-bit on the CPU).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from dpcli import console, interrupts
from dpcli.artifacts.h5 import check_writable
from dpcli.artifacts.lock import artifact_lock
from dpcli.config import TrainConfig
from dpcli.data.sources import Dataset, Split, inference_batch, iterate_batches
from dpcli.errors import DpcliError
from dpcli.models import preprocess
from dpcli.models.zoo import Classifier, build_model
from dpcli.train import epochlog
from dpcli.train.dynamics import Dynamics, DynamicsRecorder, default_snapshot_epochs, read_snapshots
from dpcli.train.trajectory import TrajectoryRecorder

if TYPE_CHECKING:
    from dpcli.train.distributed import Distributed
from dpcli.train.checkpoint import (
    Checkpoint,
    EpochRecord,
    _check_weights,
    check_dataset,
    dataset_of,
    load_checkpoint,
    save_checkpoint,
)

EpochHook = Callable[["EpochRecord"], None]
BatchHook = Callable[[int, int, int], None]  # (epoch, samples seen, samples per epoch)
RowsHook = Callable[[int, int], None]


def resolve_device(name: str) -> torch.device:
    """Map --device auto|cpu|cuda[:N] to a torch device, refusing CUDA when there is none."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DpcliError("--device cuda was requested but no CUDA device is available")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise DpcliError(f"unknown --device {name!r}; use auto, cpu or cuda")


def make_model(config: TrainConfig, ds: Dataset, pretrained: bool = True) -> Classifier:
    """A fresh model; ``pretrained=False`` skips --weights (a checkpoint's state replaces them anyway)."""
    torch.manual_seed(config.seed)
    return build_model(
        config.arch,
        num_classes=ds.num_classes,
        in_channels=ds.channels,
        image_size=ds.image_size,
        width=config.width,
        depth=config.depth,
        weights=config.weights if pretrained else None,
        head_module=config.head_module,
    )


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + epoch)
    return g


@torch.no_grad()
def evaluate(
    model: Classifier, split: Split, ds: Dataset, device: torch.device, batch_size: int | None = None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) on a split, un-augmented, in eval mode."""
    model.eval()
    batch_size = batch_size or inference_batch(split, device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, correct: summed on the device
    n = 0
    for x, y, _ in iterate_batches(
        split, batch_size, mean=ds.mean, std=ds.std, device=device, shuffle=False, augment=False, generator=None
    ):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(_memory_format(x, model)).float()
        sums += torch.stack(
            [F.cross_entropy(logits, y, reduction="sum").double(), (logits.argmax(1) == y).sum().double()]
        )
        n += y.numel()
    total_loss, correct = sums.tolist()  # the one host sync of an evaluation
    return total_loss / max(n, 1), 100.0 * correct / max(n, 1)


@torch.no_grad()
def extract_features(
    model: Classifier,
    split: Split,
    ds: Dataset,
    device: torch.device,
    batch_size: int | None = None,
    progress: RowsHook | None = None,
) -> torch.Tensor:
    """Penultimate features of every sample, un-augmented, eval mode, in the training precision
    (bf16 autocast on CUDA), returned as float32."""
    model.eval()
    batch_size = batch_size or inference_batch(split, device)
    out = []
    n = len(split.labels)
    done = 0
    for x, _, _ in iterate_batches(
        split, batch_size, mean=ds.mean, std=ds.std, device=device, shuffle=False, augment=False, generator=None
    ):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model.features(_memory_format(x, model)).float())  # the training precision
        done += x.shape[0]
        if progress:
            progress(done, n)
    return torch.cat(out)


def train(
    config: TrainConfig,
    ds: Dataset,
    out: Path,
    *,
    device: torch.device,
    keep_indices: np.ndarray | None = None,
    force: bool = False,
    lineage: dict | None = None,
    on_batch: BatchHook | None = None,
    on_epoch: EpochHook | None = None,
    dist: "Distributed | None" = None,
    stop_after: int | None = None,
    eval_every: int = 1,
    snapshot_epochs: tuple[int, ...] | None = None,
) -> Checkpoint:
    """Train (or resume, or reuse) the model that ``config`` describes; checkpoint every epoch.

    ``dist`` (from :func:`dpcli.train.distributed.from_env`, under torchrun) splits every global
    batch across ranks; the update and the artifact are those of a single process.
    ``stop_after=E`` stops after epoch E, leaving a resumable checkpoint that is exactly
    epoch E of the full run (the score selectors' extra seeds). ``eval_every=K`` measures
    test accuracy every K epochs and at the end only (NaN in between), to save time.
    Per-sample training dynamics and snapshots (:mod:`dpcli.train.dynamics`) are recorded too.
    """
    config.validate()
    preprocess.check(
        preprocess.for_config(config), config.image_size, ds, "the run"
    )  # the pipeline is part of the model
    out = Path(out)
    if dist is not None and not dist.is_main:  # rank 0 holds the lock and writes for all ranks
        return _train_locked(
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
            stop_after=stop_after,
            eval_every=eval_every,
            snapshot_epochs=snapshot_epochs,
        )
    with artifact_lock(out) as lock:  # a second identical job waits here, then resumes or reuses
        if lock.waited:
            _say_reused(out, lock.holder)
        force = force and not lock.reusable()  # what another job published while we waited is fresh
        try:
            return _train_locked(
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
                stop_after=stop_after,
                eval_every=eval_every,
                snapshot_epochs=snapshot_epochs,
            )
        except BaseException:
            if not out.exists():  # no epoch was ever committed: its side log would be an orphan
                epochlog.clear(out)
            raise


def _say_reused(out: Path, holder: int | None) -> None:
    from dpcli import console

    with contextlib.suppress(DpcliError):
        ck = load_checkpoint(out, weights=False)
        state = "complete" if ck.complete else f"epoch {ck.epoch}/{ck.config.epochs}"
        console.info(f"{out}: {state}, written by pid {holder or '?'} while this job waited; continuing from it")


def _train_locked(
    config: TrainConfig,
    ds: Dataset,
    out: Path,
    *,
    device: torch.device,
    keep_indices: np.ndarray | None,
    force: bool,
    lineage: dict | None,
    on_batch: BatchHook | None,
    on_epoch: EpochHook | None,
    dist: "Distributed | None",
    stop_after: int | None,
    eval_every: int,
    snapshot_epochs: tuple[int, ...] | None,
) -> Checkpoint:
    """:func:`train` once its checkpoint's lock is held (re-reads the checkpoint: another job may have advanced it)."""
    if not (out.exists() and not force):
        check_writable(out)  # a read-only --run-root fails now, not after the first epoch
    fp = ds.fingerprint
    if config.deterministic:
        _make_deterministic(device)
    model = make_model(config, ds).to(device)
    if config.deterministic:
        _deterministic_modules(model)
    if config.channels_last if config.channels_last is not None else device.type == "cuda":  # docs/gpu.md
        _to_channels_last(model)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    history: list[EpochRecord] = []
    start = 0
    if force or not out.exists():
        epochlog.clear(out)  # side files of an earlier run are not this run's
    if out.exists() and not force:
        ck = load_checkpoint(out)
        if ck.config != config or ck.dataset_fingerprint != fp:
            raise DpcliError(
                f"{out}: holds a checkpoint of another configuration or dataset; pass --force to overwrite or "
                "choose another --out"
            )
        if ck.complete:
            return ck
        console.info(f"resuming from epoch {ck.epoch} of {config.epochs} ({out})")
        model.load_state_dict(ck.state)
        if ck.optimizer is not None:
            optimizer.load_state_dict(ck.optimizer)
        if ck.scheduler is not None:
            scheduler.load_state_dict(ck.scheduler)
        history, start = list(ck.history), ck.epoch

    indices = None if keep_indices is None else np.asarray(keep_indices, dtype=np.int64)
    n_used = len(ds.train.labels) if indices is None else len(indices)
    if n_used == 0:
        raise DpcliError("the training subset is empty: the mask keeps no sample")
    if indices is None and len(np.unique(ds.train.labels)) < 2:  # a one-class softmax has zero loss: S would be 0
        only = ds.classes[int(ds.train.labels[0])] if ds.classes else int(ds.train.labels[0])
        raise DpcliError(
            f"dataset {ds.name!r}: every training sample has class {only!r}; a classifier, and so "
            "pruning, needs at least two classes"
        )
    use_amp = device.type == "cuda" and not config.fp32
    net = eager = model if dist is None else dist.wrap(model)  # DDP shares model's parameters and buffers
    if config.compile:
        net = _compiled(net)
    compiled_unproven = config.compile  # until its first step has run: see _first_compiled_step

    def forward_backward(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = module(_memory_format(x, model))
        losses = F.cross_entropy(logits.float(), y, reduction="none")
        loss = losses.mean() if dist is None else dist.loss(losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return logits, losses, loss

    if dist is not None:
        on_batch = dist.progress(on_batch)
    save = save_checkpoint if dist is None else dist.save  # rank 0 writes, the others wait
    snaps = default_snapshot_epochs(config.epochs) if snapshot_epochs is None else snapshot_epochs
    recorder, dyn = _recorders(config, len(ds.train.labels), snaps, out, start)
    if start == 0:
        dyn.snapshot(0, model)
    last = config.epochs if stop_after is None else max(start, min(config.epochs, int(stop_after)))
    saved: Checkpoint | None = None
    for epoch in range(start, last):
        t0 = time.perf_counter()
        net.train()
        lr = optimizer.param_groups[0]["lr"]
        recorder.begin_epoch(epoch, model, optimizer, lr)
        batches = iterate_batches(
            ds.train,
            config.batch_size,
            mean=ds.mean,
            std=ds.std,
            device=device,
            shuffle=True,
            augment=config.augment and ds.augment,
            generator=_epoch_generator(config.seed, epoch),
            indices=indices,
            part=None if dist is None else dist.bounds,
        )  # a rank builds its slice only
        batches = recorder.watch(batches)  # records the global batches' dataset indices
        if dist is not None:
            batches = dist.shard(batches)  # same global batches on every rank; keep this rank's slice
        dyn.begin_epoch(device)
        # [loss sum, correct, non-finite steps, samples], summed on the device: no host sync per step
        stats = torch.zeros(4, dtype=torch.float64, device=device)
        steps = seen = 0
        for x, y, idx in batches:
            interrupts.check()  # a stop (SIGTERM, Ctrl-C) that Python swallowed in a __del__ (dpcli/interrupts.py)
            if compiled_unproven:
                net, (logits, losses, loss) = _first_compiled_step(net, eager, forward_backward, x, y)
                compiled_unproven = False
            else:
                logits, losses, loss = forward_backward(net, x, y)
            dyn.add_batch(idx, losses, logits, y)
            correct = logits.detach().argmax(1) == y
            optimizer.step()
            stats[:3] += torch.stack(
                [loss.detach().double() * y.numel(), correct.sum().double(), (~torch.isfinite(loss.detach())).double()]
            )
            steps += 1
            seen += y.numel()
            if on_batch:
                on_batch(epoch, seen, n_used)
        stats[3] += seen  # a Python number into a device tensor: no sync
        if dist is not None:
            stats = dist.end_epoch(model, stats)
        tot_loss, tot_correct, bad, seen = stats.tolist()  # the epoch's one host sync for its metrics
        if bad or not math.isfinite(tot_loss):
            raise DpcliError(f"training diverged at epoch {epoch + 1} (loss is not finite); lower --lr")
        scheduler.step()
        dyn.end_epoch(dist)
        dyn.snapshot(epoch + 1, model)
        if (epoch + 1) % max(1, eval_every) == 0 or epoch + 1 == config.epochs:
            test_loss, test_acc = evaluate(model, ds.test, ds, device)
        else:
            test_loss = test_acc = float("nan")
        rec = EpochRecord(
            epoch=epoch + 1,
            train_loss=tot_loss / max(seen, 1),
            train_acc=100.0 * tot_correct / max(seen, 1),
            test_loss=test_loss,
            test_acc=test_acc,
            seconds=time.perf_counter() - t0,
            steps=steps,
            lr=lr,
        )
        history.append(rec)
        saved = save(
            out,
            model,
            optimizer,
            scheduler,
            config,
            ds,
            history,
            complete=epoch + 1 == config.epochs,
            keep_indices=indices,
            lineage=lineage,
            trajectory=recorder,
            dynamics=dyn,
            consolidate=epoch + 1 == last,
            replace_newer=force,
        )
        if on_epoch:
            on_epoch(rec)
    if saved is None and last < config.epochs:  # stop_after reached already: nothing to do
        return load_checkpoint(out)
    if saved is None:  # zero epochs left to run (complete flag lost): rewrite as complete
        saved = save(
            out,
            model,
            optimizer,
            scheduler,
            config,
            ds,
            history,
            complete=True,
            keep_indices=indices,
            lineage=lineage,
            trajectory=recorder,
            dynamics=dyn,
            consolidate=True,
        )
    return saved


def _recorders(
    config: TrainConfig, n: int, snaps: tuple[int, ...], out: Path, start: int
) -> tuple[TrajectoryRecorder, DynamicsRecorder]:
    """Trajectory and dynamics recorders, resumed from the epochs committed before ``start``.

    Torn appends (side files past the checkpoint's epoch) are rolled back first; the
    committed rows come from ``checkpoint.h5.epochs/`` or, for a checkpoint written
    consolidated (or by an older dpcli), from the checkpoint's own groups.
    """
    if start == 0:
        return (
            TrajectoryRecorder(config.batch_size, config.momentum, config.weight_decay),
            DynamicsRecorder(n, snaps, epochs=config.epochs),
        )
    epochlog.rollback(out, start)
    rows = epochlog.read(out, start)
    if rows is None:  # no complete side log (a checkpoint written consolidated): the groups inside checkpoint.h5
        recorder = TrajectoryRecorder.for_run(config, out, start)
        dyn = DynamicsRecorder.for_run(n, snaps, out, start, config.epochs)
        epochlog.check_complete(out, start, len(recorder._records))
        _backfill(out, recorder, dyn, start)
        return recorder, dyn
    with h5py.File(out, "r") as f:
        snapshots = read_snapshots(f)
    dyn_rows = epochlog.split(rows, "dynamics")
    previous = None
    if all("loss" in r for r in dyn_rows):  # else (rows backfilled from a checkpoint without dynamics): none
        has = lambda key: all(key in r for r in dyn_rows)  # noqa: E731
        previous = Dynamics(
            loss=np.stack([r["loss"] for r in dyn_rows]),
            correct=np.stack([r["correct"] for r in dyn_rows]),
            snapshots=snapshots,
            margin=np.stack([r["margin"] for r in dyn_rows]) if has("margin") else None,
            probs=np.stack([r["probs"] for r in dyn_rows if "probs" in r])
            if has("margin") and any("probs" in r for r in dyn_rows)
            else None,
            el2n=np.stack([r["el2n"] for r in dyn_rows]) if has("el2n") else None,
        )
    return (
        TrajectoryRecorder.from_rows(config, epochlog.split(rows, "trajectory")),
        DynamicsRecorder(n, snaps, previous, start, config.epochs),
    )


def _backfill(out: Path, recorder: TrajectoryRecorder, dyn: DynamicsRecorder, start: int) -> None:
    """Copy rows read from an old-style checkpoint into the side log, so a later resume finds them there."""
    traj_rows = {int(rec[0]): rec for rec in recorder._records}
    for k in range(start):
        row = {}
        if k in traj_rows:
            row.update({f"trajectory/{name}": np.asarray(v) for name, v in zip(TrajectoryRecorder._ROW, traj_rows[k])})
        if k < len(dyn._loss):
            row.update({"dynamics/loss": dyn._loss[k], "dynamics/correct": dyn._correct[k]})
            if k < len(dyn._margin):
                row["dynamics/margin"] = dyn._margin[k]
            if k < len(dyn._el2n):
                row["dynamics/el2n"] = dyn._el2n[k]
            if k < len(dyn._probs):
                row["dynamics/probs"] = dyn._probs[k]
        epochlog.append(out, k, row)


def _make_deterministic(device: torch.device) -> None:
    """Deterministic kernels for bitwise-repeatable runs; cuBLAS needs a fixed workspace (set before its first use)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


class _GlobalMeanPool(torch.nn.Module):
    """``AdaptiveAvgPool2d(1)`` as a mean: same values, and a deterministic backward on CUDA."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


def _deterministic_modules(model: torch.nn.Module) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, torch.nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
            setattr(model, name, _GlobalMeanPool())
        else:
            _deterministic_modules(child)


def _to_channels_last(model: Classifier) -> None:
    """NHWC weights and activations for conv models (tensor-core friendly); a no-op for others."""
    if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
        # Module.__setattr__ is annotated for tensors and modules only; a plain attribute is stored as usual
        model.dpcli_channels_last = True  # type: ignore[assignment]


def _memory_format(x: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    if x.ndim == 4 and getattr(model, "dpcli_channels_last", False):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _compiled(net: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` for the training steps; a clear error where the platform cannot compile."""
    try:
        compiled = torch.compile(net)
    except RuntimeError as exc:  # e.g. unsupported Python/platform
        raise DpcliError(f"--compile is not available here: {exc}") from None
    assert isinstance(compiled, torch.nn.Module)  # compiling a module gives a module (typed as any callable)
    return compiled


def _first_compiled_step(net: torch.nn.Module, eager: torch.nn.Module, forward_backward, x, y):
    """The first step through ``torch.compile``; where the compiler fails on this model (it does on
    some shape / memory-format combinations), one warning and the same step without it.

    Nothing has changed the parameters yet when it fails (the optimizer step comes after), so the
    eager retry gives exactly the run that ``--compile`` off would have given.
    """
    try:
        return net, forward_backward(net, x, y)
    except (DpcliError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 -- any compiler failure; the eager step below re-raises real bugs
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        from rich.markup import escape

        console.info(
            escape(f"warning: --compile failed on this model ({type(exc).__name__}: {first}); training without it")
        )
        return eager, forward_backward(eager, x, y)


def load_trained(
    path: Path | str, device: torch.device, data_root: Path | None = None, ds: Dataset | None = None
) -> tuple[Classifier, Checkpoint, Dataset]:
    """Rebuild the model of a complete checkpoint on its dataset, checking they belong together."""
    ck = load_checkpoint(path)
    if not ck.complete:
        raise DpcliError(
            f"{path}: training is not complete (epoch {ck.epoch}/{ck.config.epochs}); run `dpcli train` again to resume"
        )
    if ds is None:
        ds = dataset_of(ck, data_root)
    check_dataset(ck, ds)
    model = make_model(ck.config, ds, pretrained=False)
    _check_weights(path, ck.state)
    try:
        model.load_state_dict(ck.state)
    except RuntimeError as exc:  # a tensor of another shape than its configuration's model
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise DpcliError(
            f"{path}: damaged checkpoint: its weights do not fit the model of its configuration "
            f"({detail.rstrip('.')}); retrain it (--force)"
        ) from None
    return model.to(device).eval(), ck, ds
