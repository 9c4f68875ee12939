"""Streaming float64 arithmetic over the influence matrix S (n x d), which may be GBs or an HDF5 view.

Everything here chunks by bytes, not rows, so the temporaries stay near ``CHUNK_BYTES`` whatever d is.
"""

from __future__ import annotations

import math

import numpy as np

from dpcli.errors import DpcliError

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
        raise DpcliError(f"the pruned mask must be a boolean array of shape ({n},), "
                         f"got {mask.dtype} {mask.shape}")
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
        sel = mask[a:a + step]
        if sel.any():
            total += S[a:a + step][sel].sum(axis=0, dtype=np.float64)
    return total


def row_sq_norms(S: np.ndarray) -> np.ndarray:
    """float64 ``||S_i||^2`` for every row; also refuses NaN/inf (one streaming pass)."""
    n, d = S.shape
    q = np.empty(n, dtype=np.float64)
    step = row_step(d)
    for a in range(0, n, step):
        X = S[a:a + step]
        if not np.isfinite(X).all():
            bad = a + int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
            raise DpcliError(f"the influence matrix has a non-finite value (NaN or inf) in row {bad}")
        X64 = X.astype(np.float64)
        q[a:a + step] = np.einsum("ij,ij->i", X64, X64)
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
        out[a:a + step] = np.ascontiguousarray(S[a:a + step]) @ xs
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
        total += S[idx[a:a + step]].sum(axis=0, dtype=np.float64)
    return total


def _bad_rows(X: np.ndarray) -> int:
    return int((~np.isfinite(X)).any(1).sum())


def nonfinite_rows(S: np.ndarray) -> int:
    """How many rows of S hold NaN or inf, one chunk at a time (S may be a memory map)."""
    step = row_step(S.shape[1])
    return sum(_bad_rows(S[a:a + step]) for a in range(0, S.shape[0], step))


def float32_rows(src, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``src`` (an array or an HDF5 dataset, n x d) as float32, read byte-sized chunk by chunk, and the
    number of rows holding NaN or inf: no full-size temporary or n x d boolean array."""
    out = np.empty(src.shape, dtype=np.float32) if out is None else out
    step = row_step(src.shape[1])
    bad = 0
    for a in range(0, src.shape[0], step):
        out[a:a + step] = src[a:a + step]
        bad += _bad_rows(out[a:a + step])
    return out, bad
