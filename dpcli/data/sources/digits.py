"""scikit-learn's 8x8 handwritten digits: shipped inside scikit-learn, fully offline.

Pixel values 0..16 are scaled to uint8 0..255 as ``(v * 255 + 8) // 16`` (round half up), shape
``(N, 8, 8, 1)``.  The train/test split is FIXED and identical for everyone: per class, samples are
ordered by ``sha256(b"dpcli-digits-split:<original index>")`` and the first ``round(0.2 * n_class)``
go to test (359 test / 1438 train); both splits keep sklearn's order.  ``augment`` is False
(flipping digits is wrong).
"""

from __future__ import annotations

import hashlib

import numpy as np

from dpcli.data.base import Dataset, DatasetSource, LoadRequest, Split, make_dataset
from dpcli.errors import DpcliError

DIGITS_TEST_FRACTION = 0.2
_SPLIT_SALT = b"dpcli-digits-split:"


class Digits(DatasetSource):
    name = "digits"
    names = ("digits",)
    help = "scikit-learn's 8x8 digits (offline, 1438 train / 359 test)"

    def load(self, spec: str, request: LoadRequest) -> Dataset:
        if request.image_size is not None:
            raise DpcliError("--image-size applies to imagefolder: datasets, not digits")
        from sklearn.datasets import load_digits

        bunch = load_digits()
        raw = np.asarray(bunch.images)  # float 0..16, (1797, 8, 8)
        images = ((raw.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)[..., None]
        labels = np.asarray(bunch.target, dtype=np.int64)
        test_mask = np.zeros(len(labels), dtype=bool)
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            order = sorted(members, key=lambda i: hashlib.sha256(_SPLIT_SALT + str(int(i)).encode()).digest())
            n_test = int(len(members) * DIGITS_TEST_FRACTION + 0.5)
            test_mask[np.asarray(order[:n_test], dtype=np.int64)] = True
        train = Split(images[~test_mask], labels[~test_mask])
        test = Split(images[test_mask], labels[test_mask])
        return make_dataset("digits", train, test, tuple(str(c) for c in range(10)), augment=False)
