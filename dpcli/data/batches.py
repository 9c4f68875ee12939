"""Batched iteration over a split, with augmentation done as tensor ops on the target device.

An in-memory split is indexed directly (and uploaded once to an accelerator when it fits); a
streamed split (:class:`dpcli.data.base.DiskImages`) is read by ``torch.utils.data.DataLoader``
worker processes, one whole batch per task, with pinned memory and prefetch.  Both produce the same
uint8 batches, and augmentation happens afterwards in this process, so a seed gives identical
batches whichever way the images are stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dpcli.data.base import DiskImages, Split
from dpcli.errors import DpcliError

__all__ = ["augment_pad", "iterate_batches", "loader_workers", "random_resized_crop_params", "resized_crop"]

# Splits up to this size are uploaded once to an accelerator and indexed there.
_DEVICE_CACHE_MAX_BYTES = 4 << 30
# torchvision's RandomResizedCrop defaults.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_TRIES = 10


def augment_pad(image_size: int) -> int:
    """Zero padding of the random crop: 4 pixels, scaled down for tiny images."""
    return min(4, max(1, image_size // 8))


INFERENCE_BATCH = 1024
_INFERENCE_INPUT_BYTES = {"cpu": 16 << 20, "cuda": 256 << 20}


def inference_batch(split: Split, device: torch.device | str) -> int:
    """Rows per un-augmented forward pass (evaluation, features, scores).

    1,024, or fewer where the float32 input alone would pass 16 MiB on a CPU (256 MiB on a GPU): a
    batch's activations are host memory on a CPU (1,024 images of 64 px made a 1 GiB-bounded train
    stage run out of memory), and CPU throughput stops growing far below that size anyway.
    """
    per_row = 4 * split.images.shape[3] * split.out_size**2
    budget = _INFERENCE_INPUT_BYTES["cuda" if torch.device(device).type == "cuda" else "cpu"]
    return int(max(32, min(INFERENCE_BATCH, budget // per_row)))


_TRIM_EVERY_BYTES = 64 << 20


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Between the stages of one process: collect, then hand glibc's freed heap back to the OS.

    ``dpcli prune DATASET`` trains, computes S and prunes in one process, so each stage's freed temporaries
    would otherwise stay in glibc's heap into the next.  (On 200,000 images under 1 GiB this alone did not
    keep the one-process prune from being killed; see docs/datasets.md.)  A no-op where there is no glibc.
    """
    import gc

    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def heap_trimmer(every: int | None = None) -> Callable[[int], None]:
    """``trim(nbytes)``: after every ``every`` bytes of input, hand glibc's freed heap pages back to the OS.

    glibc raises its mmap threshold to the largest block freed (up to 32 MiB), so a streamed epoch's
    batch-sized temporaries then come from the heap, whose fragments it keeps: the main process of a
    200,000-image epoch at 64 px grew by about 0.7 GB and a 1 GiB-bounded train stage was killed.
    ``malloc_trim(0)`` every 16 batches held it to about 0.15 GB at 12 % of the loading speed; pinning
    the threshold instead halved the speed.  A no-op where there is no glibc.
    """
    trim = _malloc_trim()
    if trim is None:
        return lambda nbytes: None
    every = every or _TRIM_EVERY_BYTES
    seen = [0]

    def step(nbytes: int) -> None:
        seen[0] += nbytes
        if seen[0] >= every:
            seen[0] = 0
            trim(0)

    return step


def loader_workers() -> int:
    """DataLoader worker processes for streamed splits: ``$DPCLI_LOADER_WORKERS``, else min(4, CPUs)."""
    from dpcli.env import loader_workers as from_env

    return from_env()


