"""The Python API: from features (or a model and its inputs) to S, and from S to certified keep indices.

Same defaults as the CLI, built on the same stage functions (the CLI calls
:mod:`dpcli.stages.embeddings` too)::

    import dpcli.api as dp
    S, head = dp.influence(features, labels)              # n x d, exact at the fitted head's optimum
    sel = dp.prune(S, epsilon=1e-3)                       # largest set with ||sum S_pruned|| <= 1e-3
    sel.keep_indices, sel.norm                            # what to train on, the certified norm
    sel = dp.prune(S, ratio=0.7, labels=labels, features=features)  # auto: validated on held-out features
    sel.auto["line"]                                      # what auto chose and why

``influence`` fits the last layer as L2-regularized softmax regression to convergence (the
frozen-backbone setting of the paper's Theorem 1), so S is the exact first-order parameter change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dpcli.select.certificate import KeepMask
from dpcli.influence.head import DEFAULT_DAMPING, DEFAULT_MAX_ITER, DEFAULT_TOL, HeadFit
from dpcli.stages.embeddings import Refit

if TYPE_CHECKING:
    from torch import nn

__all__ = ["influence", "influence_file", "prune", "refit", "embed", "Selection", "HeadFit", "Refit"]


def influence(features: Any, labels: Any, *, damping: float = DEFAULT_DAMPING, method: str = "exact",
              sketch: int | None = None, sketch_seed: int = 0, cg_tol: float = 1e-6, num_classes: int | None = None,
              tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER) -> tuple[np.ndarray, HeadFit]:
    """S (n x d float32; n x ``sketch`` when sketched) for frozen ``features`` (n x D) and integer labels.

    ``damping`` is both the head's L2 coefficient and the Hessian's damping, so H is the Hessian of
    the objective actually minimized.  Returns S and the fitted head (``grad_norm`` says how close
    to the optimum it got).
    """
    from dpcli.config import InfluenceConfig
    from dpcli.data.embeddings import from_arrays
    from dpcli.stages import embeddings

    emb = from_arrays(_numpy(features), _numpy(labels), num_classes=num_classes)
    cfg = InfluenceConfig(method=method, damping=damping, cg_tol=cg_tol, sketch_k=sketch,
                          sketch_seed=sketch_seed).validate()
    return embeddings.influence_in_memory(emb, cfg, damping=damping, tol=tol, max_iter=max_iter)


def influence_file(features: str | Path, labels: str | Path, out: str | Path, *,
                   test_features: str | Path | None = None, test_labels: str | Path | None = None,
                   damping: float = DEFAULT_DAMPING, method: str = "exact", sketch: int | None = None,
                   cg_tol: float = 1e-6) -> Path:
    """What ``dpcli influence --features F --labels L --out OUT`` does: an influence.h5 with lineage."""
    from dpcli.config import InfluenceConfig
    from dpcli.data.embeddings import load_embeddings
    from dpcli.stages import embeddings

    emb = load_embeddings(Path(features), Path(labels), _opt(test_features), _opt(test_labels))
    cfg = InfluenceConfig(method=method, damping=damping, cg_tol=cg_tol, sketch_k=sketch).validate()
    return embeddings.embeddings_influence(emb, Path(out), cfg, damping=damping).path


@dataclass(frozen=True)
class Selection(KeepMask):
    """A certified pruning: ``norm`` is ``||sum_{pruned} S_i||`` recomputed from S."""

    keep: np.ndarray  # bool, True = train on it
    norm: float
    epsilon: float | None
    solver: str
    auto: dict | None = None  # method="auto": what it measured and chose (as in mask.h5's ``auto`` attribute)


def prune(S: Any, *, epsilon: float | None = None, ratio: float | None = None, count: int | None = None,
          labels: Any = None, features: Any = None, method: str = "auto", solver: str = "swap", seed: int = 0,
          balance: bool = False) -> Selection:
    """Choose the samples to prune from S exactly as ``dpcli prune`` does, and certify the result.

    Give one of ``epsilon`` (largest set within the norm bound), ``ratio`` or ``count`` (that many,
    smallest norm).  ``labels`` are needed by class-aware options (``balance``) and by ``auto``, which
    also needs the penultimate ``features`` (n x D) to validate its choice; without them it runs the
    paper's objective within class quotas (``method="optimization", balance=True``) and says why in
    ``Selection.auto``.
    """
    import torch

    from dpcli.config import PruneConfig
    from dpcli.errors import DpcliError
    from dpcli.select.base import Context, select, warn_emptied_classes
    from dpcli.select.certificate import certify

    S = np.ascontiguousarray(_numpy(S), dtype=np.float32)
    if S.ndim != 2:
        raise DpcliError(f"S must be 2-D (n x d), got shape {S.shape}")
    if not np.isfinite(S).all():
        raise DpcliError("S has NaN or inf entries")
    cfg = PruneConfig(epsilon=epsilon, ratio=ratio, count=count, solver=solver, seed=seed, method=method,
                      balance=balance).validate()
    y = np.zeros(S.shape[0], dtype=np.int64) if labels is None else np.asarray(_numpy(labels), dtype=np.int64)
    if balance and labels is None:
        raise DpcliError("balance=True needs labels")
    ctx = Context(S=S, labels=y, device=torch.device("cpu"))
    if features is not None:
        from dpcli.data.embeddings import check_features

        ctx.supply(features=check_features(np.asarray(_numpy(features)), "features"))
    pruned, used = select(cfg, ctx)
    warn_emptied_classes(ctx.labels, ~np.asarray(pruned, dtype=bool), ctx.record)
    cert = certify(S, pruned, cfg.epsilon)
    return Selection(np.array(cert.keep), cert.norm, cert.epsilon, used, ctx.record.get("auto"))


def refit(features: Any, labels: Any, keep: Any, *, damping: float = DEFAULT_DAMPING,
          test_features: Any = None, test_labels: Any = None) -> Refit:
    """Refit the head on the kept rows (what ``retrain`` does on an embeddings run)."""
    from dpcli.data.embeddings import from_arrays
    from dpcli.stages import embeddings

    emb = from_arrays(_numpy(features), _numpy(labels), _numpy(test_features), _numpy(test_labels))
    return embeddings.refit(emb, np.asarray(keep, dtype=bool), damping)


def embed(model: "nn.Module", inputs: Any, *, batch_size: int = 256, head_module: str | None = None,
          device: str = "cpu") -> np.ndarray:
    """Penultimate features of ``inputs`` (a tensor N x ...) from any classifier: its last linear
    layer is found (``fc``, ``classifier``, ``head``, timm ``get_classifier()``, or ``head_module``)
    and bypassed.  Feed the result to :func:`influence` for the frozen-backbone setting."""
    import torch

    from dpcli.models.library import split_head

    body, _ = split_head(model, head_module)
    body = body.to(device).eval()
    x = torch.as_tensor(inputs)
    out = []
    with torch.no_grad():
        for a in range(0, x.shape[0], batch_size):
            out.append(torch.flatten(body(x[a:a + batch_size].to(device)), 1).float().cpu())
    return torch.cat(out).numpy()


def _numpy(a: Any) -> Any:
    if a is None:
        return None
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _opt(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)
