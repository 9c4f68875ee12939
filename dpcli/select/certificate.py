"""The epsilon certificate: ``||sum_{pruned} S_i||_2`` recomputed from S itself, the only way to a mask.

Every selector, whatever it optimizes, ends here.  :func:`certify` recomputes the norm in float64 with
:func:`dpcli.select.linalg.subset_norm` (fixed summation order, independent of any solver state) and,
in epsilon mode, refuses a set whose norm exceeds epsilon.  The tolerance rule is one and strict:

    certified  <=>  subset_norm(S, pruned) <= epsilon      (no slack; eps = 0 admits only a zero sum)

A solver's running sum may differ from ``subset_norm`` by rounding at the boundary; :func:`repair`
drops samples until the strict rule holds, and only a real violation is refused.  A mask file can only
be written from a :class:`Certificate` (see :func:`dpcli.stages.masks.write_mask`), and a Certificate
can only be made by :func:`certify`, so no caller can store a norm it did not compute from S.

On a sketched S (``influence --sketch K``) the certified norm is that of ``(sum_pruned S_i) R``.  For a
subset fixed before R was drawn it is within ``1 +- t`` of the true norm with probability at least
``1 - 2 exp(-K t^2 / 8)``; a solver that chose the subset after seeing the sketch voids that guarantee,
so the certificate then bounds the sketched norm only.  It records ``sketch_k`` to say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dpcli.errors import DpcliError
from dpcli.select.linalg import as_mask, as_matrix, masked_sum, matvec, subset_norm

# Relative overshoot that repair() treats as rounding; anything above it is a real violation.
ROUNDING = 1e-6

_ISSUED = object()  # only certify() holds it


class KeepMask:
    """Indices and counts derived from a boolean ``keep`` (True = train on it), for every mask-like result."""

    keep: np.ndarray

    @property
    def keep_indices(self) -> np.ndarray:
        return np.flatnonzero(self.keep)

    @property
    def pruned_indices(self) -> np.ndarray:
        return np.flatnonzero(~self.keep)

    @property
    def n_kept(self) -> int:
        return int(np.count_nonzero(self.keep))

    @property
    def n_pruned(self) -> int:
        return int(self.keep.size - np.count_nonzero(self.keep))


@dataclass(frozen=True)
class Certificate:
    """A pruned set together with its norm, recomputed from S; what a mask file is written from."""

    pruned: np.ndarray = field(repr=False)
    norm: float
    epsilon: float | None
    sketch_k: int | None = None
    _issuer: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._issuer is not _ISSUED:
            raise TypeError(
                "a Certificate is made by dpcli.select.certificate.certify(S, pruned, epsilon), from S itself"
            )

    @property
    def n(self) -> int:
        return int(self.pruned.shape[0])

    @property
    def n_pruned(self) -> int:
        return int(np.count_nonzero(self.pruned))

    @property
    def keep(self) -> np.ndarray:
        return ~self.pruned

    @property
    def meaning(self) -> str:
        """One line for users: what the number bounds."""
        what = f"||sum S_pruned|| = {self.norm:.6g}"
        if self.sketch_k:
            what += (
                f" on the {self.sketch_k}-column sketch of S (the selection saw the sketch, so this bounds "
                "the sketched norm only; the true norm is not certified)"
            )
        return what


def certify(
    S: np.ndarray, pruned: np.ndarray, epsilon: float | None = None, *, sketch_k: int | None = None
) -> Certificate:
    """Recompute ``||sum_{pruned} S_i||`` from S; refuse it when it exceeds ``epsilon`` (strictly)."""
    S = as_matrix(S)
    mask = as_mask(pruned, S.shape[0]).copy()
    norm = subset_norm(S, mask)
    if epsilon is not None and not norm <= float(epsilon):
        raise DpcliError(f"refusing the selection: its influence norm {norm:.6g} exceeds epsilon {float(epsilon):.6g}")
    mask.setflags(write=False)
    return Certificate(mask, norm, None if epsilon is None else float(epsilon), sketch_k, _ISSUED)


def repair(S: np.ndarray, q: np.ndarray, mask: np.ndarray, eps: float) -> tuple[np.ndarray, int]:
    """Drop samples while the recomputed norm exceeds epsilon by a rounding-sized amount.

    A solver's running float64 sum and :func:`subset_norm` add in different orders, so a set right at
    the boundary may be off by ~1e-12 relative; that is fixed here.  A real violation (more than
    ``ROUNDING`` relative) is left alone for :func:`certify` to refuse.
    """
    mask = mask.copy()
    removed = 0
    while mask.any():
        s = masked_sum(S, mask)
        norm = float(np.linalg.norm(s))
        if norm <= eps or norm > eps * (1.0 + ROUNDING):
            break
        score = 2.0 * matvec(S, s) - q  # ||s||^2 - ||s - S_i||^2
        score[~mask] = -np.inf
        mask[int(np.argmax(score))] = False
        removed += 1
    return mask, removed