def _device_tensors(split: Split, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """Whole in-memory split uploaded once to an accelerator (cached on the split), else None."""
    if device.type == "cpu" or split.streamed or split.images.nbytes > _DEVICE_CACHE_MAX_BYTES:
        return None
    cache = split.__dict__.get("_device_cache")
    if cache is None:
        cache = {}
        object.__setattr__(split, "_device_cache", cache)
    key = str(device)
    if key not in cache:
        cache[key] = (
            torch.from_numpy(np.array(split.images)).to(device),
            torch.from_numpy(split.labels.copy()).to(device),
        )
    return cache[key]


class _BatchReader(torch.utils.data.Dataset):
    """Task k = the uint8 images and labels of batch k (read in a worker process)."""

    def __init__(
        self, images: DiskImages, labels: np.ndarray, order: np.ndarray, batch_size: int, part: "Part | None" = None
    ) -> None:
        self.images, self.labels, self.order, self.batch_size, self.part = images, labels, order, batch_size, part

    def __len__(self) -> int:
        return math.ceil(self.order.size / self.batch_size)

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor]:
        lo, hi = batch_rows(k * self.batch_size, self.batch_size, self.order.size, self.part)
        sel = self.order[lo:hi]
        return torch.from_numpy(self.images.read(sel)), torch.from_numpy(self.labels[sel])


Part = Callable[[int], tuple[int, int]]


def batch_rows(start: int, batch_size: int, n: int, part: Part | None) -> tuple[int, int]:
    """Positions ``[lo, hi)`` in the epoch order that the batch at ``start`` reads: all of it, or
    one torchrun rank's slice ``part(B)`` of it (so no rank reads or decodes another's samples)."""
    stop = min(start + batch_size, n)
    if part is None:
        return start, stop
    lo, hi = part(stop - start)
    return start + lo, start + hi


