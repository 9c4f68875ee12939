"""The user's numbering of the training samples, and how dpcli's rows map onto it.

Inside dpcli a split holds only the samples that decoded ("rows"); S, training and the selectors work on
those.  The user numbers every item of the split as torchvision lists it, unreadable files included
(:mod:`dpcli.data.layouts`).  A :class:`SampleSpace` is the map between the two: the user index of every row
and the user's count.  It travels dataset -> influence.h5 -> mask.h5, so every index dpcli writes (``keep``,
``keep_indices``, ``pruned_indices``, ``--indices-out``, ``--paths-out``) is a user index, and an unreadable
file keeps its index and is never kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dpcli.errors import DpcliError

if TYPE_CHECKING:
    import h5py

ROWS = "sample_index"  # dataset: the user index of each row of S (in artifacts)


@dataclass(frozen=True, eq=False)
class SampleSpace:
    """``rows[r]`` is the user index of row ``r`` (strictly increasing); ``total`` the user's count.

    ``source`` names the dataset whose files these are and ``listing`` the train listing's hash
    (:meth:`dpcli.data.layouts.Layout.listing`), for image folders; both are "" where samples have no file names.
    """

    rows: np.ndarray
    total: int
    source: str = ""
    listing: str = ""

    def __post_init__(self) -> None:
        rows = np.ascontiguousarray(self.rows, dtype=np.int64)
        rows.setflags(write=False)
        object.__setattr__(self, "rows", rows)

    @classmethod
    def identity(cls, n: int, source: str = "", listing: str = "") -> "SampleSpace":
        return cls(np.arange(int(n), dtype=np.int64), int(n), source, listing)

    @property
    def n(self) -> int:
        """The rows: samples that decoded."""
        return int(self.rows.shape[0])

    @property
    def unreadable(self) -> np.ndarray:
        """User indices of the items that did not decode (never kept)."""
        present = np.zeros(self.total, dtype=bool)
        present[self.rows] = True
        return np.flatnonzero(~present)

    @property
    def has_files(self) -> bool:
        return bool(self.listing)

    def to_user(self, keep_rows: np.ndarray) -> np.ndarray:
        """A keep mask over rows as one over the user's samples (the unreadable ones False)."""
        keep = np.zeros(self.total, dtype=bool)
        keep[self.rows] = np.asarray(keep_rows, dtype=bool)
        return keep

    def to_rows(self, keep_user: np.ndarray) -> np.ndarray:
        return np.asarray(keep_user, dtype=bool)[self.rows]

    def same_as(self, other: "SampleSpace") -> bool:
        return self.total == other.total and np.array_equal(self.rows, other.rows)

    def first_difference(self, other: "SampleSpace") -> int | None:
        """The first index unreadable in one numbering but not the other (None where none is)."""
        odd = np.setxor1d(self.unreadable, other.unreadable)
        return int(odd[0]) if odd.size else None

    def describe(self) -> str:
        bad = self.total - self.n
        return f"{self.total} samples" + (f" ({bad} unreadable)" if bad else "")

    # ------------------------------------------------------------------ in artifacts
    def attrs(self) -> dict[str, Any]:
        return {
            "n_samples": self.total,
            "n_unreadable": self.total - self.n,
            "sample_source": self.source,
            "sample_listing": self.listing,
        }

    def write(self, f: "h5py.File") -> None:
        """The map as a dataset and attributes of an artifact being written (``dpcli.artifacts.h5.atomic_h5``)."""
        from dpcli.artifacts.h5 import set_attr

        f.create_dataset(ROWS, data=self.rows)
        for key, value in self.attrs().items():
            set_attr(f, key, value)

    @classmethod
    def read(cls, f: "h5py.File", n: int, where: str) -> "SampleSpace":
        """The map an artifact of ``n`` rows carries (the identity where it has none: every row decoded)."""
        from dpcli.artifacts.h5 import get_attr

        if ROWS not in f:
            return cls.identity(n)
        rows = np.asarray(f[ROWS][()])
        total = get_attr(f, "n_samples")
        if (
            rows.ndim != 1
            or rows.shape[0] != n
            or not np.issubdtype(rows.dtype, np.integer)
            or not isinstance(total, int)
            or (n and (rows[0] < 0 or rows[-1] >= total))
            or np.any(np.diff(rows) <= 0)
        ):
            raise DpcliError(
                f"{where}: damaged sample index (it must map its {n} rows, in order, into the "
                f"n_samples = {total} samples); recompute it"
            )
        return cls(rows, total, str(get_attr(f, "sample_source", "")), str(get_attr(f, "sample_listing", "")))
