"""`dpcli train` under torchrun (CPU, gloo, 2 ranks, localhost only).

* the torchrun CLI writes the same artifact (schema, run-directory key) as a single process, with
  world_size = 2, and prints one JSON document (rank 0 only);
* without BatchNorm, 2-rank DDP training equals single-process training (from scratch, with
  augmentation, on a subset whose last batch leaves rank 1 empty, and resumed from a
  single-process checkpoint), and only rank 0 writes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dpcli.cli import main
from dpcli.data.sources import load_dataset
from dpcli.train import distributed
from dpcli.train import loop as training
from dpcli.train.checkpoint import load_checkpoint
from dpcli.train.loop import train

CPU = torch.device("cpu")
WORKER = Path(__file__).with_name("ddp_worker.py")
_spec = importlib.util.spec_from_file_location("dpcli_ddp_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Launch:
    tmp: Path
    out: Path  # the BN-free library runs of the 2 ranks
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> Launch:
    """One `torchrun --nproc_per_node 2` of tests/ddp_worker.py (process start-up dominates the cost)."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "ddp"
    out.mkdir()
    # a single-process partial checkpoint (1 of 2 epochs) that the 2 ranks resume
    ds = load_dataset("digits")

    def stop_after_first_epoch(rec):
        if rec.epoch == 1:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "make_model", worker.bn_free_model)
        with pytest.raises(KeyboardInterrupt):
            train(worker.cfg(), ds, out / "resume.h5", device=CPU, on_epoch=stop_after_first_epoch)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DPCLI_DIST_TIMEOUT": "60"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(WORKER),
        str(out),
        str(tmp / "runs-ddp"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Launch(tmp=tmp, out=out, proc=proc)


def test_ddp_without_batchnorm_equals_single_process(launch, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "make_model", worker.bn_free_model)
    ds = load_dataset("digits")
    ref = {
        "scratch.h5": train(worker.cfg(), ds, tmp_path / "scratch.h5", device=CPU),
        "subset.h5": train(
            worker.cfg(augment=False), ds, tmp_path / "subset.h5", device=CPU, keep_indices=worker.SUBSET
        ),
    }
    ref["resume.h5"] = ref["scratch.h5"]  # resumed by 2 ranks from a single-process epoch 1
    assert not any("running" in k for k in ref["scratch.h5"].state)  # really no BatchNorm
    for name, single in ref.items():
        ck = load_checkpoint(launch.out / name)
        assert ck.complete and ck.epoch == 2 and ck.world_size == 2, name
        assert ck.config == single.config
        assert (ck.keep_indices is not None) == (name == "subset.h5")
        assert ck.state.keys() == single.state.keys()
        for key, value in single.state.items():
            torch.testing.assert_close(ck.state[key], value, rtol=1e-4, atol=1e-5, msg=f"{name}:{key}")
        for mine, theirs in zip(ck.history, single.history, strict=True):
            assert mine.steps == theirs.steps
            assert mine.train_loss == pytest.approx(theirs.train_loss, rel=1e-4)
            assert mine.train_acc == pytest.approx(theirs.train_acc, abs=1e-6)
            assert mine.test_acc == pytest.approx(theirs.test_acc, abs=1e-6)
    # only rank 0 writes: one write per epoch the 2 ranks trained (2 + 2 + 1 resumed)
    assert not (launch.out / "saves-rank1.txt").exists()
    assert len((launch.out / "saves-rank0.txt").read_text().splitlines()) == 5
    assert [p.name for p in launch.out.iterdir() if "partial" in p.name] == []


def _h5_layout(path: Path) -> tuple[set[str], set[str]]:
    names: set[str] = set()
    with h5py.File(path, "r") as f:
        f.visit(names.add)
        attrs = set(f.attrs)
    return {n for n in names if not n.startswith("optimizer/state/")}, attrs - {"created"}


def test_torchrun_cli_writes_the_single_process_artifact(launch, capsys):
    summary = json.loads(launch.proc.stdout)  # exactly one JSON document: rank 0 only
    assert summary["command"] == "train" and summary["world_size"] == 2 and summary["epochs"] == 2
    ddp_root, single_root = launch.tmp / "runs-ddp", launch.tmp / "runs-single"
    assert main(["train", "digits", *worker.TINY, "--run-root", str(single_root), "--quiet"]) == 0
    capsys.readouterr()
    rel = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*"))  # noqa: E731
    assert rel(ddp_root) == rel(single_root)  # same run-directory key, no stray files
    ddp_path = Path(summary["checkpoint"])
    ddp_path = ddp_path if ddp_path.is_absolute() else launch.tmp / ddp_path
    single_path = single_root / ddp_path.relative_to(ddp_root)
    assert _h5_layout(ddp_path) == _h5_layout(single_path)

    ck, one = load_checkpoint(ddp_path), load_checkpoint(single_path)
    assert ck.complete and ck.epoch == 2 and ck.world_size == 2 and one.world_size == 1
    assert ck.config == one.config and ck.dataset_fingerprint == one.dataset_fingerprint
    # BatchNorm statistics are per rank on the CPU, so close to, not equal to, the single-process run
    assert ck.final.train_loss == pytest.approx(one.final.train_loss, rel=0.2)
    # the ranks' slices of the training dynamics are merged into one record of every sample
    from dpcli.select.signals import load_dynamics

    dd = load_dynamics(ddp_path)
    assert not np.isnan(dd.loss).any() and set(np.unique(dd.correct)) <= {0, 1}
    for e, rec in enumerate(ck.history):
        assert dd.loss[e].astype(np.float64).mean() == pytest.approx(rec.train_loss, rel=1e-4)
    # ... margins and class probabilities too, each sample's from the rank that trained on it
    assert dd.probs.shape == (2, *dd.loss.shape[1:], 10) and not np.isnan(dd.probs).any()
    labels = load_dataset("digits").train.labels
    p_y = dd.probs[:, np.arange(len(labels)), labels].astype(np.float64)
    np.testing.assert_allclose(p_y, np.exp(-dd.loss.astype(np.float64)), atol=2e-3)
    assert not np.isnan(dd.margin).any() and np.all(np.abs(dd.margin) <= 1)
    model, _, _ = training.load_trained(ddp_path, CPU)
    assert not model.training


def test_each_rank_builds_exactly_its_slice_of_the_global_batch():
    """With part=bounds a rank builds only rows [lo, hi) of each global batch, equal to the full batch's rows."""
    from dpcli.data.sources import iterate_batches, load_dataset

    ds = load_dataset("digits")
    keep = np.arange(0, 1400, 7)  # 200 samples: batches of 64, 64, 64, 8

    def batches(part=None):
        g = torch.Generator().manual_seed(3)
        return list(
            iterate_batches(
                ds.train,
                64,
                mean=ds.mean,
                std=ds.std,
                device=CPU,
                shuffle=True,
                augment=True,
                generator=g,
                indices=keep,
                part=part,
            )
        )

    full = batches()
    for world in (2, 3, 11):
        parts = []
        for rank in range(world):
            d = distributed.Distributed(rank, world, rank, CPU)
            got = list(d.shard(iter(batches(d.bounds))))
            assert d.samples_done == len(keep)
            parts.append(got)
        for t, (x, y, idx) in enumerate(full):
            assert torch.equal(torch.cat([p[t][0] for p in parts]), x)  # same pixels, augmentation included
            assert torch.equal(torch.cat([p[t][1] for p in parts]), y)
            assert torch.equal(torch.cat([p[t][2] for p in parts]), idx)
            sizes = [p[t][1].numel() for p in parts]
            assert max(sizes) - min(sizes) <= 1


class _CountingImages(np.ndarray):
    """uint8 images that record how many rows each fancy-indexed read takes."""

    reads: list[int] = []

    def __getitem__(self, key):
        if isinstance(key, np.ndarray):
            _CountingImages.reads.append(len(key))
        return np.asarray(super().__getitem__(key))


@pytest.mark.parametrize("crop", [None, 6])  # crop-and-flip, and --image-size's random resized crop
def test_a_rank_reads_and_augments_only_its_rows(crop):
    from dpcli.data.base import Split
    from dpcli.data.sources import iterate_batches, load_dataset

    ds = load_dataset("digits")
    split = Split(ds.train.images, ds.train.labels, crop=crop)
    object.__setattr__(split, "images", ds.train.images.view(_CountingImages))  # Split would copy a subclass
    keep = np.arange(0, 1400, 7)  # 200 samples: global batches of 64, 64, 64, 8

    def batches(part=None):
        g = torch.Generator().manual_seed(5)
        return list(
            iterate_batches(
                split,
                64,
                mean=ds.mean,
                std=ds.std,
                device=CPU,
                shuffle=True,
                augment=True,
                generator=g,
                indices=keep,
                part=part,
            )
        )

    full = batches()
    world = 3
    got = []
    for rank in range(world):
        d = distributed.Distributed(rank, world, rank, CPU)
        _CountingImages.reads.clear()
        got.append(batches(d.bounds))
        assert _CountingImages.reads == [d.bounds(b)[1] - d.bounds(b)[0] for b in (64, 64, 64, 8)]
    for t, (x, y, _) in enumerate(full):
        assert torch.equal(torch.cat([g[t][0] for g in got]), x)
        assert torch.equal(torch.cat([g[t][1] for g in got]), y)


def test_scaled_loss_gives_the_global_mean_gradient():
    torch.manual_seed(0)
    logits = torch.randn(7, 3, requires_grad=True)
    y = torch.randint(0, 3, (7,))
    torch.nn.functional.cross_entropy(logits, y).backward()
    full = logits.grad.clone()
    grads = []
    for rank in range(2):
        d = distributed.Distributed(rank, 2, rank, CPU)
        lo, hi = d.bounds(7)
        list(d.shard(iter([(logits[lo:hi], y[lo:hi], y)])))  # sets the global batch size
        part = logits.detach()[lo:hi].clone().requires_grad_(True)
        loss = d.loss(torch.nn.functional.cross_entropy(part, y[lo:hi], reduction="none"))
        assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(part, y[lo:hi]).item())
        loss.backward()
        grads.append(part.grad / 2)  # DDP averages over ranks
    torch.testing.assert_close(torch.cat(grads), full)


def test_not_launched_and_timeout(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.from_env("cpu") is None
    monkeypatch.setenv("DPCLI_DIST_TIMEOUT", "5")
    assert distributed._timeout().total_seconds() == 5
    monkeypatch.setenv("DPCLI_DIST_TIMEOUT", "soon")
    with pytest.raises(distributed.DpcliError, match="DPCLI_DIST_TIMEOUT"):
        distributed._timeout()