def _raw_batches(
    split: Split,
    order: np.ndarray,
    batch_size: int,
    device: torch.device,
    workers: int | None,
    part: Part | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """uint8 NHWC images and labels of each batch of ``order`` (this rank's rows of it), on ``device``."""
    resident = _device_tensors(split, device)
    if resident is not None:
        order_dev = torch.from_numpy(order).to(device)
        for start in range(0, order.size, batch_size):
            lo, hi = batch_rows(start, batch_size, order.size, part)
            idx = order_dev[lo:hi]
            yield resident[0].index_select(0, idx), resident[1].index_select(0, idx)
        return
    images = split.images
    if not isinstance(images, DiskImages):  # not split.streamed, spelled so that the type narrows
        for start in range(0, order.size, batch_size):
            lo, hi = batch_rows(start, batch_size, order.size, part)
            sel = order[lo:hi]
            yield torch.from_numpy(images[sel]).to(device), torch.from_numpy(split.labels[sel]).to(device)
        return
    n_workers = loader_workers() if workers is None else workers
    reader = _BatchReader(images, split.labels, order, batch_size, part)
    loader = torch.utils.data.DataLoader(
        reader,
        batch_size=None,
        shuffle=False,
        num_workers=n_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if n_workers else None,
        multiprocessing_context="fork"
        if n_workers and "fork" in torch.multiprocessing.get_all_start_methods()
        else None,
    )
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str,
    shuffle: bool,
    augment: bool,
    generator: torch.Generator | None = None,
    indices: np.ndarray | None = None,
    workers: int | None = None,
    part: Callable[[int], tuple[int, int]] | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """One epoch over ``split`` (or over ``indices`` of it), in batches.

    ``part(B) -> (lo, hi)`` (one torchrun rank's slice of a global batch of ``B``): the randomness is
    drawn for the whole global batch as usual, but only rows ``[lo, hi)`` are read, decoded and
    augmented, and only they are yielded as ``x`` and ``y``; ``idx`` stays the global batch's indices.

    Yields ``(x, y, idx)``: ``x`` float32 ``(B, C, S, S)`` contiguous on ``device``,
    ``(pixel / 255 - mean) / std`` with ``S = split.out_size``; ``y`` int64 ``(B,)`` on ``device``;
    ``idx`` int64 ``(B,)`` **on the CPU**, the dataset indices of the rows.  The last batch may be
    smaller.  Without ``shuffle`` the order is that of ``indices`` (default ``0..N-1``).
    ``workers``: DataLoader processes for a streamed split [default: :func:`loader_workers`].

    Randomness comes only from ``generator`` (the global torch RNG if None) and is drawn on the
    generator's device, so a seed gives the same batches on every device and storage.  Draw order:
    ``torch.randperm(n)`` once per epoch if ``shuffle``; then per batch, if ``augment``:

    * ``split.crop is None`` (same-size images kept at their size): ``offsets = randint(0, 2*pad+1,
      (B, 2))`` and ``flips = randint(0, 2, (B,))``; zero-pad by ``pad = augment_pad(H)``, crop back to
      ``H x W`` at the offsets, mirror where ``flips == 1``.
    * ``split.crop = N`` (``--image-size``): ``u = rand(B, 10, 2)``, ``pos = rand(B, 2)``,
      ``flips = randint(0, 2, (B,))``; torchvision's RandomResizedCrop(N) box (scale 0.08-1, ratio
      3/4-4/3, first of 10 tries that fits, else the whole image), bilinear resize to N (as
      ``F.interpolate(align_corners=False)``), then the flip.  Without ``augment`` the center N x N.
    """
    device = torch.device(device)
    if batch_size < 1:
        raise DpcliError(f"Batch size must be at least 1, got {batch_size}.")
    n_total = len(split)
    if indices is None:
        order = np.arange(n_total, dtype=np.int64)
    else:
        order = np.asarray(indices)
        if order.dtype == bool:
            raise ValueError("indices must be integer dataset indices, not a boolean mask")
        order = order.astype(np.int64, copy=False).reshape(-1)
        if order.size and (order.min() < 0 or order.max() >= n_total):
            raise ValueError(f"indices out of range for a split of {n_total} samples")
    _, h, w, c = split.images.shape
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std need {c} values (one per channel), got {len(mean)}/{len(std)}")
    if order.size == 0:
        return
    gdev = generator.device if generator is not None else torch.device("cpu")
    if shuffle:
        perm = torch.randperm(order.size, generator=generator, device=gdev).cpu().numpy()
        order = order[perm]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, c, 1, 1)
    pad = augment_pad(h)
    order_t = torch.from_numpy(order)
    trim = heap_trimmer() if split.streamed else None  # in memory, the data fit: keep the fastest path

    for start, (xb, yb) in zip(
        range(0, order.size, batch_size), _raw_batches(split, order, batch_size, device, workers, part)
    ):
        if trim is not None:
            trim(xb.numel() * xb.element_size())
        idx = order_t[start : start + batch_size]
        b = idx.numel()
        lo, hi = batch_rows(start, batch_size, order.size, part)
        mine = slice(lo - start, hi - start)  # the global batch's random draws, this rank's rows of them
        if split.crop is None:
            if augment:
                offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=gdev)[mine].to(device)
                flips = torch.randint(0, 2, (b,), generator=generator, device=gdev)[mine].to(device).bool()
                xb = _crop_flip(xb, offsets, flips, pad)
        elif augment:
            box = random_resized_crop_params(b, h, w, generator, gdev)
            flips = torch.randint(0, 2, (b,), generator=generator, device=gdev).bool()[mine]
            tops, lefts, heights, widths = (t[mine].to(device) for t in box)
            x = resized_crop(xb, tops, lefts, heights, widths, split.crop, flips.to(device))
            yield x.div_(255.0).sub_(mean_t).div_(std_t), yb, idx.clone()
            continue
        else:
            top, left = int(round((h - split.crop) / 2.0)), int(round((w - split.crop) / 2.0))
            xb = xb[:, top : top + split.crop, left : left + split.crop]
        x = xb.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        x.div_(255.0).sub_(mean_t).div_(std_t)
        yield x, yb, idx.clone()


def _crop_flip(xb: Tensor, offsets: Tensor, flips: Tensor, pad: int) -> Tensor:
    """Batched random crop (from the zero-padded image) + horizontal flip, NHWC uint8."""
    b, h, w, _ = xb.shape
    padded = F.pad(xb, (0, 0, pad, pad, pad, pad))
    ar_h = torch.arange(h, device=xb.device)
    ar_w = torch.arange(w, device=xb.device)
    rows = offsets[:, :1] + ar_h  # (B, H)
    cols = offsets[:, 1:] + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)  # (B, W)
    bidx = torch.arange(b, device=xb.device)[:, None, None]
    return padded[bidx, rows[:, :, None], cols[:, None, :]]


