"""Streaming float64 arithmetic over the influence matrix S (n x d), which may be GBs or an HDF5 view.

Everything here chunks by bytes, not rows, so the temporaries stay near ``CHUNK_BYTES`` whatever d is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from dpcli.errors import DpcliError

if TYPE_CHECKING:
    from torch import Tensor

# float64 bytes materialized at once when S is streamed (64 MiB).
CHUNK_BYTES = 64 << 20
# for passes whose every row's result is independent of the chunking (norms, copies, checks):
# smaller, since they run beside the largest allocations (a covered solve's matrix)
ROW_CHUNK_BYTES = 16 << 20


def count_from_ratio(n: int, ratio: float) -> int:
    """Number of samples to PRUNE for a prune ratio, rounded to nearest (validates 0 < ratio < 1)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DpcliError(f"the number of samples must be a non-negative integer, got {n!r}")
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise DpcliError(f"the prune ratio must be a number strictly between 0 and 1, got {ratio!r}") from None
    if not (math.isfinite(r) and 0.0 < r < 1.0):
        raise DpcliError(f"the prune ratio must lie strictly between 0 and 1, got {ratio!r}")
    return int(math.floor(int(n) * r + 0.5))


def subset_norm(S: np.ndarray, pruned: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> float:
    """``||sum_{i: pruned[i]} S_i||_2`` in float64, streamed over row chunks.

    Independent of any solver state, so it is the number we certify and report.
    """
    S = as_matrix(S)
    mask = as_mask(pruned, S.shape[0])
    return float(np.linalg.norm(masked_sum(S, mask, chunk_bytes)))


def as_matrix(S: np.ndarray) -> np.ndarray:
    """S as a 2-D float32/float64 array, without copying float32/float64 input (S can be GBs)."""
    if not isinstance(S, np.ndarray):
        S = np.asarray(S)
    if S.ndim != 2:
        raise DpcliError(f"the influence matrix must be 2-D (samples x parameters), got shape {S.shape}")
    if S.shape[0] == 0 or S.shape[1] == 0:
        raise DpcliError(f"the influence matrix is empty (shape {S.shape})")
    if S.dtype in (np.float32, np.float64):
        return S
    if S.dtype.kind == "f":
        return S.astype(np.float32)
    if S.dtype.kind in "iu":
        return S.astype(np.float64)
    raise DpcliError(f"the influence matrix must hold real numbers, got dtype {S.dtype}")


def as_mask(pruned: np.ndarray, n: int) -> np.ndarray:
    mask = np.asarray(pruned)
    if mask.dtype != np.bool_ or mask.shape != (n,):
        raise DpcliError(f"the pruned mask must be a boolean array of shape ({n},), got {mask.dtype} {mask.shape}")
    return mask


def chunk_rows(d: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows of a float64 chunk of about ``chunk_bytes``."""
    return max(1, int(chunk_bytes) // (8 * max(int(d), 1)))


def row_step(d: int) -> int:
    """Rows of a chunk for row-independent passes (the smaller of the two byte sizes)."""
    return chunk_rows(d, min(CHUNK_BYTES, ROW_CHUNK_BYTES))


def masked_sum(S: np.ndarray, mask: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """float64 sum of the rows selected by ``mask``, touching one chunk of S at a time."""
    n, d = S.shape
    total = np.zeros(d, dtype=np.float64)
    step = chunk_rows(d, chunk_bytes)
    for a in range(0, n, step):
        sel = mask[a : a + step]
        if sel.any():
            total += S[a : a + step][sel].sum(axis=0, dtype=np.float64)
    return total


def row_sq_norms(S: np.ndarray) -> np.ndarray:
    """float64 ``||S_i||^2`` for every row; also refuses NaN/inf (one streaming pass)."""
    n, d = S.shape
    q = np.empty(n, dtype=np.float64)
    step = row_step(d)
    for a in range(0, n, step):
        X = S[a : a + step]
        if not np.isfinite(X).all():
            bad = a + int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
            raise DpcliError(f"the influence matrix has a non-finite value (NaN or inf) in row {bad}")
        X64 = X.astype(np.float64)
        q[a : a + step] = np.einsum("ij,ij->i", X64, X64)
    return q


def matvec(S: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float64 ``S @ x`` computed in S's precision (one BLAS gemv, streamed if S is strided)."""
    xs = x.astype(S.dtype)
    if S.flags.c_contiguous or S.flags.f_contiguous:
        return (S @ xs).astype(np.float64)
    n, d = S.shape
    out = np.empty(n, dtype=np.float64)
    step = chunk_rows(d)
    for a in range(0, n, step):
        out[a : a + step] = np.ascontiguousarray(S[a : a + step]) @ xs
    return out


def take_rows(S: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of S as a float64 copy (pool arithmetic is done in float64)."""
    return S[idx].astype(np.float64)


def sum_rows(S: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """float64 sum of rows ``idx`` of S, gathered a chunk at a time."""
    total = np.zeros(S.shape[1], dtype=np.float64)
    step = chunk_rows(S.shape[1])
    idx = np.sort(idx)
    for a in range(0, idx.size, step):
        total += S[idx[a : a + step]].sum(axis=0, dtype=np.float64)
    return total


def _bad_rows(X: np.ndarray) -> int:
    return int((~np.isfinite(X)).any(1).sum())


def nonfinite_rows(S: np.ndarray) -> int:
    """How many rows of S hold NaN or inf, one chunk at a time (S may be a memory map)."""
    step = row_step(S.shape[1])
    return sum(_bad_rows(S[a : a + step]) for a in range(0, S.shape[0], step))


def float32_rows(src, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``src`` (an array or an HDF5 dataset, n x d) as float32, read byte-sized chunk by chunk, and the
    number of rows holding NaN or inf: no full-size temporary or n x d boolean array."""
    out = np.empty(src.shape, dtype=np.float32) if out is None else out
    step = row_step(src.shape[1])
    bad = 0
    for a in range(0, src.shape[0], step):
        out[a : a + step] = src[a : a + step]
        bad += _bad_rows(out[a : a + step])
    return out, bad


def device_of(device) -> str:
    """``"cpu"`` or a torch device string, from None, a string or a ``torch.device``."""
    return "cpu" if device is None else str(device)


# On the CPU, Gram blocks are float64 up to this width (exact enough for the low-dimensional problems whose
# sums get tiny; cheap there) and float32 above it, where their flops are the solver's main cost.
EXACT_MAX_D = 1024


class Rows:
    """S where the solvers' heavy passes run: ``S @ x``, Gram blocks and row sums, results on the host in float64.

    On the CPU this is numpy on S itself (a memory map stays a map, nothing is copied): numpy's BLAS was
    measured as fast as torch's for these shapes there, and its per-call overhead 7x lower
    (docs/performance.md).  On another device S is copied there once, float32, one row chunk at a time (or
    used as it is when it is already a tensor there); products are float32 and only n- or k-sized results
    cross back.  ``rel_err`` is the relative rounding a Gram entry or a row product may carry.
    """

    def __init__(self, S, device=None) -> None:
        if device is None and not isinstance(S, np.ndarray) and hasattr(S, "device"):
            device = S.device
        self.device = device_of(device)
        self.n, self.d = int(S.shape[0]), int(S.shape[1])
        self.S: np.ndarray | None  # S on the host (a numpy array on the CPU) ...
        self.t: Tensor | None  # ... or as a float32 tensor: exactly one of the two is set
        if self.device == "cpu" and isinstance(S, np.ndarray):
            self.S, self.t = as_matrix(S), None
            self.dtype = np.float64 if self.d <= EXACT_MAX_D else np.float32
            self.rel_err = 2.0**-40 if self.dtype == np.float64 else 2.0**-20
            return
        import torch

        self.S, self.dtype, self.rel_err = None, np.float32, 2.0**-20
        if isinstance(S, torch.Tensor):
            self.t = S.to(self.device, torch.float32)
        else:
            S = as_matrix(S)
            self.t = torch.empty(S.shape, dtype=torch.float32, device=self.device)
            step = row_step(self.d)
            for a in range(0, self.n, step):
                self.t[a : a + step] = torch.from_numpy(np.ascontiguousarray(S[a : a + step], dtype=np.float32))

    # ---- backend primitives: the only places that know numpy from torch
    @property
    def _host_S(self) -> np.ndarray:
        """S where it lives on the host: the branches taken when ``self.t is None``."""
        assert self.S is not None
        return self.S

    def _gather(self, idx: np.ndarray):
        """Rows ``idx`` where S lives, in the Gram precision."""
        if self.t is None:
            return self._host_S[idx].astype(self.dtype)
        import torch

        return self.t[torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.device)]

    def _host(self, x) -> np.ndarray:
        if self.t is None:
            return np.asarray(x, dtype=np.float64)
        import torch

        return x.to(torch.float64).cpu().numpy()

    def _vec(self, x: np.ndarray):
        if self.t is None:
            return x
        import torch

        return torch.as_tensor(x, dtype=torch.float32, device=self.device)

    # ---- what the solvers call
    def matvec(self, x: np.ndarray) -> np.ndarray:
        """float64 ``S @ x``, multiplied in S's precision (float32 on a device): one pass over S."""
        if self.t is None:
            return matvec(self._host_S, x)
        return self._host(self.t @ self._vec(x))

    def gram(self, idx: np.ndarray) -> np.ndarray:
        """``S[idx] S[idx]^T`` as float64, in the order of ``idx``."""
        X = self._gather(idx)
        return self._host(X @ X.T)

    def full_gram(self) -> np.ndarray:
        """``S S^T`` on the host (the caller checks that it fits)."""
        return self.gram(np.arange(self.n))

    def block(self, P: np.ndarray, reuse: "Block | None" = None) -> "Block":
        """Pool ``P``: its rows kept where S lives and its Gram matrix on the host (see :class:`Block`).

        With ``reuse`` (the previous pool) only the Gram rows of the rows new to the pool are multiplied,
        ``|new| x |P| x d`` flops instead of ``|P|^2 d`` (successive pools share most rows); the block then
        lists the rows it shares with ``reuse`` first, in ``reuse``'s order, and the new ones after.
        """
        if reuse is not None and reuse.rows is self:
            at = np.flatnonzero(np.isin(reuse.P, P))
            if 2 * at.size >= P.size:
                if at.size == P.size == reuse.P.size:
                    return reuse
                return self._extend(reuse, at, P[~np.isin(P, reuse.P)])
        X = self._gather(P)
        return Block(self, P, X, self._host(X @ X.T))

    def _extend(self, old: "Block", at: np.ndarray, fresh: np.ndarray) -> "Block":
        k0 = at.size
        X: np.ndarray | Tensor
        if self.t is None:
            X = np.concatenate([old.X[at], self._gather(fresh)])
        else:
            import torch

            X = torch.cat([old.X[torch.as_tensor(at, device=old.X.device)], self._gather(fresh)])
        P = np.concatenate([old.P[at], fresh])
        G = np.empty((P.size, P.size))
        G[:k0, :k0] = old.G.take(at, 0).take(at, 1)
        if fresh.size:
            C = self._host(X[k0:] @ X.T)
            G[k0:] = C
            G[:k0, k0:] = C[:, :k0].T
        return Block(self, P, X, G)

    def dot_rows(self, idx: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``S[idx] @ x`` as float64 (float64 products on the CPU)."""
        if self.t is None:
            return take_rows(self._host_S, idx) @ x
        return self._host(self._gather(idx) @ self._vec(x))

    def sum_rows(self, idx: np.ndarray) -> np.ndarray:
        """float64 sum of rows ``idx`` (exact in float64 for float32 rows)."""
        if self.t is None:
            return sum_rows(self._host_S, idx)
        import torch

        return self._gather(idx).to(torch.float64).sum(0).cpu().numpy()

    def masked_sum(self, mask: np.ndarray) -> np.ndarray:
        if self.t is None:
            return masked_sum(self._host_S, mask)
        return self.sum_rows(np.flatnonzero(mask))

    def row(self, i: int) -> np.ndarray:
        if self.t is None:
            return self._host_S[i].astype(np.float64)
        return self._host(self.t[i])

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` as a float64 host array (a few rows: O(d) evaluations)."""
        if self.t is None:
            return take_rows(self._host_S, idx)
        return self._host(self._gather(idx))

    def norm(self, mask: np.ndarray) -> float:
        """``||sum_{mask} S_i||`` in float64 (on a host S: :func:`subset_norm`)."""
        if self.t is None:
            return subset_norm(self._host_S, mask)
        return float(np.linalg.norm(self.masked_sum(as_mask(mask, self.n))))

    def subset(self, idx: np.ndarray) -> "Rows":
        """Rows ``idx`` (sorted) as their own contiguous Rows on the same device (a working set)."""
        idx = np.sort(idx)
        if self.t is None:
            return Rows(np.ascontiguousarray(self._host_S[idx]))
        return Rows(self._gather(idx), self.device)

    def sq_norms(self) -> np.ndarray:
        """float64 ``||S_i||^2``; refuses NaN/inf."""
        if self.t is None:
            return row_sq_norms(self._host_S)
        import torch

        q = torch.empty(self.n, dtype=torch.float64, device=self.device)
        step = row_step(self.d)
        for a in range(0, self.n, step):
            X = self.t[a : a + step].to(torch.float64)
            q[a : a + step] = (X * X).sum(1)
        host = q.cpu().numpy()
        if not np.isfinite(host).all():
            raise DpcliError(
                f"the influence matrix has a non-finite value (NaN or inf) in row "
                f"{int(np.flatnonzero(~np.isfinite(host))[0])}"
            )
        return host


class Block:
    """A pool: rows ``P`` of S (``X``, where S lives, in the Gram precision) and their Gram matrix ``G``."""

    def __init__(self, rows: Rows, P: np.ndarray, X, G: np.ndarray) -> None:
        self.rows, self.P, self.X, self.G = rows, P, X, G

    def dot(self, x: np.ndarray) -> np.ndarray:
        """``X @ x`` as float64 (float64 products on the CPU)."""
        if self.rows.t is None:
            return self.X.astype(np.float64, copy=False) @ x
        return self.rows._host(self.X @ self.rows._vec(x))

    def sum(self, local: np.ndarray) -> np.ndarray:
        """float64 sum of the pool rows at positions ``local``."""
        if self.rows.t is None:
            return self.X[local].sum(0, dtype=np.float64)
        import torch

        return self.X[torch.as_tensor(local, device=self.X.device)].to(torch.float64).sum(0).cpu().numpy()
