"""The five stages as library calls over artifact paths; the CLI is a thin shell over these.

Each stage reads its inputs' artifacts, checks they belong together (dataset and
upstream fingerprints), and writes one new artifact atomically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dpcli import console
from dpcli.artifacts.h5 import (
    DIGEST_ATTR,
    DatasetDigest,
    StreamHash,
    atomic_h5,
    check_writable,
    get_attr,
    open_artifact,
    set_attr,
    verify_dataset,
)
from dpcli.artifacts.lock import artifact_lock
from dpcli.artifacts.rows import check_space, create_rows, mapped_rows
from dpcli.config import InfluenceConfig
from dpcli.data.samples import SampleSpace
from dpcli.data.sources import Dataset
from dpcli.errors import DpcliError
from dpcli.influence import kernels as infl
from dpcli.influence import sketch as influence_scale
from dpcli.influence.base import ESTIMATORS, LastLayer
from dpcli.select.linalg import float32_rows, nonfinite_rows
from dpcli.stages.outputs import check_distinct
from dpcli.train.checkpoint import Checkpoint, load_checkpoint
from dpcli.train.loop import extract_features, load_trained

Progress = Callable[..., None]


# --------------------------------------------------------------------------- influence
@dataclass(frozen=True)
class InfluenceInfo:
    path: Path
    method: str
    damping: float
    n: int
    d: int
    num_classes: int
    feature_dim: int
    fingerprint: str
    checkpoint: str
    checkpoint_fingerprint: str
    dataset: str
    dataset_fingerprint: str
    seconds: float
    sketch_k: int | None = None  # S is the JL sketch S @ R (n x k) when set
    space: SampleSpace | None = None  # the user index of each row (every row a sample, in order, when None)

    @property
    def samples(self) -> SampleSpace:
        return self.space if self.space is not None else SampleSpace.identity(self.n)


def default_damping(ck: Checkpoint) -> float:
    """The L2 coefficient the model was trained with: it makes H the Hessian of the real objective."""
    return ck.config.weight_decay if ck.config.weight_decay > 0 else 1e-3


def compute_influence(
    checkpoint: Path,
    out: Path,
    cfg: InfluenceConfig,
    *,
    device: torch.device,
    data_root: Path | None = None,
    ds: Dataset | None = None,
    progress: Progress | None = None,
    shard: tuple[int, int] | None = None,
) -> InfluenceInfo:
    """S_i = (1/n) (H + damping I)^-1 grad L(z_i) on the last linear layer, streamed to HDF5.

    ``shard=(i, k)`` writes only rows [floor(i n/k), floor((i+1) n/k)) (the Hessian still uses
    all rows); ``cfg.sketch_k`` stores S @ R instead of S (see :mod:`dpcli.influence.sketch`).
    """
    cfg.validate()
    check_distinct({"--out": out}, {"the checkpoint": Path(checkpoint)})
    with artifact_lock(out) as lock:
        if lock.reusable():
            done = _reusable_influence(out, checkpoint, cfg, lock.holder)
            if done is not None:
                return done
        check_writable(out)
        return _compute_influence(
            checkpoint, out, cfg, device=device, data_root=data_root, ds=ds, progress=progress, shard=shard
        )


def _reusable_influence(out: Path, checkpoint: Path, cfg: InfluenceConfig, holder: int | None) -> InfluenceInfo | None:
    """The influence another job published while this one waited, if it is the one asked for."""
    try:
        info = read_influence_info(out, allow_shard=True)
        same = (
            influence_config_of(out) == cfg.to_dict()
            and info.checkpoint_fingerprint == load_checkpoint(checkpoint, weights=False).fingerprint
        )
    except DpcliError:
        return None
    if same:
        console.info(f"reusing {out}, computed by pid {holder or '?'} while this job waited")
    return info if same else None


def _compute_influence(
    checkpoint: Path,
    out: Path,
    cfg: InfluenceConfig,
    *,
    device: torch.device,
    data_root: Path | None,
    ds: Dataset | None,
    progress: Progress | None,
    shard: tuple[int, int] | None,
) -> InfluenceInfo:
    t0 = time.perf_counter()
    model, ck, ds = load_trained(checkpoint, device, data_root, ds)
    if ck.keep_indices is not None:
        raise DpcliError(f"{checkpoint}: is a model retrained on a subset; influence needs the full-data checkpoint")
    damping = cfg.damping if cfg.damping is not None else default_damping(ck)
    c, feat_dim = model.head.weight.shape
    n = len(ds.train.labels)
    d = c * (feat_dim + 1)
    row_start, row_stop = influence_scale.shard_rows(n, shard)
    sketch = influence_scale.make_sketch(cfg, d)
    width = d if sketch is None else sketch.k
    # before the features pass: at ImageNet size that pass alone takes minutes
    check_space(out, 4 * (row_stop - row_start) * width, f"S ({row_stop - row_start:,} x {width:,} float32)")
    feats = extract_features(model, ds.train, ds, device)
    labels = torch.from_numpy(ds.train.labels).to(device)
    weight = model.head.weight.detach().float()
    bias = model.head.bias.detach().float()
    with torch.no_grad():
        losses, grad_norm = infl.loss_and_grad_norm(feats, labels, weight, bias)
    test_feats = extract_features(model, ds.test, ds, device)
    test_grad = infl.mean_grad(test_feats, torch.from_numpy(ds.test.labels).to(device), weight, bias)
    theta = torch.cat([weight.double().flatten(), bias.double()]).cpu().numpy()
    attrs = {
        "method": cfg.estimator,
        "damping": float(damping),
        "n": n,
        "d": d,
        "num_classes": c,
        "feature_dim": feat_dim,
        "config": cfg.to_dict(),
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_fingerprint": ck.fingerprint,
        "dataset": ds.name,
        "dataset_fingerprint": ds.fingerprint,
        "epsilon_convention": "S_i includes the 1/n factor (Eq. 3): ||sum S_i|| is the predicted parameter change",
        "parameter_order": "last layer: weight (C x D) row-major, then bias (C)",
    }
    attrs.update(influence_scale.output_attrs(cfg, n, shard))
    with atomic_h5(out, "influence", attrs) as f:
        dset = create_rows(f, "S", row_stop - row_start, width)
        hasher, digest = StreamHash(), DatasetDigest(dset.dtype, dset.shape)

        def sink(start: int, rows: np.ndarray) -> None:
            if not np.all(np.isfinite(rows)):
                raise DpcliError("influence produced non-finite values; increase --damping")
            if sketch is not None:
                rows = sketch.apply(rows)
            stored = np.asarray(rows, dtype=np.float32)  # the bytes the file holds, for its checksum
            dset[start - row_start : start - row_start + len(rows)] = stored
            hasher.update(rows)
            digest.update(stored)

        def on_rows(done: int, total: int) -> None:
            if progress:
                progress(done, total)

        estimator = ESTIMATORS.get(cfg.estimator)(cfg)
        problem = LastLayer(feats, labels, weight, bias, checkpoint=Path(checkpoint))
        solved = estimator.solve(
            problem, damping=damping, rows=(row_start, row_stop), sink=sink, progress=on_rows, info=console.info
        )
        for key, value in solved.items():
            set_attr(f, key, value)
        dset.attrs[DIGEST_ATTR] = digest.hexdigest()  # rows arrive in order (the estimators' sink contract)
        f.create_dataset("loss", data=losses.astype(np.float32))
        f.create_dataset("grad_norm", data=grad_norm.astype(np.float32))
        f.create_dataset("labels", data=ds.train.labels)
        f.create_dataset("test_grad", data=test_grad.detach().cpu().numpy().astype(np.float64))
        f.create_dataset("theta", data=theta)
        ds.samples.write(f)
        fingerprint = hasher.hexdigest()
        f.attrs["fingerprint"] = fingerprint
        if shard is not None:
            f.attrs["shard_fingerprint"] = fingerprint
        seconds = time.perf_counter() - t0
        f.attrs["seconds"] = seconds
    return read_influence_info(out, allow_shard=shard is not None)


def read_influence_info(path: Path, allow_shard: bool = False) -> InfluenceInfo:
    with open_artifact(path, "influence") as f:
        if not allow_shard and get_attr(f, "shards") is not None:
            raise DpcliError(
                f"{path}: is shard {get_attr(f, 'shard')}/{get_attr(f, 'shards')} of S (rows "
                f"[{get_attr(f, 'row_start')}, {get_attr(f, 'row_stop')})); merge the shards first: "
                f"dpcli influence CKPT --merge PART ... --out influence.h5"
            )
        _check_rows(path, f)
        try:
            return InfluenceInfo(
                path=Path(path),
                method=get_attr(f, "method"),
                damping=float(get_attr(f, "damping")),
                n=int(get_attr(f, "n")),
                d=int(get_attr(f, "d")),
                num_classes=int(get_attr(f, "num_classes")),
                feature_dim=int(get_attr(f, "feature_dim")),
                fingerprint=get_attr(f, "fingerprint"),
                checkpoint=get_attr(f, "checkpoint"),
                checkpoint_fingerprint=get_attr(f, "checkpoint_fingerprint"),
                dataset=get_attr(f, "dataset"),
                dataset_fingerprint=get_attr(f, "dataset_fingerprint"),
                seconds=float(get_attr(f, "seconds", 0.0)),
                sketch_k=get_attr(f, "sketch_k"),
                space=SampleSpace.read(f, int(get_attr(f, "n")), str(path)),
            )
        except (TypeError, ValueError) as exc:
            raise DpcliError(f"{path}: damaged influence artifact ({exc})") from None


def _check_rows(path: Path, f) -> None:
    """S must have one row per training sample (a shard: one per row of its range), as ``n`` says."""
    if "S" not in f or f["S"].ndim != 2:
        raise DpcliError(f"{path}: influence artifact has no 2-D dataset 'S'")
    start, stop = get_attr(f, "row_start"), get_attr(f, "row_stop")
    expected = int(stop) - int(start) if get_attr(f, "shards") is not None else int(get_attr(f, "n", -1))
    if f["S"].shape[0] != expected:
        raise DpcliError(
            f"{path}: S has {f['S'].shape[0]} rows but the artifact says n = {expected}; "
            f"the file is damaged or was edited, recompute it"
        )


def influence_config_of(path: Path) -> dict | None:
    """The InfluenceConfig an influence artifact was computed with (to decide whether to reuse it)."""
    with open_artifact(path, "influence") as f:
        return get_attr(f, "config")


def load_S(path: Path, *, mapped: bool = False) -> np.ndarray:
    """S, refusing a damaged or non-finite matrix.

    ``mapped``: a read-only memory map of the file where its layout allows (every S dpcli writes),
    so that prune's peak heap is its solve, not S plus the solve; else a float32 copy in memory.
    """
    with open_artifact(path, "influence") as f:
        if "S" not in f or f["S"].ndim != 2 or f["S"].dtype != np.float32:
            raise DpcliError(f"{path}: influence artifact has no 2-D float32 dataset 'S'")
        S = mapped_rows(f["S"]) if mapped else None
        if S is not None:
            bad = nonfinite_rows(S)
        else:
            S, bad = float32_rows(f["S"])
        verify_dataset(f["S"], path, "S", values=S)  # a flipped bit is no NaN: only the checksum sees it
    if bad:
        raise DpcliError(f"{path}: S has {bad} rows with non-finite values; recompute with larger --damping")
    return S
