"""`dpcli train` under torchrun: DistributedDataParallel with the single-process sample order.

``torchrun --nproc_per_node K -m dpcli train DATASET ...`` starts K processes with
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` set; :func:`from_env` turns that into a
:class:`Distributed` context (``None`` outside torchrun, so nothing changes then).

How a run stays the single-process run:

* every rank draws the **same** permutation and augmentation from the epoch generator
  (same seed) for the whole global batch of ``--batch-size`` samples, but builds only its
  contiguous slice of it (``iterate_batches(part=...)``, :meth:`Distributed.shard`; slice sizes differ by at most one,
  the first ranks get the extra sample, a rank may get none when the batch is smaller
  than K);
* each rank backpropagates ``sum(local losses) * K / global_batch``; DDP averages the
  gradients over K ranks, so the update is ``mean over the global batch`` exactly as in a
  single process (bit-equal up to float summation order for a model without BatchNorm);
* train loss/accuracy are summed over ranks at the end of each epoch; buffers (BatchNorm
  running statistics) are broadcast from rank 0, and every rank evaluates the full test
  set with the same weights (cheap next to an epoch of training);
* only rank 0 writes ``checkpoint.h5`` (atomically, with ``world_size`` recorded); the
  others wait at a barrier and then read its header.

BatchNorm: on CUDA the model is converted to SyncBatchNorm, so batch statistics are those
of the global batch. On the CPU (gloo) BatchNorm keeps **per-rank** batch statistics of
the local slice, so a BN model's run differs slightly from the single-process one.

A failing rank exits; torchrun then stops the others. Collectives also give up after
``DPCLI_DIST_TIMEOUT`` seconds (default 1800) instead of hanging forever.
"""

from __future__ import annotations

import atexit
import datetime
import os
from typing import Any, Iterator

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from dpcli.errors import DpcliError


def launched() -> bool:
    """True when torchrun (or another env:// launcher) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _timeout() -> datetime.timedelta:
    from dpcli.env import dist_timeout

    return datetime.timedelta(seconds=dist_timeout())


class Distributed:
    """One rank of a data-parallel run: device, process group and the per-step arithmetic."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device = device
        self.samples_done = 0  # global samples of the current epoch handed out so far
        self._global_batch = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if tdist.is_available() and tdist.is_initialized():
            tdist.destroy_process_group()

    def barrier(self) -> None:
        if self.device.type == "cuda":
            tdist.barrier(device_ids=[self.device.index])
        else:
            tdist.barrier()

    def main_first(self, fn):
        """Run ``fn`` on rank 0, then on the others (downloads and caches are not raced)."""
        if self.is_main:
            result = fn()
            self.barrier()
        else:
            self.barrier()
            result = fn()
        return result

    # ------------------------------------------------------------------ training hooks
    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model`` (BatchNorm -> SyncBatchNorm on CUDA, in place: parameters are shared)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.device.type == "cuda":
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DDP(model, device_ids=[self.device.index], output_device=self.device.index)
        return DDP(model)

    def progress(self, on_batch):
        """Report global samples seen (not this rank's) to a BatchHook."""
        if on_batch is None:
            return None
        return lambda epoch, seen, per_epoch: on_batch(epoch, min(self.samples_done, per_epoch), per_epoch)

    def bounds(self, b: int) -> tuple[int, int]:
        """This rank's contiguous slice [lo, hi) of a global batch of ``b`` samples."""
        q, r = divmod(b, self.world_size)
        lo = self.rank * q + min(self.rank, r)
        return lo, lo + q + (1 if self.rank < r else 0)

    def shard(self, batches: Iterator[tuple[Tensor, Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Each global batch cut down to this rank's slice.

        ``batches`` come from ``iterate_batches(..., part=self.bounds)``: ``x``/``y`` are already
        this rank's rows only (no rank builds the others' samples), ``idx`` the global batch's indices.
        """
        self.samples_done = 0
        for x, y, idx in batches:
            b = idx.shape[0]
            lo, hi = self.bounds(b)
            if y.shape[0] != hi - lo:
                raise RuntimeError("Distributed.shard expects batches built with part=Distributed.bounds")
            self._global_batch = b
            self.samples_done += b
            yield x, y, idx[lo:hi]

    def loss(self, losses: Tensor) -> Tensor:
        """Local mean of the per-sample ``losses`` in value; its gradient is ``K/B * sum(losses)``.

        After DDP's average over K ranks the gradient is the mean over the global batch B,
        whatever the slice sizes (even an empty slice, whose value is 0).
        """
        total = losses.sum()
        scaled = total * (self.world_size / self._global_batch)
        mean = total / max(int(losses.numel()), 1)
        return scaled + (mean - scaled).detach()

    def all_sum(self, t: Tensor) -> Tensor:
        """Elementwise sum over ranks (on the CPU side of the caller)."""
        t = t.to(self.device)
        tdist.all_reduce(t)
        return t.cpu()

    def end_epoch(self, model: nn.Module, stats: Tensor) -> Tensor:
        """Sum the epoch's train metrics (a device tensor) over ranks; give every rank rank 0's buffers."""
        for buf in model.buffers():
            tdist.broadcast(buf.data, src=0)
        t = stats.to(self.device, torch.float64)
        tdist.all_reduce(t)
        return t

    def save(self, path, *args, **kwargs):
        """Rank 0 writes the checkpoint (atomically); the others wait, then read its header."""
        from dpcli.train.checkpoint import load_checkpoint, save_checkpoint

        ck = None
        if self.is_main:
            ck = save_checkpoint(path, *args, world_size=self.world_size, **kwargs)
        self.barrier()
        return ck if ck is not None else load_checkpoint(path, weights=False)


def from_env(device_name: str = "auto") -> Distributed | None:
    """Join the torchrun process group, or return None when not launched by torchrun.

    ``--device auto`` uses ``cuda:LOCAL_RANK`` with NCCL when CUDA is available, else the
    CPU with gloo; ``--device cpu`` forces gloo; ``--device cuda[:N]`` always means
    ``cuda:LOCAL_RANK`` (the index N is ignored: each rank owns one GPU).
    """
    if not launched():
        return None
    if not tdist.is_available():
        raise DpcliError("this PyTorch build has no torch.distributed; run without torchrun")
    try:
        world_size = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise DpcliError("WORLD_SIZE/RANK/LOCAL_RANK must be integers (set by torchrun)") from None
    name = (device_name or "auto").lower()
    if name == "auto":
        use_cuda = torch.cuda.is_available()
    elif name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DpcliError("--device cuda was requested but no CUDA device is available")
        use_cuda = True
    elif name == "cpu":
        use_cuda = False
    else:
        raise DpcliError(f"unknown --device {name!r}; use auto, cpu or cuda")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DpcliError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                "lower --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not tdist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": device} if use_cuda else {}
        try:
            tdist.init_process_group(
                "nccl" if use_cuda else "gloo", rank=rank, world_size=world_size, timeout=_timeout(), **kwargs
            )
        except (RuntimeError, ValueError) as exc:  # no MASTER_ADDR/PORT, unreachable peer, store timeout
            raise DpcliError(f"cannot join the torchrun process group (rank {rank} of {world_size}): {exc}") from None
    ctx = Distributed(rank, world_size, local_rank, device)
    atexit.register(ctx.close)  # also when the command fails; close() is idempotent
    return ctx


__all__ = ["Distributed", "from_env", "launched"]
