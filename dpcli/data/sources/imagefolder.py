"""``imagefolder:PATH``: a folder of images in one of the layouts of :mod:`dpcli.data.layouts`.

Every file is decoded once into the on-disk cache (:mod:`dpcli.data.cache`) under
``data_root/imagefolder-cache/``: EXIF rotation applied, converted to L when *all* images are
grayscale and to RGB otherwise (RGBA/palette images lose alpha, as in torchvision's loader).
Without ``image_size`` every image must share one size, kept as is; with ``image_size=N`` each
image is stored as its center square resized to ``round(N / 0.875)`` (the shorter side resized,
then center-cropped) and the model sees N x N crops of it.

The cache key hashes the absolute path, the layout, ``image_size`` and every file's relative path,
label, size and mtime, so a changed file list rebuilds it.  The split is held in memory when the
decoded data fit ``$DPCLI_MEMORY_BUDGET`` (default 1 GiB), and streamed from the cache otherwise.
Files that are not readable images are skipped with a warning naming them, and recorded in
``Dataset.skipped`` (and the cache); they keep their index (``Dataset.space``: the user's index of each
row).  Files in an image format torchvision's ImageFolder does not read
(``.gif``, ``.heic``, ...) are left out with a warning counting them.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from dpcli.data import cache, layouts
from dpcli.data.base import Dataset, DatasetSource, LoadRequest
from dpcli.data.samples import SampleSpace
from dpcli.errors import DpcliError

PREFIX = "imagefolder"
_SHOWN_SKIPS = 10


def memory_budget() -> int:
    """Bytes of decoded images held in memory at most: ``$DPCLI_MEMORY_BUDGET`` (e.g. 512M, 2G)."""
    from dpcli.env import memory_budget as from_env

    return from_env()


def _cache_key(
    root: Path, layout: layouts.Layout, image_size: int | None, resize: tuple[int, str] | None = None
) -> str:
    prefix = len(str(root)) + 1
    h = hashlib.sha256()
    h.update(f"dpcli-imagefolder-v{cache.CACHE_VERSION}\0{root}\0{layout.kind}\0{image_size}\0".encode())
    if resize is not None:  # absent otherwise: caches built before model preprocessing keep their keys
        h.update(f"resize:{resize}\0".encode())
    for split, items in (("train", layout.train), ("test", layout.test)):
        h.update(f"[{split}]\0".encode())
        rows = []
        for p, label in items:
            st = os.stat(p) if os.path.exists(p) else os.lstat(p)  # a dangling link is listed too
            rows.append(f"{p[prefix:]}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\0")
        h.update("".join(rows).encode())
    return h.hexdigest()[:32]


def _warn_skipped(skipped: tuple[tuple[str, str], ...], cache_path: Path) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{p} ({why})" for p, why in skipped[:_SHOWN_SKIPS])
    more = f"; and {len(skipped) - _SHOWN_SKIPS} more" if len(skipped) > _SHOWN_SKIPS else ""
    warnings.warn(
        f"dpcli: {len(skipped)} unreadable image file(s) keep their index and are never kept (every "
        f"mask prunes them; recorded in {cache_path}): {shown}{more}",
        stacklevel=2,
    )


def _warn_passed_over(files: tuple[str, ...]) -> None:
    if not files:
        return
    kinds = Counter(os.path.splitext(f)[1].lower() for f in files)
    counts = ", ".join(f"{n} {ext}" for ext, n in sorted(kinds.items()))
    warnings.warn(
        f"dpcli: left out {len(files)} image file(s) in a format dpcli does not read ({counts}; it reads "
        f"{' '.join(layouts.IMG_EXTENSIONS)}), e.g. {files[0]}; convert them to include them",
        stacklevel=2,
    )


class ImageFolder(DatasetSource):
    name = PREFIX
    prefix = PREFIX
    help = "imagefolder:PATH - train/ + test/ or val/ class folders, TinyImageNet or ImageNet layouts"

    def load(self, spec: str, request: LoadRequest) -> Dataset:
        path = spec[len(PREFIX) + 1 :]
        if not path:
            raise DpcliError("imagefolder: needs a path, e.g. imagefolder:/data/mydataset.")
        root = Path(path).expanduser().resolve()
        layout = layouts.scan(root)
        _warn_passed_over(layout.passed_over)
        weights_input = request.input
        image_size = weights_input.crop if weights_input is not None else request.image_size
        resize = (weights_input.resize, weights_input.interpolation) if weights_input is not None else None
        key = _cache_key(root, layout, image_size, resize)
        cache_path = request.data_root / "imagefolder-cache" / f"{key}.h5"
        files = [p for p, _ in layout.train] + [p for p, _ in layout.test]
        labels = np.array([lab for _, lab in layout.train] + [lab for _, lab in layout.test], dtype=np.int64)
        try:
            info = cache.open_or_build(
                cache_path, files, labels, len(layout.train), image_size, request.progress, resize=resize
            )
        except OSError as exc:
            raise DpcliError(
                f"cannot write the image cache in {cache_path.parent} ({exc.strerror or exc}); "
                "pass --data-root or set DPCLI_DATA to a writable folder"
            ) from None
        _warn_skipped(info.skipped, cache_path)
        in_memory = not request.stream if request.stream is not None else info.nbytes <= memory_budget()
        name = f"{PREFIX}:{root}"
        space = SampleSpace(info.train_rows, len(layout.train), name, layout.listing())  # train files come first
        ds = Dataset(
            name=name,
            train=info.split("train", in_memory),
            test=info.split("test", in_memory),
            classes=layout.classes,
            mean=info.mean,
            std=info.std,
            augment=True,
            skipped=info.skipped,
            space=space,
        )
        object.__setattr__(ds, "_fingerprint", info.fingerprint)  # computed over the same bytes at build time
        return ds
