"""The frozen-backbone / embeddings path: features in, exact last-layer influence out.

When the backbone is fixed (``--freeze-backbone``, or features from any encoder passed with
``influence --features``), the trained parameters are those of an L2-regularized softmax
regression, fitted here to its optimum with a deterministic full-batch solver.  That objective is
strongly convex, so the paper's Theorem 1 holds exactly: S from :mod:`dpcli.influence.estimators`
with ``damping`` equal to the L2 coefficient is the true Hessian inverse at the optimum, ``retrain``
is a refit of the head on the kept rows, and the observed gap of ``verify-bound`` has no seed noise.

Influence reuses the registered estimators (``exact``, ``cg``, ...); only ``--sketch`` above the
dense limit takes :func:`sketched_rows`, which solves ``(H + lambda I) Y = R`` for the ``k`` sketch
columns instead of one system per sample (``S R = (1/n) G Y``; H is symmetric).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dpcli.artifacts.h5 import check_npy, check_stored
from dpcli.errors import DpcliError
from dpcli.select.linalg import float32_rows, nonfinite_rows

if TYPE_CHECKING:
    from torch import Tensor

    from dpcli.config import InfluenceConfig, PruneConfig
    from dpcli.stages.core import InfluenceInfo, MaskInfo

DEFAULT_DAMPING = 1e-3  # L2 coefficient of the head fit = the Hessian's damping
DEFAULT_TOL = 1e-7      # head fit: stop when ||grad of the regularized objective|| <= this
DEFAULT_MAX_ITER = 500
SOURCE = "embeddings"
_DENSE_NEWTON_DIM = 4096  # Newton with the dense Hessian up to this d, L-BFGS above
_HESSIAN_ROWS = 65536     # Newton's Hessian from at most this many (strided) rows; the gradient uses all
_CHUNK = 8192


# ------------------------------------------------------------------------------------------ input
def file_sha256(path: Path) -> str:
    """Lineage of an input file: the hash of its bytes (streamed, any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def load_array(path: Path | str, what: str, keys: tuple[str, ...]) -> np.ndarray:
    """An array from ``.npy`` (memory-mapped), ``.npz`` or ``.h5`` (dataset named by ``keys`` or the only one)."""
    path = Path(path)
    if not path.is_file():
        raise DpcliError(f"{path}: no such file ({what})")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            check_npy(path, what, numeric="labels" not in what)
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return np.asarray(z[_pick(list(z.files), keys, path, what)])
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                names = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
                return np.asarray(f[_pick(names, keys, path, what)][()])
    except (ValueError, OSError) as exc:
        if "Python objects" in str(exc) or "allow_pickle" in str(exc):
            raise DpcliError(f"{path}: {what} are stored as Python objects, which dpcli does not unpickle; save "
                             f"them as numbers or strings, e.g. np.save(path, np.asarray(labels, dtype=str))") from None
        raise DpcliError(f"{path}: cannot read {what} ({exc})") from None
    raise DpcliError(f"{path}: {what} must be a .npy, .npz or .h5 file")


def _pick(names: list[str], keys: tuple[str, ...], path: Path, what: str) -> str:
    for key in keys:
        if key in names:
            return key
    if len(names) == 1:
        return names[0]
    raise DpcliError(f"{path}: holds {names or 'no arrays'}; name the {what} array one of {', '.join(keys)}")


def check_features(x: np.ndarray, path: str) -> np.ndarray:
    """2-D, real, finite: returned as float32 (checked by row chunks, no n x D boolean array)."""
    if x.ndim != 2:
        raise DpcliError(f"{path}: features must be 2-D (n samples x D dimensions), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DpcliError(f"{path}: features must be real numbers, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DpcliError(f"{path}: features are empty (shape {x.shape})")
    out, bad = float32_rows(x)
    if bad:
        raise DpcliError(f"{path}: {bad} feature rows contain NaN or inf")
    return out


def check_labels(y: np.ndarray, n: int, num_classes: int | None, path: str) -> np.ndarray:
    """One integer class per sample in 0..C-1 (integral floats are accepted; names via :func:`encode_labels`)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DpcliError(f"{path}: labels must be 1-D (one class index per sample), got shape {y.shape}")
    if len(y) != n:
        raise DpcliError(f"{path}: {len(y)} labels for {n} feature rows; they must have the same length")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DpcliError(f"{path}: labels must be integer class indices or class names, got dtype {y.dtype}")
    y = y.astype(np.int64)
    hi = int(y.max()) + 1 if num_classes is None else num_classes
    if y.min() < 0 or y.max() >= hi:
        raise DpcliError(f"{path}: labels must lie in 0..{hi - 1}, found range [{int(y.min())}, {int(y.max())}]")
    return y


def encode_labels(y: np.ndarray, classes: tuple[str, ...] | None, path: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Class names (a string array) as indices into ``classes``, by default their sorted distinct values, as
    a text or audio pipeline usually stores them; integer labels are returned as they are."""
    y = np.asarray(y)
    if y.dtype.kind == "O" and y.size and all(isinstance(v, (str, bytes)) for v in y.ravel()):
        y = np.array([v.decode() if isinstance(v, bytes) else v for v in y.ravel()]).reshape(y.shape)  # h5py strings
    if y.dtype.kind not in "US":
        return y, classes
    names = y.astype(str)
    if classes is None:
        classes = tuple(np.unique(names).tolist())
    known = np.asarray(classes)
    idx = np.clip(np.searchsorted(known, names), 0, len(known) - 1)
    unknown = names != known[idx]
    if np.any(unknown):
        raise DpcliError(f"{path}: class {str(names[unknown][0])!r} does not occur in the training labels")
    return idx.astype(np.int64), classes


@dataclass
class Embeddings:
    """Training (and optional test) features with labels, and where they came from."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None  # the class names, where the labels were given as names

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def fingerprint(self) -> str:
        from dpcli.artifacts.h5 import array_fingerprint

        return array_fingerprint(self.x, self.y)


def from_arrays(x: np.ndarray, y: np.ndarray, x_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
                num_classes: int | None = None, lineage: dict[str, Any] | None = None) -> Embeddings:
    """Validate in-memory features and labels (the API's entry point)."""
    feats = check_features(np.asarray(x) if not isinstance(x, np.memmap) else x, "features")
    y, classes = encode_labels(y, None, "labels")
    labels = check_labels(y, feats.shape[0], num_classes, "labels")
    c = num_classes or (len(classes) if classes else int(labels.max()) + 1)
    _check_classes(labels, c, declared=num_classes is not None)
    if (x_test is None) != (y_test is None):
        raise DpcliError("give both test features and test labels, or neither")
    if x_test is not None:
        x_test = check_features(np.asarray(x_test), "test features")
        if x_test.shape[1] != feats.shape[1]:
            raise DpcliError(f"test features have {x_test.shape[1]} dimensions, training features {feats.shape[1]}")
        y_test = check_labels(encode_labels(y_test, classes, "test labels")[0], x_test.shape[0], c, "test labels")
    return Embeddings(feats, labels, c, x_test, y_test, dict(lineage or {}), classes)


def _check_classes(labels: np.ndarray, num_classes: int, *, declared: bool) -> None:
    """Every index 0..C-1 is a class of the fitted last layer, with its own S columns: indices without a sample
    (one stray label 99 among 0..9 makes a 100-class S) are an error unless ``num_classes`` was declared; one
    class is always one (a one-class softmax has zero loss, so S is zero)."""
    used = np.unique(labels)
    if len(used) < 2:
        raise DpcliError(f"labels: every sample has class {int(used[0])}; pruning needs at least two classes")
    if len(used) < num_classes:
        gap = int(np.setdiff1d(np.arange(num_classes), used)[0])
        text = (f"the labels use {len(used)} of the {num_classes} class indices 0..{num_classes - 1} (none is {gap}"
                f"; the largest is {int(used[-1])}); every index is a class of the last layer (S gets {num_classes} x "
                "(D + 1) columns and the unused ones get no sample)")
        if not declared:
            raise DpcliError(f"labels: {text}; give indices 0..C-1 or class names (strings), or declare the classes "
                             "(num_classes=C in the API)")
        import warnings

        warnings.warn(f"dpcli: {text}", stacklevel=3)


def load_embeddings(features: Path, labels: Path, test_features: Path | None = None,
                    test_labels: Path | None = None, num_classes: int | None = None) -> Embeddings:
    """Read and validate the files of ``influence --features``; lineage is their paths and hashes."""
    lineage: dict[str, Any] = {}
    arrays: dict[str, np.ndarray | None] = {}
    for key, path, keys in (("features", features, ("features", "x", "X", "embeddings")),
                            ("labels", labels, ("labels", "y")),
                            ("test_features", test_features, ("features", "x", "X", "embeddings")),
                            ("test_labels", test_labels, ("labels", "y"))):
        if path is None:
            arrays[key] = None
            continue
        arrays[key] = load_array(path, key.replace("_", " "), keys)
        lineage[key] = str(Path(path).resolve())
        lineage[f"{key}_sha256"] = file_sha256(Path(path))
    x = arrays["features"]
    if x is not None and x.ndim != 2:
        raise DpcliError(f"{features}: features must be 2-D (n samples x D dimensions), got shape {x.shape}")
    y = arrays["labels"]
    if y is not None and x is not None and np.asarray(y).shape[0] != x.shape[0]:
        raise DpcliError(f"{labels}: {np.asarray(y).shape[0]} labels for {x.shape[0]} feature rows "
                         f"in {features}; they must have the same length")
    return from_arrays(x, y, arrays["test_features"], arrays["test_labels"], num_classes, lineage)


# ------------------------------------------------------------------------------------------ head fit
@dataclass(repr=False)
class HeadFit:
    """The regularized softmax-regression optimum and how close to it the solver got."""

    weight: "Tensor"  # (C, D) float64
    bias: "Tensor"    # (C,) float64
    damping: float
    grad_norm: float  # ||grad of mean CE + damping/2 ||theta||^2|| at the returned point
    iterations: int
    solver: str
    loss: float

    def __repr__(self) -> str:  # one line, not the weights
        c, dim = self.weight.shape
        return (f"HeadFit(classes={c}, dim={dim}, damping={self.damping:g}, loss={self.loss:.6g}, "
                f"grad_norm={self.grad_norm:.3g}, iterations={self.iterations}, solver={self.solver!r})")


def objective(x: "Tensor", y: "Tensor", w: "Tensor", b: "Tensor", damping: float) -> tuple[float, "Tensor", "Tensor"]:
    """Mean CE + damping/2 ||[W, b]||^2 and its gradient, float64, chunked over rows."""
    import torch

    from dpcli.influence import kernels as infl

    n = x.shape[0]
    gw = torch.zeros_like(w)
    gb = torch.zeros_like(b)
    total = 0.0
    for a in range(0, n, _CHUNK):
        phi = x[a:a + _CHUNK].to(torch.float64)
        logits = torch.addmm(b, phi, w.T)
        lse = torch.logsumexp(logits, 1)
        yy = y[a:a + _CHUNK]
        total += float((lse - logits.gather(1, yy[:, None])[:, 0]).sum())
        e = infl.residuals(phi, yy, w, b)
        gw.addmm_(e.T, phi)
        gb += e.sum(0)
    reg = 0.5 * damping * float(w.pow(2).sum() + b.pow(2).sum())
    return total / n + reg, gw / n + damping * w, gb / n + damping * b


def fit_head(x: "Tensor", y: "Tensor", num_classes: int, damping: float = DEFAULT_DAMPING, *,
             tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER, init: tuple | None = None,
             info: Callable[[str], None] | None = None, dense_limit: int = _DENSE_NEWTON_DIM) -> HeadFit:
    """Fit the head to the optimum: Newton (dense Hessian) for d <= ``dense_limit``, L-BFGS above; from zero."""
    import torch

    from dpcli.influence import kernels as infl

    damping = infl.check_damping(damping)
    n, dim = x.shape
    d = num_classes * (dim + 1)
    if init is None:
        w = torch.zeros(num_classes, dim, dtype=torch.float64, device=x.device)
        b = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
    else:
        w, b = (t.detach().to(device=x.device, dtype=torch.float64).clone() for t in init)
    fit = _newton if d <= dense_limit else _lbfgs
    out = fit(x, y, w, b, damping, tol, max_iter)
    if out.grad_norm > tol and info is not None:
        info(f"warning: the head fit stopped at gradient norm {out.grad_norm:.3g} > {tol:g} after "
             f"{out.iterations} iterations; S assumes the optimum")
    return out


def hessian_rows(n: int, device: Any = None) -> "Tensor | None":
    """Rows the Newton steps' Hessian is built from: all up to ``_HESSIAN_ROWS``, else that many evenly
    strided ones (deterministic).  Building the dense Hessian costs n d^2 and dominated the fit at large n;
    the gradient stays exact, so Newton still converges to the exact optimum (linearly, at a rate set by
    how well the subsample's curvature matches, instead of quadratically)."""
    import torch

    if n <= _HESSIAN_ROWS:
        return None
    return (torch.arange(_HESSIAN_ROWS, device=device) * n) // _HESSIAN_ROWS


def _newton(x, y, w, b, damping: float, tol: float, max_iter: int) -> HeadFit:
    """Damped Newton with a backtracking line search: quadratic convergence on small heads."""
    import torch

    from dpcli.influence import kernels as infl

    c, dim = w.shape
    f, gw, gb = objective(x, y, w, b, damping)
    it = 0
    eye = torch.eye(c * (dim + 1), dtype=torch.float64, device=x.device)
    rows = hessian_rows(x.shape[0], x.device)
    xh, yh = (x, y) if rows is None else (x[rows], y[rows])
    while it < max_iter:
        g = torch.cat([gw.reshape(-1), gb])
        if float(g.norm()) <= tol:
            break
        h = infl.last_layer_hessian(xh, yh, w, b) + damping * eye
        step = torch.linalg.solve(h, g)
        sw, sb = step[:c * dim].reshape(c, dim), step[c * dim:]
        t = 1.0
        while True:
            f_new, gw_new, gb_new = objective(x, y, w - t * sw, b - t * sb, damping)
            if f_new <= f - 1e-4 * t * float(g @ step) or t < 1e-10:
                break
            t *= 0.5
        w, b, f, gw, gb = w - t * sw, b - t * sb, f_new, gw_new, gb_new
        it += 1
    gn = float(torch.cat([gw.reshape(-1), gb]).norm())
    return HeadFit(w, b, damping, gn, it, "newton", f)


def _lbfgs(x, y, w, b, damping: float, tol: float, max_iter: int) -> HeadFit:
    """Full-batch L-BFGS with a strong-Wolfe line search (deterministic), gradients in closed form."""
    import torch

    c, dim = w.shape
    theta = torch.cat([w.reshape(-1), b]).requires_grad_(False)
    param = torch.nn.Parameter(theta)
    opt = torch.optim.LBFGS([param], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, history_size=20,
                            tolerance_grad=tol / math.sqrt(param.numel()), tolerance_change=0.0,
                            line_search_fn="strong_wolfe")

    def closure() -> "Tensor":
        p = param.detach()
        f, gw, gb = objective(x, y, p[:c * dim].reshape(c, dim), p[c * dim:], damping)
        param.grad = torch.cat([gw.reshape(-1), gb])
        return torch.tensor(f, dtype=torch.float64)

    opt.step(closure)
    p = param.detach()
    w, b = p[:c * dim].reshape(c, dim).clone(), p[c * dim:].clone()
    f, gw, gb = objective(x, y, w, b, damping)
    state = opt.state[param]
    return HeadFit(w, b, damping, float(torch.cat([gw.reshape(-1), gb]).norm()), int(state.get("n_iter", 0)),
                   "lbfgs", f)


# ------------------------------------------------------------------------------------------ influence
def sketched_rows(x: "Tensor", y: "Tensor", w: "Tensor", b: "Tensor", damping: float, sketch, *, tol: float,
                  max_iter: int, sink: Callable[[int, np.ndarray], None],
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """``S R`` without S: solve ``(H + damping I) Y = R`` (k columns, preconditioned CG), then
    ``(S R)_i = g_i^T Y / n`` chunk by chunk.  Cost O(k n d) instead of one CG solve per sample."""
    import torch

    from dpcli.influence import kernels as infl
    from dpcli.influence.cg import KroneckerPreconditioner, block_cg

    n, dim = x.shape
    c = w.shape[0]
    r = torch.from_numpy(sketch.matrix()).to(device=x.device, dtype=torch.float64)  # (d, k) public order
    k = r.shape[1]
    rhs = torch.empty(k, c, dim + 1, dtype=torch.float64, device=x.device)  # augmented layout
    rhs[:, :, :dim] = r[:c * dim].T.reshape(k, c, dim)
    rhs[:, :, dim] = r[c * dim:].T
    precond = KroneckerPreconditioner(x, w, b, damping)
    rows_per_chunk = max(1, (1 << 23) // (k * c))
    yy, iters, worst = block_cg(x, w, b, rhs, damping, tol, max_iter, precond, rows_per_chunk)
    yw = yy[:, :, :dim].permute(2, 1, 0).reshape(dim, c * k)  # phi @ yw -> (rows, C, k)
    yb = yy[:, :, dim].T  # (C, k)
    step = max(1, (1 << 24) // (c * k))
    for a in range(0, n, step):
        phi = x[a:a + step].to(torch.float64)
        e = infl.residuals(phi, y[a:a + step], w, b)
        t = (phi @ yw).reshape(-1, c, k) + yb
        sink(a, (torch.einsum("rc,rck->rk", e, t) / n).to(torch.float32).cpu().numpy())
        if progress is not None:
            progress(min(a + step, n), n)
    return {"solver": "cg-sketch", "cg_iterations": iters, "cg_max_relative_residual": worst}


def embeddings_influence(emb: Embeddings, out: Path, cfg: "InfluenceConfig", *, damping: float | None = None,
                         tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER, device: Any = None,
                         progress: Callable[[int, int], None] | None = None,
                         info: Callable[[str], None] | None = None, space: Any = None) -> "InfluenceInfo":
    """Fit the head on ``emb`` and write ``influence.h5`` (S, loss, labels, theta, test gradient, lineage);
    ``space``: the user's index of each row (:class:`dpcli.data.samples.SampleSpace`), for a dataset's features."""
    import torch

    from dpcli.artifacts.h5 import StreamHash, atomic_h5, check_space, create_rows, set_attr
    from dpcli.influence import kernels as infl
    from dpcli.influence import sketch as influence_scale
    from dpcli.influence.base import ESTIMATORS, LastLayer
    from dpcli.influence.rows import dense_fits
    from dpcli.stages.core import read_influence_info

    cfg.validate()
    if cfg.method == "sgd":
        raise DpcliError("--method sgd replays a recorded training run; on features use exact, cg or lissa")
    t0 = time.perf_counter()
    dev = device or torch.device("cpu")
    damping = DEFAULT_DAMPING if damping is None else float(damping)
    x = torch.from_numpy(emb.x).to(dev)
    y = torch.from_numpy(emb.y).to(dev)
    head = fit_head(x, y, emb.num_classes, damping, tol=tol, max_iter=max_iter, info=info)
    head_seconds = time.perf_counter() - t0
    n, dim = emb.x.shape
    c = emb.num_classes
    d = c * (dim + 1)
    losses, grad_norm = _sample_stats(x, y, head)
    if emb.x_test is not None:
        test_grad = infl.mean_grad(torch.from_numpy(emb.x_test).to(dev), torch.from_numpy(emb.y_test).to(dev),
                                   head.weight, head.bias)
    else:
        test_grad = None
    attrs = {
        "method": cfg.method, "damping": float(damping), "n": n, "d": d, "num_classes": c, "feature_dim": dim,
        "config": {**cfg.to_dict(), "damping": damping, "source": SOURCE}, "checkpoint": "",
        "checkpoint_fingerprint": "", "dataset": f"{SOURCE}:{Path(emb.lineage.get('features', 'in-memory')).name}",
        "dataset_fingerprint": emb.fingerprint, "source": SOURCE, "lineage": emb.lineage,
        "head_solver": head.solver, "head_iterations": head.iterations, "head_grad_norm": head.grad_norm,
        "head_loss": head.loss, "head_seconds": head_seconds, "class_names": list(emb.classes or ()),
        "epsilon_convention": "S_i includes the 1/n factor (Eq. 3): ||sum S_i|| is the predicted parameter change",
        "parameter_order": "last layer: weight (C x D) row-major, then bias (C)",
    }
    attrs.update(influence_scale.output_attrs(cfg, n, None))
    sketch = influence_scale.make_sketch(cfg, d)
    width = d if sketch is None else sketch.k
    check_space(out, 4 * n * width, f"S ({n:,} x {width:,} float32)")
    with atomic_h5(out, "influence", attrs) as f:
        dset = create_rows(f, "S", n, width)
        hasher = StreamHash()
        presketched = sketch is not None and (cfg.method == "cg" or not dense_fits(c, dim))

        def sink(start: int, rows: np.ndarray) -> None:
            if not np.all(np.isfinite(rows)):
                raise DpcliError("influence produced non-finite values; increase --damping")
            if sketch is not None and not presketched:
                rows = sketch.apply(rows)
            dset[start:start + len(rows)] = rows
            hasher.update(rows)

        if presketched:
            solved = sketched_rows(x, y, head.weight, head.bias, damping, sketch, tol=cfg.cg_tol,
                                   max_iter=cfg.cg_max_iter, sink=sink, progress=progress)
        else:
            problem = LastLayer(x, y, head.weight, head.bias)  # float64: the optimum, not a rounding of it
            solved = ESTIMATORS.get(cfg.method)(cfg).solve(problem, damping=damping, rows=(0, n), sink=sink,
                                                            progress=progress, info=info)
        for key, value in solved.items():
            set_attr(f, key, value)
        f.create_dataset("loss", data=losses)
        f.create_dataset("grad_norm", data=grad_norm)
        f.create_dataset("labels", data=emb.y)
        if test_grad is not None:
            f.create_dataset("test_grad", data=test_grad.cpu().numpy().astype(np.float64))
        f.create_dataset("theta", data=torch.cat([head.weight.reshape(-1), head.bias]).cpu().numpy())
        if space is not None:
            space.write(f)
        f.attrs["fingerprint"] = hasher.hexdigest()
        f.attrs["seconds"] = time.perf_counter() - t0
    return read_influence_info(out)


def _sample_stats(x: "Tensor", y: "Tensor", head: HeadFit) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample loss and last-layer gradient norm (what score selectors read)."""
    import torch
    import torch.nn.functional as F

    from dpcli.influence import kernels as infl

    losses, norms = [], []
    for a in range(0, x.shape[0], _CHUNK):
        phi = x[a:a + _CHUNK].to(torch.float64)
        logits = torch.addmm(head.bias, phi, head.weight.T)
        losses.append(F.cross_entropy(logits, y[a:a + _CHUNK], reduction="none"))
        e = infl.residuals(phi, y[a:a + _CHUNK], head.weight, head.bias)
        norms.append(e.norm(dim=1) * torch.sqrt(phi.pow(2).sum(1) + 1))
    return (torch.cat(losses).float().cpu().numpy(), torch.cat(norms).float().cpu().numpy())


def influence_in_memory(emb: Embeddings, cfg: "InfluenceConfig", damping: float = DEFAULT_DAMPING,
                        tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER,
                        progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, HeadFit]:
    """S (n x d, or n x k sketched) and the fitted head, without files (for the Python API)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "influence.h5"
        embeddings_influence(emb, path, cfg, damping=damping, tol=tol, max_iter=max_iter, progress=progress)
        from dpcli.stages.core import load_S

        S = load_S(path)
        import h5py
        import torch

        with h5py.File(path, "r") as f:
            theta = torch.from_numpy(np.asarray(f["theta"][()]))
            gn, iters, solver, loss = (f.attrs["head_grad_norm"], f.attrs["head_iterations"],
                                       f.attrs["head_solver"], f.attrs["head_loss"])
    c, dim = emb.num_classes, emb.x.shape[1]
    head = HeadFit(theta[:c * dim].reshape(c, dim), theta[c * dim:], damping, float(gn), int(iters),
                   str(solver), float(loss))
    return S, head


# ------------------------------------------------------------------------------------------ runs
def is_embeddings_run(influence: Path | str) -> bool:
    """Whether ``influence`` is an influence.h5 written from features (False for anything else)."""
    import h5py

    from dpcli.artifacts.h5 import get_attr

    path = Path(influence)
    if not path.is_file() or not h5py.is_hdf5(str(path)):
        return False
    with h5py.File(path, "r") as f:
        return get_attr(f, "dpcli_kind") == "influence" and get_attr(f, "source") == SOURCE


def reload_embeddings(influence: Path | str) -> tuple[Embeddings, float]:
    """The features an embeddings run was computed from, checked against the recorded hashes."""
    from dpcli.artifacts.h5 import get_attr, open_artifact

    with open_artifact(influence, "influence") as f:
        lineage = get_attr(f, "lineage") or {}
        damping = float(get_attr(f, "damping"))
        c = int(get_attr(f, "num_classes"))
    for key in ("features", "labels", "test_features", "test_labels"):
        if key in lineage:
            path = Path(lineage[key])
            if not path.is_file():
                raise DpcliError(f"{influence}: its {key.replace('_', ' ')} file {path} is gone; refit needs it")
            if file_sha256(path) != lineage[f"{key}_sha256"]:
                raise DpcliError(f"{path}: changed since {influence} was computed (hash differs); rerun influence")
    if "features" not in lineage:
        raise DpcliError(f"{influence}: computed from in-memory features; refit them with dpcli.api")
    emb = load_embeddings(Path(lineage["features"]), Path(lineage["labels"]),
                          Path(lineage["test_features"]) if "test_features" in lineage else None,
                          Path(lineage["test_labels"]) if "test_labels" in lineage else None, num_classes=c)
    return emb, damping


@dataclass(repr=False)
class Refit:
    """The head refitted on a subset, and its losses."""

    head: HeadFit
    train_loss: float  # mean CE on ALL training rows (no regularizer)
    test_loss: float | None
    test_accuracy: float | None
    seconds: float

    def __repr__(self) -> str:  # one line, not the weights
        test = "" if self.test_loss is None else \
            f", test_loss={self.test_loss:.6g}, test_accuracy={self.test_accuracy:.2f}%"
        return f"Refit(train_loss={self.train_loss:.6g}{test}, seconds={self.seconds:.2f}, head={self.head!r})"


def refit(emb: Embeddings, keep: np.ndarray, damping: float, tol: float = DEFAULT_TOL,
          max_iter: int = DEFAULT_MAX_ITER, init: tuple | None = None) -> Refit:
    """Refit the head on the kept rows only (mean CE over them + damping/2 ||theta||^2), from zero or from
    ``init = (W, b)``: the objective is strongly convex, so the start changes only the number of steps."""
    import torch

    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (emb.n,):
        raise DpcliError(f"the mask has {keep.shape[0]} samples but the features have {emb.n} rows")
    if not keep.any():
        raise DpcliError("the mask keeps no samples; nothing to refit")
    t0 = time.perf_counter()
    idx = torch.from_numpy(np.flatnonzero(keep))
    x, y = torch.from_numpy(emb.x), torch.from_numpy(emb.y)
    head = fit_head(x[idx], y[idx], emb.num_classes, damping, tol=tol, max_iter=max_iter, init=init)
    return _evaluate(emb, head, time.perf_counter() - t0)


def _mean_ce(x: "Tensor", y: "Tensor", head: HeadFit) -> float:
    return objective(x, y, head.weight, head.bias, 0.0)[0]


def full_fit(influence: Path | str, emb: Embeddings) -> Refit:
    """The full-data optimum recorded in ``influence.h5`` (theta), with its losses: no second fit of all rows."""
    import torch

    from dpcli.artifacts.h5 import get_attr, open_artifact

    t0 = time.perf_counter()
    with open_artifact(influence, "influence") as f:
        theta = torch.from_numpy(np.asarray(f["theta"][()], dtype=np.float64))
        damping = float(get_attr(f, "damping"))
        fit = (get_attr(f, "head_grad_norm"), get_attr(f, "head_iterations"), get_attr(f, "head_solver"),
               get_attr(f, "head_loss"))
    c, dim = emb.num_classes, emb.x.shape[1]
    head = HeadFit(theta[:c * dim].reshape(c, dim), theta[c * dim:], damping, float(fit[0]), int(fit[1]),
                   str(fit[2]), float(fit[3]))
    return _evaluate(emb, head, time.perf_counter() - t0)


def _evaluate(emb: Embeddings, head: HeadFit, seconds: float) -> Refit:
    import torch

    train_loss = _mean_ce(torch.from_numpy(emb.x), torch.from_numpy(emb.y), head)
    test_loss = test_acc = None
    if emb.x_test is not None:
        xt, yt = torch.from_numpy(emb.x_test), torch.from_numpy(emb.y_test)
        test_loss = _mean_ce(xt, yt, head)
        correct = 0
        for a in range(0, xt.shape[0], _CHUNK):
            logits = torch.addmm(head.bias, xt[a:a + _CHUNK].double(), head.weight.T)
            correct += int((logits.argmax(1) == yt[a:a + _CHUNK]).sum())
        test_acc = 100.0 * correct / xt.shape[0]
    return Refit(head, train_loss, test_loss, test_acc, seconds)


def head_config(emb: Embeddings, mask: "MaskInfo", damping: float):
    """The TrainConfig a head refit is recorded under (its key names the run directory, as for other retrains):
    a linear model, one full-batch solve, L2 = damping, on the mask's kept rows."""
    from dpcli.config import TrainConfig

    name = Path(emb.lineage.get("features", "in-memory")).name
    return TrainConfig(dataset=f"{SOURCE}:{name}", arch="linear", width=int(emb.x.shape[1]), depth=1, epochs=1,
                       lr=1.0, momentum=0.0, weight_decay=float(damping), batch_size=int(mask.n_kept),
                       augment=False, seed=0, subset=mask.fingerprint)


def head_checkpoint_path(mask: "MaskInfo", damping: float) -> Path:
    """Where ``retrain`` (and ``verify-bound``) put the refit of ``mask``: beside it, keyed like other retrains."""
    from dpcli.artifacts.runs import retrain_path

    emb_stub = Embeddings(np.empty((0, 0), np.float32), np.empty(0, np.int64), 0)
    return retrain_path(Path(mask.path), head_config(emb_stub, mask, damping).replace(dataset=SOURCE, width=1))


def _reusable_head(out: Path, mask: "MaskInfo", emb: Embeddings, damping: float) -> dict | None:
    """The metrics of a refit already at ``out`` for this very mask, features and L2 (else None)."""
    import h5py

    from dpcli.artifacts.h5 import get_attr

    if not out.is_file() or not h5py.is_hdf5(str(out)):
        return None
    try:
        with h5py.File(out, "r") as f:
            lineage = get_attr(f, "lineage") or {}
            ok = (get_attr(f, "dpcli_kind") == "checkpoint" and get_attr(f, "source") == SOURCE
                  and lineage.get("mask_fingerprint") == mask.fingerprint
                  and get_attr(f, "dataset_fingerprint") == emb.fingerprint
                  and float(get_attr(f, "damping", float("nan"))) == float(damping) and bool(get_attr(f, "complete")))
            return dict(get_attr(f, "metrics")) if ok else None
    except (OSError, KeyError, TypeError, ValueError):
        return None


def write_head_checkpoint(out: Path, sub: Refit, emb: Embeddings, mask: "MaskInfo", damping: float,
                          metrics: dict[str, Any]) -> None:
    """The refit as a checkpoint artifact (atomic, lineage, readable by :func:`dpcli.train.loop.load_checkpoint`):
    ``model/head.weight`` (C x D) and ``model/head.bias`` in float64, one history row, the kept indices."""
    from dpcli.artifacts.h5 import array_fingerprint, atomic_h5, set_attr
    from dpcli.train.loop import EpochRecord

    weight, bias = sub.head.weight.cpu().numpy(), sub.head.bias.cpu().numpy()
    config = head_config(emb, mask, damping)
    rec = EpochRecord(epoch=1, train_loss=sub.train_loss,
                      train_acc=float("nan"), test_loss=float("nan") if sub.test_loss is None else sub.test_loss,
                      test_acc=float("nan") if sub.test_accuracy is None else sub.test_accuracy,
                      seconds=sub.seconds, steps=sub.head.iterations, lr=1.0)
    lineage = {"mask": str(Path(mask.path).resolve()), "mask_fingerprint": mask.fingerprint,
               "influence": str(mask.influence), **emb.lineage}
    attrs = {
        "config": config.to_dict(), "dataset": config.dataset, "dataset_fingerprint": emb.fingerprint,
        "n_train": emb.n, "skipped_files": {"count": 0, "first": []}, "num_classes": emb.num_classes, "epoch": 1,
        "complete": True, "fingerprint": array_fingerprint(weight, bias), "lineage": lineage, "world_size": 1,
        "source": SOURCE, "damping": float(damping), "head_solver": sub.head.solver,
        "head_iterations": sub.head.iterations, "head_grad_norm": sub.head.grad_norm, "head_loss": sub.head.loss,
        "metrics": metrics,
        "note": "the last layer refitted to the optimum of mean CE + damping/2 ||[W, b]||^2 on the kept rows",
    }
    with atomic_h5(out, "checkpoint", attrs) as f:
        g = f.create_group("model")
        g.create_dataset("head.weight", data=weight)
        g.create_dataset("head.bias", data=bias)
        set_attr(f.create_group("optimizer"), "param_groups", [])
        set_attr(f, "scheduler", {})
        h = f.create_group("history")
        for key in EpochRecord.__dataclass_fields__:
            h.create_dataset(key, data=np.array([getattr(rec, key)], dtype=np.float64))
        f.create_dataset("keep_indices", data=mask.keep_indices)


def retrain_head(mask: "MaskInfo", out: Path | None = None, *, force: bool = False,
                 info: Callable[[str], None] | None = None,
                 loaded: tuple[Embeddings, float] | None = None) -> dict[str, Any]:
    """``retrain`` for an embeddings run: refit on the kept rows, compared with the full-data optimum.

    Writes a checkpoint artifact (reused when it was made from this mask, these features and this L2)
    and ``metrics.json`` beside it; returns the metrics.  ``loaded``: the run's features, already
    checked by :func:`reload_embeddings` (verify-bound refits several masks of one run)."""
    from dpcli.artifacts.h5 import check_writable, write_json

    emb, damping = loaded if loaded is not None else reload_embeddings(mask.influence)
    if mask.n != emb.n:
        raise DpcliError(f"{mask.path}: mask has n={mask.n} but the features have {emb.n} rows")
    out = Path(out) if out is not None else head_checkpoint_path(mask, damping)
    cached = None if force else _reusable_head(out, mask, emb, damping)
    if cached is not None:
        if info is not None:
            info(f"reusing {out}")
        return cached
    check_writable(out)
    full = full_fit(mask.influence, emb)
    # from the full-data optimum: pruning moves it little, so Newton needs a few steps instead of ~8 from zero
    sub = refit(emb, mask.keep, damping, init=(full.head.weight, full.head.bias))
    metrics = {
        "checkpoint": str(out), "mask": str(mask.path), "influence": mask.influence, "n_kept": mask.n_kept,
        "n_pruned": mask.n_pruned, "prune_ratio": mask.n_pruned / mask.n, "arch": "linear", "epochs": 1,
        "mode": "head refit on frozen features", "damping": damping,
        "head_grad_norm": sub.head.grad_norm, "head_iterations": sub.head.iterations, "head_solver": sub.head.solver,
        "optimizer_steps": sub.head.iterations, "train_seconds": sub.seconds,
        "test_loss": sub.test_loss, "test_accuracy": sub.test_accuracy, "train_loss_all": sub.train_loss,
        "full_data_test_loss": full.test_loss, "full_data_test_accuracy": full.test_accuracy,
        "full_data_train_loss_all": full.train_loss,
        "parameter_change": float(np.sqrt(float((sub.head.weight - full.head.weight).pow(2).sum()
                                                + (sub.head.bias - full.head.bias).pow(2).sum()))),
        "metrics_file": str(out.with_name("metrics.json")),
    }
    write_head_checkpoint(out, sub, emb, mask, damping, metrics)
    write_json(out.with_name("metrics.json"), metrics)
    return metrics


# ------------------------------------------------------------------------------------------ external S
def load_external_S(path: Path | str) -> tuple[np.ndarray, np.ndarray | None]:
    """S (n x d float32) from a ``.npy`` or an HDF5 file with a dataset ``S`` (read in row chunks),
    plus ``labels`` when the HDF5 file has them; finiteness is checked chunk by chunk."""
    path = Path(path)
    if not path.is_file():
        raise DpcliError(f"{path}: no such file")
    suffix = path.suffix.lower()
    labels = None
    if suffix == ".npy":
        check_npy(path, "S", numeric=True)
        try:
            src = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise DpcliError(f"{path}: cannot read S ({exc})") from None
        S = _mapped_rows(src, path) if src.dtype == np.float32 and src.flags.c_contiguous else _copy_rows(src, path)
    elif suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "S" not in f or not isinstance(f.get("S"), h5py.Dataset):
                    raise DpcliError(f"{path}: has no dataset 'S' (an n x d influence matrix)")
                check_stored(f["S"], path, "S")
                S = _copy_rows(f["S"], path)
                if "labels" in f:
                    labels = np.asarray(f["labels"][()])
        except OSError as exc:
            raise DpcliError(f"{path}: cannot read HDF5 ({exc})") from None
    else:
        raise DpcliError(f"{path}: an external S must be .npy or .h5 with a dataset 'S'")
    return S, labels


def _mapped_rows(src: np.ndarray, path: Path) -> np.ndarray:
    """A float32 .npy stays a read-only memory map (page cache, not heap): checked chunk by chunk."""
    if src.ndim != 2 or src.shape[0] == 0:
        raise DpcliError(f"{path}: S must be 2-D (n samples x d parameters), got shape {tuple(src.shape)}")
    bad = nonfinite_rows(src)
    if bad:
        raise DpcliError(f"{path}: S has {bad} rows with NaN or inf")
    return src


def _copy_rows(src, path: Path) -> np.ndarray:
    if len(src.shape) != 2 or src.shape[0] == 0:
        raise DpcliError(f"{path}: S must be 2-D (n samples x d parameters), got shape {tuple(src.shape)}")
    S, bad = float32_rows(src)
    if bad:
        raise DpcliError(f"{path}: S has {bad} rows with NaN or inf")
    return S


# ------------------------------------------------------------------------------------------ verify-bound
def verify_bound(influence: Path, masks: list["MaskInfo"], out_dir: Path, *, random_seed: int = 0,
                 force: bool = False, info_line: Callable[[str], None] | None = None) -> dict:
    """Theorem 1 on an embeddings run: predicted bound beside the observed test-loss gap of exact refits
    (no seed noise: every fit is deterministic and run to its optimum).  Each mask is paired with random
    pruning of the same count."""
    from dpcli.artifacts.h5 import write_json
    from dpcli.stages.bound import BoundRow, plot, predict
    from dpcli.stages.core import random_mask, read_influence_info

    emb, damping = reload_embeddings(influence)
    if emb.x_test is None:
        raise DpcliError(f"{influence}: verify-bound needs test features; rerun influence with "
                         "--test-features and --test-labels")
    info = read_influence_info(influence)
    full = full_fit(influence, emb)
    rows: list[BoundRow] = []
    for mi in masks:
        if Path(mi.influence).resolve() != Path(influence).resolve():
            raise DpcliError(f"{mi.path}: was pruned from {mi.influence}, not {influence}")
        rnd_path = Path(out_dir) / f"random-{mi.n_pruned}-seed{random_seed}.h5"
        rnd = random_mask(info, mi.n_pruned, random_seed, rnd_path)
        for label, m in ((f"{mi.mode} {mi.target:g}", mi), (f"random {mi.n_pruned}", rnd)):
            if m.n_pruned == 0:
                continue
            sub = retrain_head(m, force=force, info=info_line, loaded=(emb, damping))  # the same checkpoint `retrain` writes (reused)
            norm, bound, first = predict(Path(influence), ~m.keep)
            rows.append(BoundRow(label=label, method=m.method, mask=str(m.path), n_pruned=m.n_pruned,
                                 prune_ratio=m.n_pruned / m.n, epsilon=m.target if m.mode == "epsilon" else None,
                                 norm=norm, predicted_bound=bound, first_order=first,
                                 observed_gap=sub["test_loss"] - full.test_loss, test_loss=sub["test_loss"],
                                 test_accuracy=sub["test_accuracy"]))
    report = {"command": "verify-bound", "source": SOURCE, "influence": str(influence), "n": emb.n,
              "full_test_loss": full.test_loss, "full_test_accuracy": full.test_accuracy,
              "note": "head refits to the optimum on frozen features: the observed gap has no seed noise",
              "rows": [r.to_dict() for r in rows]}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "bound.json", report)
    if rows:
        plot(rows, out_dir / "bound.png")
    return report


# ------------------------------------------------------------------------------------------ frozen backbone
def freeze_backbone(config, ds, out_dir: Path, *, device: Any, icfg: "InfluenceConfig",
                    damping: float | None = None, info: Callable[[str], None] | None = None) -> "InfluenceInfo":
    """``train --freeze-backbone``: features of the (pretrained) backbone computed once and cached as
    .npy in ``out_dir``, then the head fit and exact influence of :func:`embeddings_influence`."""
    import torch

    from dpcli.artifacts.h5 import config_key
    from dpcli.train.loop import extract_features, make_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = config_key({k: v for k, v in config.to_dict().items()
                      if k in ("dataset", "arch", "weights", "head_module", "width", "depth", "seed", "image_size")})
    files = {s: (out_dir / f"{s}-features-{key}.npy", out_dir / f"{s}-labels-{key}.npy") for s in ("train", "test")}
    if not all(p.exists() for pair in files.values() for p in pair):
        model = make_model(config, ds).to(device).eval()
        for split_name, split in (("train", ds.train), ("test", ds.test)):
            feats = extract_features(model, split, ds, device).cpu().numpy()
            np.save(files[split_name][0], feats)
            np.save(files[split_name][1], np.asarray(split.labels, dtype=np.int64))
    elif info is not None:
        info(f"reusing cached backbone features in {out_dir}")
    emb = load_embeddings(*files["train"], *files["test"], num_classes=ds.num_classes)
    if ds.input is not None:  # the features were computed with the weights' own preprocessing
        from dpcli.models import preprocess

        emb.lineage[preprocess.LINEAGE_KEY] = preprocess.to_dict(ds.input)
    damping = damping if damping is not None else (config.weight_decay or DEFAULT_DAMPING)
    return embeddings_influence(emb, out_dir / "influence.h5", icfg, damping=damping,
                                device=torch.device("cpu"), info=info, space=ds.samples)
