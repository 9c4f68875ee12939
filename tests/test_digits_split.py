"""`dpcli.data.digits_split()`: the arrays the `digits` dataset is, rebuilt here from scikit-learn alone."""

from __future__ import annotations

import hashlib

import numpy as np
from sklearn.datasets import load_digits

from dpcli.data import digits_split
from dpcli.data.sources import load_dataset


def _from_sklearn() -> tuple[np.ndarray, np.ndarray]:
    """The documented recipe, written out without dpcli: per class, rows by sha256 of the salted row number,
    the first 20 % (rounded half up) to test."""
    y = load_digits().target
    test = []
    for c in range(10):
        rows = sorted(
            np.flatnonzero(y == c).tolist(),
            key=lambda i: hashlib.sha256(f"dpcli-digits-split:{i}".encode()).hexdigest(),
        )
        test += rows[: int(len(rows) * 0.2 + 0.5)]
    test = np.sort(np.array(test))
    return np.setdiff1d(np.arange(len(y)), test), test


def test_the_split_is_what_the_dataset_loads():
    split, ds = digits_split(), load_dataset("digits")
    assert np.array_equal(split.x_train, ds.train.images) and np.array_equal(split.y_train, ds.train.labels)
    assert np.array_equal(split.x_test, ds.test.images) and np.array_equal(split.y_test, ds.test.labels)


def test_the_split_can_be_rebuilt_from_sklearn_alone():
    split = digits_split()
    train, test = _from_sklearn()
    assert np.array_equal(split.train_index, train) and np.array_equal(split.test_index, test)
    assert (len(train), len(test)) == (1438, 359)
    bunch = load_digits()
    pixels = np.rint(bunch.images * 255 / 16 + 1e-9).astype(np.uint8)[..., None]  # 0..16 -> 0..255, half up
    assert np.array_equal(split.x_train, pixels[train]) and np.array_equal(split.x_test, pixels[test])
    assert np.array_equal(split.y_train, bunch.target[train]) and np.array_equal(split.y_test, bunch.target[test])
