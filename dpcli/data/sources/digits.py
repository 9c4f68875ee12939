"""scikit-learn's 8x8 handwritten digits: shipped inside scikit-learn, fully offline.

Pixel values 0..16 are scaled to uint8 0..255 as ``(v * 255 + 8) // 16`` (round half up), shape
``(N, 8, 8, 1)``.  The train/test split is FIXED and identical for everyone: per class, samples are
ordered by ``sha256(b"dpcli-digits-split:<original index>")`` and the first ``round(0.2 * n_class)``
go to test (359 test / 1438 train); both splits keep sklearn's order.  ``augment`` is False
(flipping digits is wrong).  :func:`digits_split` returns these arrays (``dpcli.data.digits_split``).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np

from dpcli.data.base import Dataset, DatasetSource, LoadRequest, Split, make_dataset
from dpcli.errors import DpcliError

DIGITS_TEST_FRACTION = 0.2
_SPLIT_SALT = b"dpcli-digits-split:"


class DigitsSplit(NamedTuple):
    """The digits arrays dpcli trains and tests on, and where each row comes from in ``load_digits()``."""

    x_train: np.ndarray  # (1438, 8, 8, 1) uint8, pixel v in 0..16 stored as (v * 255 + 8) // 16
    y_train: np.ndarray  # (1438,) int64 class 0..9
    x_test: np.ndarray  # (359, 8, 8, 1) uint8
    y_test: np.ndarray  # (359,) int64
    train_index: np.ndarray  # (1438,) rows of load_digits() in x_train's order (ascending)
    test_index: np.ndarray  # (359,) rows of load_digits() in x_test's order (ascending)


def digits_split() -> DigitsSplit:
    """The fixed split of scikit-learn's digits that the dataset ``digits`` is (index i of a mask or of
    ``--indices-out`` is row i of ``x_train``): per class, rows ordered by
    ``sha256(b"dpcli-digits-split:" + str(row).encode())``, the first ``round(0.2 * class size)`` to test."""
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
    train, test = np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
    return DigitsSplit(images[train], labels[train], images[test], labels[test], train, test)


class Digits(DatasetSource):
    name = "digits"
    names = ("digits",)
    help = "scikit-learn's 8x8 digits (offline, 1438 train / 359 test)"

    def load(self, spec: str, request: LoadRequest) -> Dataset:
        if request.image_size is not None:
            raise DpcliError("--image-size applies to imagefolder: datasets, not digits")
        split = digits_split()
        train = Split(split.x_train, split.y_train)
        test = Split(split.x_test, split.y_test)
        return make_dataset("digits", train, test, tuple(str(c) for c in range(10)), augment=False)
