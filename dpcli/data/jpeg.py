"""Batched JPEG decoding with ``torchvision.io.decode_jpeg``: on the GPU (nvjpeg) when one is used.

Building the image cache is the one place where dpcli holds JPEG bytes; everything after it reads
decoded pixels.  With a CUDA device, a block of JPEG files is decoded in one ``decode_jpeg(...,
device="cuda")`` call, then each image is EXIF-rotated, resized and center-cut on the GPU and only
the stored rows come back to the host.  The same code runs on the CPU (``device="cpu"``), which is
how it is tested against the PIL path of :mod:`dpcli.data.imageio`: equal within JPEG decoder
tolerance (the IDCT and chroma upsampling of libjpeg-turbo and nvjpeg differ by a few levels).

Anything this path does not handle the way PIL does goes to :func:`dpcli.data.imageio.decode`
file by file, so bad input is classified exactly as on the PIL path: files that are not baseline /
progressive JPEGs with 1 or 3 components (PNG, CMYK, ...), files without the end-of-image marker
(truncated), and a batch that nvjpeg refuses (corrupt data) is retried image by image.

The switch is ``$DPCLI_JPEG_DECODE``: ``auto`` (default: the GPU when this process can use one and
it is expected to beat the PIL worker processes, see :func:`decoder`), ``cuda`` or ``pil``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np

from dpcli.data import imageio
from dpcli.errors import DpcliError

CHOICES = ("auto", "cuda", "pil")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
GPU_PER_S = 3000.0
PIL_PER_WORKER_AT_73 = 800.0
ENV = "DPCLI_JPEG_DECODE"
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
# Start-of-frame markers of the JPEG processes libjpeg-turbo and nvjpeg both decode (baseline,
# extended, progressive; Huffman coded).  Others (lossless, arithmetic) take the PIL path.
_SOF = frozenset({0xC0, 0xC1, 0xC2})


def gpu_beats_pil(workers: int, side: int | None) -> bool:
    """Whether batched nvjpeg decoding beats ``workers`` PIL processes at a stored side of ``side``.

    From one measurement (docs/datasets.md, H200 + 16 cores, 64-400 px JPEGs): nvjpeg ~3,000
    images/s whatever the side, one PIL process ~800 images/s at 73 px and ~105 at 256 px (the
    resize dominates, growing as side^1.5).  Native size (no ``--image-size``) counts as 256 px.
    """
    s = 256 if side is None else side
    return workers * PIL_PER_WORKER_AT_73 * (73 / s) ** 1.5 < GPU_PER_S


def decoder(files: Sequence[str] = (), env: str | None = None, workers: int = 1, side: int | None = None) -> str:
    """``"cuda"`` or ``"pil"`` from ``$DPCLI_JPEG_DECODE``; one line for a bad value or a missing GPU.

    ``auto`` takes the GPU only when this process can use one, at least half of ``files`` are
    JPEGs by extension (other files are decoded by PIL in this one process on that path, which
    would be slower than PIL's parallel workers), and :func:`gpu_beats_pil` for ``workers`` PIL
    processes at the stored ``side``.
    """
    from dpcli.env import jpeg_decode

    raw = jpeg_decode() if env is None else env.strip().lower() or "auto"
    if raw not in CHOICES:
        raise DpcliError(f"{ENV} must be one of {', '.join(CHOICES)}, got {raw!r}")
    if raw == "pil":
        return "pil"
    available = _cuda_available()
    if raw == "cuda":
        if not available:
            raise DpcliError(f"{ENV}=cuda but no CUDA device is usable here; unset it or set {ENV}=pil")
        return "cuda"
    n_jpeg = sum(1 for f in files if f.lower().endswith(JPEG_EXTENSIONS))
    use = available and 2 * n_jpeg >= len(files) > 0 and gpu_beats_pil(workers, side)
    return "cuda" if use else "pil"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def jpeg_components(data: bytes) -> int | None:
    """Colour components of a Huffman-coded JPEG (from its start-of-frame header), else None."""
    if not data.startswith(_SOI):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _SOF or i + 10 > n:
                return None
            return data[i + 9]
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8; 1 when absent or unreadable), read from the header only."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(imageio.EXIF_ORIENTATION, 1))
    except Exception:
        return 1


def apply_orientation(x, orientation: int):
    """``(C, H, W)`` tensor turned upright as ``PIL.ImageOps.exif_transpose`` does."""
    import torch

    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-2, -1)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(x, -1, (-2, -1))
    if orientation == 7:
        return x.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(x, 1, (-2, -1))
    return x


def resize_center_square(x, side: int, crop: int):
    """``(C, H, W)`` uint8 -> the stored ``(side, side, C)`` uint8 square, as
    :func:`dpcli.data.imageio.resize_center_square` cuts it (bilinear, antialiased when shrinking,
    like PIL's BILINEAR)."""
    import torch.nn.functional as F

    _, h, w = x.shape
    rw, rh, left, top = imageio.center_square_box(w, h, side, crop)
    if (rw, rh) != (w, h):
        y = F.interpolate(x[None].float(), size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = y[0].round_().clamp_(0, 255).to(x.dtype)
    return x[:, top : top + side, left : left + side].permute(1, 2, 0)


def decode_many(paths: Sequence[str], size: tuple[int, int] | None, gray: bool, device) -> list[imageio.Tagged]:
    """:func:`dpcli.data.imageio.decode` of every path, with the JPEGs decoded in one batch on ``device``."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list[imageio.Tagged | None] = [None] * len(paths)
    batch: list[int] = []
    datas: list[bytes] = []
    for k, p in enumerate(paths):
        try:
            with open(p, "rb") as fh:
                data = fh.read()
        except OSError:
            continue  # imageio.decode names the error below
        comps = jpeg_components(data)
        if comps in (1, 3) and data.rstrip(b"\0").endswith(_EOI):
            batch.append(k)
            datas.append(data)
    mode = ImageReadMode.GRAY if gray else ImageReadMode.RGB
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    decoded: list = []
    with warnings.catch_warnings():
        # torchvision 0.29 flags its image codecs as deprecated in favour of TorchCodec; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        if tensors:
            try:
                decoded = list(decode_jpeg(tensors, mode=mode, device=device))
            except RuntimeError:  # one bad file fails the batch: retry one by one
                decoded = []
                for t in tensors:
                    try:
                        decoded.append(decode_jpeg(t, mode=mode, device=device))
                    except RuntimeError:
                        decoded.append(None)
    rows = []
    for k, data, img in zip(batch, datas, decoded):
        if img is None:
            continue
        img = apply_orientation(img, exif_orientation(data))
        rows.append((k, resize_center_square(img, *size) if size is not None else img.permute(1, 2, 0)))
    if rows:  # one device-to-host copy when the rows share a shape (--image-size), else one per image
        host = torch.stack([r for _, r in rows]).cpu() if size is not None else [r.cpu() for _, r in rows]
        for (k, _), r in zip(rows, host):
            out[k] = ("ok", np.ascontiguousarray(r.numpy()))
    for k, p in enumerate(paths):
        if out[k] is None:
            out[k] = imageio.decode(p, size, gray)
    return out  # type: ignore[return-value]
