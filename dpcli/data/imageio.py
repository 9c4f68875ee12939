"""Reading one image file: probe its header, decode it to the cache's storage format.

Runs in cache-building worker processes.  Results are tagged tuples so that a worker never raises:
``("ok", value)``, ``("skip", reason)`` for a file that is not a readable image (corrupt,
truncated, not an image at all, a broken link, not a regular file: unreadable, it keeps its index and is
never kept), ``("fail", reason)`` for a file that cannot be opened for another reason (permissions: the
user must fix it).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import PIL.Image

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
EXIF_ORIENTATION = 0x0112
_TRANSPOSED = frozenset({5, 6, 7, 8})  # orientations that swap width and height

Tagged = tuple[str, Any]
# (stored side, crop) of the centered square an image is resized to, and the resampling when not bilinear
Square = tuple[int, int] | tuple[int, int, str]


def _open(path: str):
    """(PIL image, file) or a tagged failure; the caller closes both."""
    from PIL import Image

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open below
            return None, ("skip", "not a regular file")
        fh = open(path, "rb")
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):  # listed by name, as ImageFolder lists it: a broken link
            return None, ("skip", "dangling or looping symbolic link")
        return None, ("fail", f"{type(exc).__name__}: {exc.strerror or exc}")
    try:
        return Image.open(fh), fh
    except Exception as exc:  # UnidentifiedImageError and friends: not an image
        fh.close()
        return None, ("skip", f"not an image ({type(exc).__name__})")


def probe(path: str) -> Tagged:
    """``("ok", (width, height, gray))`` from the header, after the EXIF rotation."""
    im, fh = _open(path)
    if im is None:
        return fh
    try:
        with fh, im:
            w, h = im.size
            try:
                orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            except Exception:
                orientation = 1
            if orientation in _TRANSPOSED:
                w, h = h, w
            return "ok", (int(w), int(h), im.mode in GRAY_MODES)
    except Exception as exc:
        return "skip", f"unreadable header ({type(exc).__name__}: {exc})"


def center_square_box(w: int, h: int, side: int, crop: int) -> tuple[int, int, int, int]:
    """``(resized width, resized height, left, top)`` of the stored square of a ``w x h`` image
    (shared by the PIL path and the batched JPEG path, so both cut the same pixels)."""
    if (w <= h and w == side) or (h <= w and h == side):
        rw, rh = w, h
    elif w <= h:
        rw, rh = side, int(side * h / w)
    else:
        rw, rh = int(side * w / h), side
    inner = int(round((side - crop) / 2.0))
    return rw, rh, int(round((rw - crop) / 2.0)) - inner, int(round((rh - crop) / 2.0)) - inner


def resize_center_square(im: PIL.Image.Image, side: int, crop: int, interpolation: str = "bilinear") -> PIL.Image.Image:
    """Resize the shorter side to ``side`` (torchvision's Resize), then cut the ``side x side`` square whose
    central ``crop x crop`` (offset ``round((side - crop) / 2)``) is exactly torchvision's CenterCrop(crop)."""
    from PIL import Image

    modes = Image.Resampling
    resample = {"bilinear": modes.BILINEAR, "bicubic": modes.BICUBIC, "nearest": modes.NEAREST}[interpolation]
    rw, rh, left, top = center_square_box(*im.size, side, crop)
    if (rw, rh) != im.size:
        im = im.resize((rw, rh), resample)
    return im.crop((left, top, left + side, top + side))


def decode(path: str, size: Square | None, gray: bool) -> Tagged:
    """``("ok", uint8 (H, W, C))``: EXIF-rotated, converted to L (``gray``) or RGB, and when ``side``
    is ``(side, crop)`` resized so the shorter side is ``side`` and cut to a centered square."""
    from PIL import ImageOps

    im, fh = _open(path)
    if im is None:
        return fh
    try:
        with fh, im:
            im.load()
            im = ImageOps.exif_transpose(im)
            im = im.convert("L" if gray else "RGB")
            if size is not None:
                im = resize_center_square(im, *size)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # truncated / corrupt data
        return "skip", f"corrupt or truncated image ({type(exc).__name__}: {exc})"
    return "ok", arr[..., None] if arr.ndim == 2 else arr


def probe_many(paths: list[str]) -> list[Tagged]:
    return [probe(p) for p in paths]


def decode_many(job: tuple[list[str], Square | None, bool]) -> list[Tagged]:
    paths, size, gray = job
    return [decode(p, size, gray) for p in paths]
