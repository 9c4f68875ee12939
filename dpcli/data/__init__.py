"""Datasets: sources (digits, CIFAR, image folders) in :mod:`dpcli.data.sources`, containers in
:mod:`dpcli.data.base`, the on-disk image cache in :mod:`dpcli.data.cache`, and the batches every
stage reads in :mod:`dpcli.data.batches`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dpcli.data.sources.digits import DigitsSplit


def digits_split() -> DigitsSplit:
    """The exact train/test arrays of the ``digits`` dataset (:func:`dpcli.data.sources.digits.digits_split`)."""
    from dpcli.data.sources.digits import digits_split as split

    return split()
