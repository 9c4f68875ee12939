"""Theorem 1 check: predicted versus observed test-loss gap after pruning.

dpcli's epsilon is Eq. 3's: ||sum_{i in W} S_i||_2 with S_i = (1/n) H^-1 grad L(z_i),
i.e. the predicted change of the last-layer parameters.  Theorem 1 states its bound
with epsilon_T = ||sum_i H^-1 grad L(z_i)|| = n * epsilon, so its "epsilon_T / n" is
exactly dpcli's epsilon, and Eq. 13 reads |gap| <~ epsilon * ||grad L_test(theta)||.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dpcli.artifacts.h5 import atomic_path, open_artifact
from dpcli.errors import DpcliError


@dataclass(frozen=True)
class BoundRow:
    label: str
    method: str
    mask: str
    n_pruned: int
    prune_ratio: float
    epsilon: float | None  # requested epsilon (epsilon-mode masks only)
    norm: float  # achieved ||sum S_i||: predicted ||delta theta||, Theorem 1's eps/n
    predicted_bound: float  # norm * ||grad L_test||  (Eq. 13, Cauchy-Schwarz)
    first_order: float  # grad L_test . sum S_i  (Eq. 11 before the inequality)
    observed_gap: float  # L_test(retrained on kept) - L_test(full data)
    test_loss: float
    test_accuracy: float
    # head refits on frozen features: the observed ||theta_kept - theta|| and ||sum S_i - (theta_kept - theta)||,
    # the second-order part Theorem 1's first-order prediction leaves out (None where not measured)
    parameter_change: float | None = None
    first_order_residual: float | None = None

    @property
    def within_bound(self) -> bool:
        return abs(self.observed_gap) <= self.predicted_bound

    def to_dict(self) -> dict:
        d = asdict(self)
        d["within_bound"] = self.within_bound
        return d


def influence_sum(influence: Path, pruned: np.ndarray) -> np.ndarray:
    """sum_{i in pruned} S_i in float64, read from the artifact by row chunks."""
    with open_artifact(influence, "influence") as f:
        S = f["S"]
        total = np.zeros(S.shape[1], dtype=np.float64)
        idx = np.flatnonzero(pruned)
        step = max(1, S.chunks[0] if S.chunks else 4096)
        for start in range(0, len(idx), step):
            total += S[np.sort(idx[start : start + step])].astype(np.float64).sum(0)
    return total


def test_gradient(influence: Path) -> np.ndarray:
    with open_artifact(influence, "influence") as f:
        return np.asarray(f["test_grad"][()], dtype=np.float64)


def predict(influence: Path, pruned: np.ndarray) -> tuple[float, float, float]:
    """(||sum S_i||, ||sum S_i|| * ||grad L_test||, grad L_test . sum S_i) for one pruned set."""
    s = influence_sum(influence, pruned)
    g = test_gradient(influence)
    if s.shape != g.shape:
        raise DpcliError(
            f"{influence}: S is sketched ({s.shape[0]} columns for d={g.shape[0]}); "
            f"verify-bound needs an unsketched influence artifact"
        )
    norm = float(np.linalg.norm(s))
    return norm, norm * float(np.linalg.norm(g)), float(g @ s)


def plot(rows: list[BoundRow], path: Path) -> None:
    """Observed |gap| against the predicted bound, one marker per method (Figure 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    markers = {"optimization": "o", "random": "x"}
    for method in sorted({r.method for r in rows}):
        sel = [r for r in rows if r.method == method]
        ax.scatter(
            [r.predicted_bound for r in sel],
            [abs(r.observed_gap) for r in sel],
            marker=markers.get(method, "s"),
            label=method,
            s=40,
        )
        for r in sel:
            ax.annotate(
                f"{100 * r.prune_ratio:.0f}%",
                (r.predicted_bound, abs(r.observed_gap)),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=7,
            )
    vals = [v for r in rows for v in (r.predicted_bound, abs(r.observed_gap)) if v > 0 and math.isfinite(v)]
    if vals:
        lo, hi = min(vals) / 2, max(vals) * 2
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="observed = predicted")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(r"predicted bound  $\epsilon\,\|\nabla L_{test}(\theta)\|$")
    ax.set_ylabel(r"observed |test-loss gap|")
    ax.set_title("Theorem 1: observed vs predicted")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:  # a per-process temporary: concurrent runs never collide
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
