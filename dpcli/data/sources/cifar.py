"""CIFAR-10 and CIFAR-100 through torchvision's loaders (``root=data_root``).

Files are read offline when present and downloaded on first use when ``download=True``.  Small
same-size images: augmentation is crop-with-padding plus flip, and the whole set stays in memory
(on the accelerator when one is used).
"""

from __future__ import annotations

import numpy as np

from dpcli.data.base import Dataset, DatasetSource, LoadRequest, Split, make_dataset, normalize_name
from dpcli.errors import DpcliError


class Cifar(DatasetSource):
    name = "cifar"
    names = ("cifar10", "cifar100")
    help = "CIFAR-10 / CIFAR-100 (torchvision; downloaded on first use)"

    def load(self, spec: str, request: LoadRequest) -> Dataset:
        import torchvision

        if request.image_size is not None:
            raise DpcliError("--image-size applies to imagefolder: datasets, not CIFAR")
        key = normalize_name(spec)
        cls = torchvision.datasets.CIFAR10 if key == "cifar10" else torchvision.datasets.CIFAR100
        pretty = "CIFAR-10" if key == "cifar10" else "CIFAR-100"
        root = request.data_root

        def build(train: bool, allow_download: bool):
            return cls(root=str(root), train=train, download=allow_download)

        try:
            try:
                parts = (build(True, False), build(False, False))
            except Exception:
                if not request.download:
                    raise RuntimeError("download disabled") from None
                root.mkdir(parents=True, exist_ok=True)
                parts = (build(True, True), build(False, False))
        except Exception as exc:  # missing files, no network, corrupt archive, ...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DpcliError(
                f"{pretty} was not found in {root / cls.base_folder} and could not be downloaded ({reason}); "
                f"put the extracted '{cls.base_folder}' folder of {cls.url} under {root} "
                f"(or pass --data-root / set DPCLI_DATA), or use imagefolder:PATH."
            ) from exc
        tr, te = parts
        train = Split(np.asarray(tr.data, dtype=np.uint8), np.asarray(tr.targets, dtype=np.int64))
        test = Split(np.asarray(te.data, dtype=np.uint8), np.asarray(te.targets, dtype=np.int64))
        return make_dataset(key, train, test, tuple(tr.classes), augment=True)
