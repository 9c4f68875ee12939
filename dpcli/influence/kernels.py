"""Per-sample parameter influence on a classifier's last linear layer.

Implements Eq. 2 / Algorithm 1 of Yang et al. (ICLR 2023), restricted to the
last linear layer as in their Sec. 6.1: for the parameters
``theta = [W.flatten() (row-major, C*D entries), b (C entries)]`` of a layer
trained with mean cross-entropy,

    S_i = (1/n) (H + damping*I)^{-1} g_i,   g_i = grad_theta CE(z_i),
    H   = (1/n) sum_i hessian_theta CE(z_i).

With the 1/n inside ``S`` (Eq. 3's convention), ``||sum_{i in R} S_i||_2`` is the
first-order prediction of ``||theta_{-R} - theta||_2`` when the samples ``R``
are removed (upweighted by ``delta = -1/n``) from an objective that carries an
L2 regulariser of strength ``damping``.  The softmax Hessian is singular along
a shift of all logits, so ``damping`` must be positive.

Everything uses closed forms (no autograd), is vectorised over samples, chunked
over rows so that no ``(n, d)`` float64 array exists at once, computed in
float64, and runs on whatever device ``features`` lives on.

Closed forms, with ``p_i = softmax(W phi_i + b)``, ``e_i = p_i - onehot(y_i)``,
``phi~_i = [phi_i, 1]`` and ``A_i = diag(p_i) - p_i p_i^T``:

* ``g_i = [outer(e_i, phi_i).flatten(), e_i]``;
* per-sample Hessian ``A_i kron phi~_i phi~_i^T`` in the "augmented" ordering
  where class ``c`` owns the contiguous slots ``c*(D+1) .. c*(D+1)+D``
  (``W[c, :]`` then ``b[c]``); it is permuted to the public ordering at the end.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dpcli.errors import DpcliError

try:  # SciPy (a scikit-learn dependency) exposes BLAS dsyrk: half the Hessian flops on CPU
    from scipy.linalg.blas import dsyrk as _dsyrk
except ImportError:  # pragma: no cover - the GEMM path is exercised by the tests too
    _dsyrk = None

__all__ = [
    "per_sample_grads",
    "mean_grad",
    "last_layer_hessian",
    "hessian_vector_product",
    "exact_influence",
    "max_dense_dim",
]

Sink = Callable[[int, np.ndarray], None]
Progress = Callable[[int, int], None]

_F64 = torch.float64
# Budget for the dense path: the (d, d) float64 Hessian and its Cholesky factor
# coexist, so 2 * d^2 * 8 bytes must stay under ~4 GiB.
_DENSE_BYTES = 4 * 2**30
_SOLVE_BYTES = 16 * 2**20  # float64 per-sample gradients per chunk of a row solve
# Elements of the (rows, r, C) float64 intermediate in a Hessian-vector product.
_HVP_ELEMENTS = 2**23


# --------------------------------------------------------------------------- #
# validation and small helpers
# --------------------------------------------------------------------------- #


def shapes(features: Tensor, weight: Tensor, bias: Tensor) -> tuple[int, int, int]:
    """Return ``(n, C, D)`` after checking the layer and feature shapes agree."""
    if features.ndim != 2:
        raise DpcliError(f"features must be 2-D (n, D), got shape {tuple(features.shape)}")
    if weight.ndim != 2 or bias.ndim != 1 or bias.shape[0] != weight.shape[0]:
        raise DpcliError(
            f"last layer must be weight (C, D) and bias (C,), got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    n, dim = features.shape
    if weight.shape[1] != dim:
        raise DpcliError(f"features have {dim} dimensions but the last layer expects {weight.shape[1]}")
    if n == 0:
        raise DpcliError("no samples: features has zero rows")
    return n, weight.shape[0], dim


def check_labels(labels: Tensor, n: int, num_classes: int) -> None:
    """Labels must be one integer class index per sample, inside ``[0, C)``."""
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DpcliError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DpcliError(f"labels must be integer class indices, got dtype {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise DpcliError(f"labels must lie in [0, {num_classes}), found range [{lo}, {hi}]")


def check_damping(damping: float) -> float:
    """Damping must be a finite positive number: the CE Hessian alone is singular."""
    value = float(damping)
    if not math.isfinite(value) or value <= 0.0:
        raise DpcliError(
            f"damping must be a finite positive number (the cross-entropy Hessian is "
            f"singular along logit shifts), got {damping!r}"
        )
    return value


def check_chunk(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise DpcliError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def layer64(features: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """The layer's parameters as float64 on the features' device."""
    return (
        weight.detach().to(device=features.device, dtype=_F64),
        bias.detach().to(device=features.device, dtype=_F64),
    )


def probs(phi: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Softmax probabilities ``(rows, C)`` for float64 features ``phi``."""
    return torch.softmax(torch.addmm(b, phi, w.T), dim=1)