def random_resized_crop_params(
    b: int, h: int, w: int, generator: torch.Generator | None, gdev: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's RandomResizedCrop.get_params for ``b`` images at once: ``(top, left, height, width)``.

    Draws ``u = rand(b, 10, 2)`` (scale, log-ratio per try) then ``pos = rand(b, 2)`` (top, left).
    """
    u = torch.rand(b, RRC_TRIES, 2, generator=generator, device=gdev, dtype=torch.float64)
    pos = torch.rand(b, 2, generator=generator, device=gdev, dtype=torch.float64)
    area = float(h * w) * (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u[..., 0])
    lo, hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    ratio = torch.exp(lo + (hi - lo) * u[..., 1])
    cw = torch.round(torch.sqrt(area * ratio))
    ch = torch.round(torch.sqrt(area / ratio))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = ok.to(torch.int8).argmax(1, keepdim=True)
    found = ok.any(1)
    # fallback (no try fits): the whole image clipped to the ratio range, centered
    in_ratio = w / h
    if in_ratio < RRC_RATIO[0]:
        fw, fh = w, int(round(w / RRC_RATIO[0]))
    elif in_ratio > RRC_RATIO[1]:
        fh, fw = h, int(round(h * RRC_RATIO[1]))
    else:
        fw, fh = w, h
    cw = torch.where(found, cw.gather(1, first)[:, 0], torch.full_like(cw[:, 0], fw)).long()
    ch = torch.where(found, ch.gather(1, first)[:, 0], torch.full_like(ch[:, 0], fh)).long()
    top = torch.where(found, torch.floor(pos[:, 0] * (h - ch + 1)).long(), torch.full_like(ch, (h - fh) // 2))
    left = torch.where(found, torch.floor(pos[:, 1] * (w - cw + 1)).long(), torch.full_like(cw, (w - fw) // 2))
    return top, left, ch, cw


def _axis(start: Tensor, length: Tensor, size: int, flip: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image source indices (lo, hi) and weights of a bilinear resize of ``[start, start+length)`` to ``size``."""
    scale = length.to(torch.float32)[:, None] / size
    src = ((torch.arange(size, device=start.device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0)
    lo = src.floor().long()
    lo = torch.minimum(lo, length[:, None] - 1)
    hi = torch.minimum(lo + 1, length[:, None] - 1)
    frac = src - lo.to(torch.float32)
    if flip is not None:
        lo = torch.where(flip[:, None], lo.flip(1), lo)
        hi = torch.where(flip[:, None], hi.flip(1), hi)
        frac = torch.where(flip[:, None], frac.flip(1), frac)
    return lo + start[:, None], hi + start[:, None], frac


def _weights(lo: Tensor, hi: Tensor, frac: Tensor, length: int) -> Tensor:
    """``(B, size, length)`` interpolation matrices: row r has 1 - frac at lo and frac at hi."""
    w = torch.zeros(*lo.shape, length, device=lo.device, dtype=torch.float32)
    w.scatter_add_(2, lo[..., None], (1 - frac)[..., None])
    w.scatter_add_(2, hi[..., None], frac[..., None])
    return w


def resized_crop(
    xb: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor, size: int, flips: Tensor | None = None
) -> Tensor:
    """Crop box b of image b and resize it bilinearly to ``size x size`` (then mirror where ``flips``).

    NHWC uint8 in, NCHW float32 (0..255) out; per image equal to ``F.interpolate(crop, size,
    mode="bilinear", align_corners=False)`` on the crop.  Bilinear resizing is separable, so the
    whole batch is two batched matrix products with per-image interpolation matrices (measured
    faster on CPU than gathering the four neighbours, and it runs as BLAS / cuBLAS).
    """
    _, h, w, _ = xb.shape
    wy = _weights(*_axis(top, height, size, None), h)  # (B, S, H)
    wx = _weights(*_axis(left, width, size, flips), w)  # (B, S, W)
    img = xb.permute(0, 3, 1, 2).to(torch.float32)  # (B, C, H, W)
    rows = torch.einsum("bsh,bchw->bcsw", wy, img)
    return torch.einsum("bcsw,btw->bcst", rows, wx).contiguous()