def residuals(phi: Tensor, y: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``e_i = p_i - onehot(y_i)``: the CE gradient with respect to the logits."""
    e = probs(phi, w, b)
    e[torch.arange(phi.shape[0], device=phi.device), y] -= 1.0
    return e


def grads_from_residuals(phi: Tensor, e: Tensor) -> Tensor:
    """Per-sample ``[outer(e, phi).flatten(), e]`` in the public ordering."""
    rows, dim = phi.shape
    num_classes = e.shape[1]
    out = torch.empty(rows, num_classes * (dim + 1), dtype=torch.result_type(e, phi), device=phi.device)
    # written in place: a cat of the outer products would hold a second (rows x d) copy
    torch.mul(e[:, :, None], phi[:, None, :], out=out[:, : num_classes * dim].view(rows, num_classes, dim))
    out[:, num_classes * dim :] = e
    return out


def _to_public_order(num_classes: int, dim: int, device: torch.device) -> Tensor:
    """``perm[j]`` = augmented index of public parameter ``j``.

    Public: ``W[c, k] -> c*D + k``, ``b[c] -> C*D + c``.
    Augmented: ``W[c, k] -> c*(D+1) + k``, ``b[c] -> c*(D+1) + D``.
    """
    cls = torch.arange(num_classes, device=device)
    w_idx = (cls[:, None] * (dim + 1) + torch.arange(dim, device=device)[None, :]).reshape(-1)
    b_idx = cls * (dim + 1) + dim
    return torch.cat([w_idx, b_idx])


# --------------------------------------------------------------------------- #
# gradients, Hessian, Hessian-vector products
# --------------------------------------------------------------------------- #


def per_sample_grads(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Per-sample CE gradients ``(n, d)`` float64 w.r.t. ``[W.flatten(), b]``.

    Closed form ``g_i = [outer(p_i - onehot(y_i), phi_i).flatten(), p_i - onehot(y_i)]``;
    callers working at scale should pass row chunks (the result is dense float64).
    """
    n, num_classes, _ = shapes(features, weight, bias)
    check_labels(labels, n, num_classes)
    w, b = layer64(features, weight, bias)
    phi = features.detach().to(_F64)
    y = labels.to(features.device)
    return grads_from_residuals(phi, residuals(phi, y, w, b))


def mean_grad(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, chunk_size: int = 4096) -> Tensor:
    """Mean CE gradient ``(d,)`` float64, chunked over rows.

    Used for the test-loss gradient ``grad L(theta)`` in Theorem 1's bound.
    """
    n, num_classes, dim = shapes(features, weight, bias)
    check_labels(labels, n, num_classes)
    chunk_size = check_chunk(chunk_size)
    w, b = layer64(features, weight, bias)
    y_all = labels.to(features.device)
    grad_w = torch.zeros(num_classes, dim, dtype=_F64, device=features.device)
    grad_b = torch.zeros(num_classes, dtype=_F64, device=features.device)
    for start in range(0, n, chunk_size):
        phi = features[start : start + chunk_size].detach().to(_F64)
        e = residuals(phi, y_all[start : start + chunk_size], w, b)
        grad_w.addmm_(e.T, phi)
        grad_b += e.sum(dim=0)
    return torch.cat([grad_w.reshape(-1), grad_b]) / n


def loss_and_grad_norm(
    features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, chunk_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample CE loss and ``||g_i||`` (float64, ``(n,)`` each), chunked over rows.

    ``||g_i||^2 = ||e_i||^2 (||phi_i||^2 + 1)`` for the closed-form last-layer gradient.  Chunked because
    the whole-set float64 logits, probabilities and one-hots are n x C x 8 B each: 160 MB apiece at
    200,000 images and 100 classes, which alone broke a 1 GiB bound.
    """
    n, num_classes, _ = shapes(features, weight, bias)
    check_labels(labels, n, num_classes)
    chunk_size = check_chunk(chunk_size)
    w, b = layer64(features, weight, bias)
    y_all = labels.to(features.device)
    out = torch.empty(2, n, dtype=_F64, device=features.device)  # one transfer at the end, not one per chunk
    for start in range(0, n, chunk_size):
        phi = features[start : start + chunk_size].detach().to(_F64)
        y = y_all[start : start + chunk_size]
        logits = torch.addmm(b, phi, w.T)
        stop = start + phi.shape[0]
        out[0, start:stop] = F.cross_entropy(logits, y, reduction="none")
        e = torch.softmax(logits, dim=1)
        e[torch.arange(phi.shape[0], device=phi.device), y] -= 1.0
        out[1, start:stop] = e.norm(dim=1) * torch.sqrt(phi.pow(2).sum(1) + 1)
    losses, norms = out.cpu().numpy()
    return losses, norms


def _aug_hessian_gemm(features: Tensor, w: Tensor, b: Tensor, chunk_size: int) -> Tensor:
    """Unnormalised block-upper augmented Hessian via one GEMM per class and chunk.

    Block ``(c, c')`` is ``Phi~^T diag(A[:, c, c']) Phi~``; for class ``c`` all
    blocks ``c' >= c`` come from a single ``Phi~^T [A[:, c, c'] Phi~]_{c'}``.
    Device-agnostic (this is the GPU path).
    """
    n, dim = features.shape
    num_classes = w.shape[0]
    aug = dim + 1
    device = features.device
    h_aug = torch.zeros(num_classes * aug, num_classes * aug, dtype=_F64, device=device)
    for start in range(0, n, chunk_size):
        phi = features[start : start + chunk_size].detach().to(_F64)
        rows = phi.shape[0]
        p = probs(phi, w, b)
        phi_t = torch.cat([phi, torch.ones(rows, 1, dtype=_F64, device=device)], dim=1)
        for c in range(num_classes):
            # A[:, c, c'] for c' >= c: delta_{cc'} p_c - p_c p_c'
            a = -p[:, c : c + 1] * p[:, c:]
            a[:, 0] += p[:, c]
            weighted = (a[:, :, None] * phi_t[:, None, :]).reshape(rows, -1)
            h_aug[c * aug : (c + 1) * aug, c * aug :].addmm_(phi_t.T, weighted)
    return h_aug


def _hessian_syrk(features: Tensor, w: Tensor, b: Tensor, chunk_size: int) -> Tensor:
    """CPU variant of :func:`_aug_hessian_gemm` using BLAS ``dsyrk``: half the flops; unnormalised,
    whole and already in the public ordering.

    Every block is symmetric and its weights have a known sign
    (``p_c (1 - p_c) >= 0`` on the diagonal, ``-p_c p_c' <= 0`` off it), so
    block ``(c, c') = sign * X^T X`` with ``X = sqrt(|A[:, c, c']|) Phi~``;
    ``dsyrk`` accumulates only its upper triangle, in float64, in place.
    """
    assert _dsyrk is not None
    n, dim = features.shape
    num_classes = w.shape[0]
    aug = dim + 1
    blocks = {
        (c, c2): np.zeros((aug, aug), dtype=np.float64, order="F")
        for c in range(num_classes)
        for c2 in range(c, num_classes)
    }
    for start in range(0, n, chunk_size):
        phi = features[start : start + chunk_size].detach().to(_F64)
        p = probs(phi, w, b).numpy()
        phi_t = np.ones((phi.shape[0], aug), dtype=np.float64, order="F")
        phi_t[:, :dim] = phi.numpy()
        for (c, c2), acc in blocks.items():
            if c == c2:
                sign, root = 1.0, np.sqrt(p[:, c] * (1.0 - p[:, c]))
            else:
                sign, root = -1.0, np.sqrt(p[:, c] * p[:, c2])
            blocks[c, c2] = _dsyrk(sign, root[:, None] * phi_t, beta=1.0, c=acc, trans=1, overwrite_c=1)
    return _public_from_blocks(blocks, num_classes, dim)


def _public_from_blocks(blocks: dict[tuple[int, int], np.ndarray], num_classes: int, dim: int) -> Tensor:
    """The full symmetric Hessian in the public ordering, written straight from the upper blocks.

    Writing each block's W-W, W-b, b-W and b-b parts where they belong (and the mirror block as its
    transpose) needs no augmented copy and no permuting gather: at d = 3,300 those were two more
    87 MB float64 matrices at the stage's peak.  Consumes ``blocks`` as it goes.
    """
    cd = num_classes * dim
    h = np.empty((cd + num_classes, cd + num_classes), dtype=np.float64)
    for c, c2 in list(blocks):
        acc = blocks.pop((c, c2))
        block = np.triu(acc)
        block += np.triu(block, 1).T  # dsyrk filled the upper triangle only
        w1, w2 = slice(c * dim, (c + 1) * dim), slice(c2 * dim, (c2 + 1) * dim)
        h[w1, w2] = block[:dim, :dim]
        h[w1, cd + c2] = block[:dim, dim]
        h[cd + c, w2] = block[dim, :dim]
        h[cd + c, cd + c2] = block[dim, dim]
        if c != c2:
            h[w2, w1] = block[:dim, :dim].T
            h[cd + c2, w1] = block[:dim, dim]
            h[w2, cd + c] = block[dim, :dim]
            h[cd + c2, cd + c] = block[dim, dim]
    return torch.from_numpy(h)


def last_layer_hessian(
    features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, chunk_size: int = 4096
) -> Tensor:
    """Mean CE Hessian ``(d, d)`` float64 w.r.t. ``[W.flatten(), b]``, without damping.

    Built block-wise in the augmented ordering (``dsyrk`` on CPU when SciPy's
    BLAS is available, GEMMs otherwise), block-upper part only; the rest follows
    by symmetry.  The CPU path writes the blocks straight into the public ordering;
    the GEMM path permutes with one gather.  ``labels``
    are only validated: the CE Hessian does not depend on them.
    """
    n, num_classes, dim = shapes(features, weight, bias)
    check_labels(labels, n, num_classes)
    chunk_size = check_chunk(chunk_size)
    w, b = layer64(features, weight, bias)
    device = features.device
    aug = dim + 1
    if device.type == "cpu" and _dsyrk is not None:
        hessian = _hessian_syrk(features, w, b, chunk_size)  # already whole and in the public order
        hessian /= n
        return hessian
    h_aug = _aug_hessian_gemm(features, w, b, chunk_size)
    for c in range(num_classes):
        for c2 in range(c + 1, num_classes):
            h_aug[c2 * aug : (c2 + 1) * aug, c * aug : (c + 1) * aug] = h_aug[
                c * aug : (c + 1) * aug, c2 * aug : (c2 + 1) * aug
            ].T
    perm = _to_public_order(num_classes, dim, device)
    hessian = h_aug[perm[:, None], perm[None, :]]
    del h_aug
    hessian /= n
    return hessian


def _hvp_sum(phi: Tensor, p: Tensor, v_w: Tensor, v_b: Tensor) -> tuple[Tensor, Tensor]:
    """Unnormalised ``sum_i J_i^T A_i J_i v`` for every row of V, split into (W, b) parts."""
    rows, dim = phi.shape
    r, num_classes, _ = v_w.shape
    # J_i v = V_W phi_i + v_b: logit perturbations, shape (rows, r, C)
    u = (phi @ v_w.reshape(r * num_classes, dim).T).reshape(rows, r, num_classes) + v_b
    # A_i u = p * u - p (p . u)
    q = p[:, None, :] * (u - (u * p[:, None, :]).sum(dim=2, keepdim=True))
    out_w = (q.reshape(rows, r * num_classes).T @ phi).reshape(r, num_classes, dim)
    return out_w, q.sum(dim=0)


def mean_hvp(features: Tensor, w: Tensor, b: Tensor, V: Tensor) -> Tensor:
    """``(mean CE Hessian) @ v`` for each float64 row of ``V``, chunked over samples."""
    n, dim = features.shape
    num_classes = w.shape[0]
    r = V.shape[0]
    v_w = V[:, : num_classes * dim].reshape(r, num_classes, dim)
    v_b = V[:, num_classes * dim :]
    out_w = torch.zeros(r, num_classes, dim, dtype=_F64, device=features.device)
    out_b = torch.zeros(r, num_classes, dtype=_F64, device=features.device)
    rows_per_chunk = max(1, _HVP_ELEMENTS // max(1, r * num_classes))
    for start in range(0, n, rows_per_chunk):
        phi = features[start : start + rows_per_chunk].detach().to(_F64)
        part_w, part_b = _hvp_sum(phi, probs(phi, w, b), v_w, v_b)
        out_w += part_w
        out_b += part_b
    return torch.cat([out_w.reshape(r, -1), out_b], dim=1).div_(n)


def hessian_vector_product(features: Tensor, weight: Tensor, bias: Tensor, V: Tensor) -> Tensor:
    """Rows of ``(mean CE Hessian) @ v`` for each row ``v`` of ``V`` (``(r, d)``).

    Closed form ``J^T A J v`` in ``O(r n C D)`` time without forming the
    ``(d, d)`` Hessian; this is LiSSA's inner step.  Returns float64 ``(r, d)``
    (or ``(d,)`` for a single vector).
    """
    _, num_classes, dim = shapes(features, weight, bias)
    d = num_classes * (dim + 1)
    squeeze = V.ndim == 1
    V2 = V[None, :] if squeeze else V
    if V2.ndim != 2 or V2.shape[1] != d:
        raise DpcliError(f"V must have shape (r, {d}), got {tuple(V.shape)}")
    w, b = layer64(features, weight, bias)
    out = mean_hvp(features, w, b, V2.detach().to(device=features.device, dtype=_F64))
    return out[0] if squeeze else out


# --------------------------------------------------------------------------- #
# influence estimators
# --------------------------------------------------------------------------- #


def max_dense_dim() -> int:
    """Largest ``d`` for the exact path: Hessian + Cholesky factor (float64) within ~4 GiB."""
    return math.isqrt(_DENSE_BYTES // (2 * 8))


def emit(sink: Sink | None, out: np.ndarray | None, start: int, rows: Tensor) -> None:
    """Hand one float32 chunk to the sink, or copy it into the in-memory result."""
    block = rows.to(torch.float32).contiguous().cpu().numpy()
    if sink is not None:
        sink(start, block)
    else:
        assert out is not None
        out[start : start + block.shape[0]] = block


def grid_chunks(row_start: int, row_stop: int, chunk: int, n: int):
    """Chunks of the global grid ``[j*chunk, (j+1)*chunk)`` that meet ``[row_start, row_stop)``.

    Yields ``(grid_start, grid_stop, start, stop)``: the whole grid chunk is solved and only
    ``[start, stop)`` is kept, so a shard computes every row in exactly the chunk a single run
    uses (bit-identical results), at the cost of at most two extra chunks per shard.
    """
    g = (row_start // chunk) * chunk
    while g < row_stop:
        g_stop = min(g + chunk, n)
        yield g, g_stop, max(g, row_start), min(g_stop, row_stop)
        g = g_stop


def solve_in_chunks(
    features: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor,
    solve: Callable[[Tensor], Tensor],
    *,
    rows: tuple[int, int] | None = None,
    chunk_size: int = 4096,
    sink: Sink | None = None,
    progress: Progress | None = None,
) -> np.ndarray | None:
    """Rows ``[start, stop)`` of ``S = solve(G) / n``, G the per-sample gradients, chunk by chunk.

    The one loop every row solver shares: gradients are formed per chunk of the global grid (so a
    row range reproduces the full run bit for bit), solved, scaled by ``1/n`` and handed to ``sink``
    as float32 (or collected and returned when there is no sink).  ``progress(done, total)``.
    """
    n = features.shape[0]
    row_start, row_stop = (0, n) if rows is None else (int(rows[0]), int(rows[1]))
    w, b = layer64(features, weight, bias)
    # a chunk's gradients and their solution are (chunk x d) float64 each, and d grows as C x D: 4,096 rows
    # of d = 3,300 made 0.4 GB of temporaries.  The cap depends on d only, so every shard keeps one grid.
    chunk_size = min(int(chunk_size), max(64, _SOLVE_BYTES // (8 * w.shape[0] * (w.shape[1] + 1))))
    y_all = labels.to(features.device)
    out = (
        None
        if sink is not None
        else np.empty((row_stop - row_start, weight.shape[0] * (weight.shape[1] + 1)), dtype=np.float32)
    )
    for g_start, g_stop, start, stop in grid_chunks(row_start, row_stop, chunk_size, n):
        phi = features[g_start:g_stop].detach().to(_F64)
        grads = grads_from_residuals(phi, residuals(phi, y_all[g_start:g_stop], w, b))
        solved = solve(grads)[start - g_start : stop - g_start]
        solved /= n
        emit(sink, out, start - (0 if sink is not None else row_start), solved)
        if progress is not None:
            progress(stop - row_start, row_stop - row_start)
    return out


def damped_cholesky(
    features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, damping: float, chunk_size: int
) -> Tensor:
    """Lower Cholesky factor of H + damping I; the one factorization every exact solve reuses."""
    hessian = last_layer_hessian(features, labels, weight, bias, chunk_size=chunk_size)
    hessian.diagonal().add_(damping)
    factor, info = torch.linalg.cholesky_ex(hessian)
    del hessian
    if int(info) != 0:
        raise DpcliError(
            f"the damped Hessian is not positive definite in float64 (Cholesky failed at "
            f"order {int(info)}); use a larger --damping than {damping:g}"
        )
    return factor


def exact_influence(
    features: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor,
    damping: float,
    chunk_size: int = 4096,
    sink: Sink | None = None,
    progress: Progress | None = None,
) -> np.ndarray | None:
    """Exact ``S_i = (1/n) (H + damping I)^{-1} g_i`` via one Cholesky factorisation.

    Rows are solved chunk by chunk (no explicit inverse, no ``(n, d)`` float64
    array).  With ``sink``, each float32 chunk goes to ``sink(row_start, rows)``
    and ``None`` is returned; otherwise the full ``(n, d)`` float32 array is.
    ``progress(done_rows, n)`` is called after each chunk.
    """
    n, num_classes, dim = shapes(features, weight, bias)
    check_labels(labels, n, num_classes)
    damping = check_damping(damping)
    chunk_size = check_chunk(chunk_size)
    d = num_classes * (dim + 1)
    if d > max_dense_dim():
        raise DpcliError(
            f"the last layer has d={d} parameters, above the exact method's limit of "
            f"{max_dense_dim()} (dense d x d Hessian); use --estimator cg"
        )
    factor = damped_cholesky(features, labels, weight, bias, damping, chunk_size)
    return solve_in_chunks(
        features,
        labels,
        weight,
        bias,
        lambda g: torch.cholesky_solve(g.T, factor).T,
        chunk_size=chunk_size,
        sink=sink,
        progress=progress,
    )


# --------------------------------------------------------------------------- #
# float32 factorization + float64 iterative refinement (GPUs with slow float64)
# --------------------------------------------------------------------------- #
